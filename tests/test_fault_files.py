"""Fault suite: hostile files, and output paths that could only fail or destroy something.

Every file embprof reads (a snapshot for show, compare, export, rerun and list; a plan for
``run --plan``; a matrix file for ``matrix --spec``; a text file for ``--input``) is tried missing,
empty, binary, undecodable, huge, special (a device, a FIFO), a folder, under a file, nested deeply
(as JSON, and as YAML aliases), of another tool, of a future schema, truncated and damaged. Each ends
in one sentence naming the file and the problem, exit 2, no traceback, and no file written.

Output paths (``-o``): a folder, under a file, empty, and one of the command's own inputs (also by
another spelling and through a symbolic link) are refused before anything is read or written, and the
input is left byte for byte as it was.

The commands that need no model run in-process (``main``), so the suite stays quick; the loader's
property test feeds it arbitrary JSON and arbitrary bytes.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import run_cli, run_cli_in_process
from conftest import embprof_exe
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from fake_engine import recorded_run

from embprof.engine.errors import UserError
from embprof.engine.snapshot import build, load, save, to_json


def one_error(rc: int, err: str, expect: str, status: int = 2) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == status, (rc, err)
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("embprof: error: "), lines[0]
    assert expect in lines[0], lines[0]


@pytest.fixture()
def snapshot_file(tmp_path: Path) -> Path:
    _, rec = recorded_run()
    return save(build(rec, {"hostname": "h"}), tmp_path / "profiles")


def _snapshot_dict() -> dict[str, Any]:
    _, rec = recorded_run()
    data: dict[str, Any] = json.loads(to_json(build(rec, {"hostname": "h"})))
    return data


# -- hostile snapshot files -------------------------------------------------------------------------

def _write(content: bytes) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        p = folder / "s.json"
        p.write_bytes(content)
        return p

    return make


def _missing(folder: Path) -> Path:
    return folder / "nope.json"


def _folder(folder: Path) -> Path:
    (folder / "d.json").mkdir()
    return folder / "d.json"


def _under_a_file(folder: Path) -> Path:
    (folder / "plain").write_text("x")
    return folder / "plain" / "s.json"


def _huge(folder: Path) -> Path:
    p = folder / "huge.json"
    with open(p, "wb") as fh:  # sparse: the size is real to stat and to read, the disk is not used
        fh.truncate(300 * 2**20)
    return p


def _fifo(folder: Path) -> Path:
    p = folder / "fifo.json"
    os.mkfifo(p)  # opening it to read would wait for a writer forever
    return p


def _device(_folder: Path) -> Path:
    return Path("/dev/zero")


def _mutated(change: Callable[[dict[str, Any]], Any]) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        data = _snapshot_dict()
        change(data)
        p = folder / "s.json"
        p.write_text(json.dumps(data))
        return p

    return make


def _truncated(folder: Path) -> Path:
    text = json.dumps(_snapshot_dict())
    p = folder / "s.json"
    p.write_text(text[: len(text) // 2])
    return p


HOSTILE_SNAPSHOTS: list[tuple[str, Callable[[Path], Path], str]] = [
    ("missing", _missing, "does not exist"),
    ("empty", _write(b""), "is empty"),
    ("blank", _write(b"  \n\t\n"), "is empty"),
    ("binary", _write(bytes(range(256)) * 8), "not UTF-8"),
    ("undecodable latin-1", _write("caf\u00e9 {}".encode("latin-1")), "not UTF-8"),
    ("utf-16", _write('{"tool": "embprof"}'.encode("utf-16")), "not UTF-8"),
    ("huge (300 MiB)", _huge, "too large"),
    ("fifo", _fifo, "not a regular file"),
    ("device", _device, "not a regular file"),
    ("a folder", _folder, "is a folder"),
    ("under a file", _under_a_file, "a part of its path is a file"),
    ("deep JSON (100,000 levels)", _write(b"[" * 100_000 + b"]" * 100_000), "nested too deeply"),
    ("deep JSON (500 levels, within Python's limit)", _write(b'{"a":' * 500 + b"1" + b"}" * 500), "nested too deeply"),
    ("not JSON", _write(b"<html>not found</html>"), "not valid JSON"),
    ("truncated", _truncated, "not valid JSON"),
    ("a JSON list", _write(b"[1, 2, 3]"), "not an embprof snapshot"),
    ("a JSON string", _write(b'"embprof"'), "not an embprof snapshot"),
    ("null", _write(b"null"), "not an embprof snapshot"),
    ("another tool's JSON", _write(b'{"tool": "other", "schema_version": 2}'), "not an embprof snapshot"),
    ("a future schema", _mutated(lambda d: d.update(schema_version=99)), "schema version 99"),
    ("schema version of the wrong type", _mutated(lambda d: d.update(schema_version="2")), "schema version '2'"),
    ("a damaged field", _mutated(lambda d: d["events"][1].update(rss_mib="lots")), "is damaged"),
    ("a missing section", _mutated(lambda d: d.pop("summary")), "is damaged"),
    ("an unknown event", _mutated(lambda d: d["events"].append({"kind": "nonsense", "t_ns": 1})), "is damaged"),
]


@pytest.mark.parametrize("make, expect", [(m, e) for _, m, e in HOSTILE_SNAPSHOTS], ids=[k for k, _, _ in HOSTILE_SNAPSHOTS])
@pytest.mark.parametrize("command", ["show", "export", "compare", "rerun"])
def test_hostile_snapshot_files(command: str, make: Callable[[Path], Path], expect: str, tmp_path: Path,
                                snapshot_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = make(tmp_path)
    args = {"show": ["show", str(bad)], "export": ["export", str(bad), "--format", "md"],
            "compare": ["compare", str(snapshot_file), str(bad)], "rerun": ["rerun", str(bad), "--print-plan"]}[command]
    if command == "export" and bad.is_dir():
        expect = "is not a matrix folder"  # export takes a matrix's folder too, and says what it looked for
    before = snapshot_file.read_bytes()
    rc, out, err = run_cli_in_process(args, capsys)
    one_error(rc, err, expect)
    assert out == ""
    assert snapshot_file.read_bytes() == before


def test_list_shows_hostile_files_as_unreadable_and_goes_on(tmp_path: Path, snapshot_file: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    folder = snapshot_file.parent
    (folder / "deep.json").write_bytes(b"[" * 100_000)
    (folder / "binary.json").write_bytes(bytes(range(256)))
    (folder / "empty.json").write_bytes(b"")
    (folder / "future.json").write_text(json.dumps({**_snapshot_dict(), "schema_version": 99}))
    os.mkfifo(folder / "fifo.json")
    rc, out, err = run_cli_in_process(["list", "--profiles-dir", str(folder), ], capsys)
    assert rc == 0, err
    assert err == ""
    assert out.count("unreadable") == 5, out
    assert snapshot_file.name[:20] in out
    assert "nested too deeply" in out and "not a regular file" in out and "schema version 99" in out


def test_list_of_a_file_is_refused(snapshot_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run_cli_in_process(["list", "--profiles-dir", str(snapshot_file)], capsys)
    one_error(rc, err, "is a file, not a profiles folder")


def test_list_of_a_missing_folder_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run_cli_in_process(["list", "--profiles-dir", str(tmp_path / "none")], capsys)
    assert rc == 0 and err == ""
    assert "no snapshots" in out and "does not exist" in out


# -- hostile plan and matrix files --------------------------------------------------------------------

PLAN_CASES: list[tuple[str, bytes | None, str]] = [
    ("missing", None, "does not exist"),
    ("empty", b"", "is empty"),
    ("binary", bytes(range(256)), "not UTF-8"),
    ("deep", b"[" * 100_000, "nested too deeply"),
    ("not an object", b"[1]", "does not hold a plan"),
    ("future version", b'{"plan_version": 99}', "plan version 99"),
    ("a field of the wrong type", b'{"workload": {"name": "encode", "repeats": "many"}}', "repeats"),
]


@pytest.mark.parametrize("content, expect", [(c, e) for _, c, e in PLAN_CASES], ids=[k for k, _, _ in PLAN_CASES])
def test_hostile_plan_files(content: bytes | None, expect: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "plan.json"
    if content is not None:
        p.write_bytes(content)
    rc, out, err = run_cli_in_process(["run", "--plan", str(p), "--print-plan"], capsys)
    one_error(rc, err, expect)


BILLION_LAUGHS = "\n".join(
    ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    + [f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 10) + "]" for i in range(8)]
    + ["models: *i"]
)

SPEC_CASES: list[tuple[str, str, bytes | None, str]] = [
    ("missing", "m.toml", None, "does not exist"),
    ("binary toml", "m.toml", bytes(range(256)), "not UTF-8"),
    ("bad toml", "m.toml", b"models = [", "not valid TOML"),
    ("bad yaml", "m.yaml", b"models: [unclosed", "not valid YAML"),
    ("yaml that runs code", "m.yaml", b"models: !!python/object/apply:os.system ['touch PWNED']", "not valid YAML"),
    ("billion laughs", "m.yaml", BILLION_LAUGHS.encode(), "models"),
    ("deep json", "m.json", b"[" * 100_000, "nested too deeply"),
    ("deep yaml", "m.yaml", b"a: " + b"[" * 5000 + b"]" * 5000, "matrix file"),
    ("not a table", "m.json", b"[1, 2]", "does not hold a matrix"),
    ("other suffix", "m.txt", b"models = []", "must end in .toml"),
]


@pytest.mark.parametrize("name, content, expect", [(n, c, e) for _, n, c, e in SPEC_CASES], ids=[k for k, _, _, _ in SPEC_CASES])
def test_hostile_matrix_files(name: str, content: bytes | None, expect: str, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    p = tmp_path / name
    if content is not None:
        p.write_bytes(content)
    rc, out, err = run_cli_in_process(["matrix", "--spec", str(p), "--print-spec"], capsys)
    one_error(rc, err, expect)
    assert not (tmp_path / "PWNED").exists()  # a YAML tag never constructs an object, let alone runs a command


INPUT_CASES: list[tuple[str, Callable[[Path], Path], str]] = [
    ("missing", _missing, "does not exist"),
    ("empty", _write(b""), "no lines to encode"),
    ("binary", _write(bytes(range(256))), "not UTF-8"),
    ("device", _device, "not a regular file"),
    ("fifo", _fifo, "not a regular file"),
    ("a folder", _folder, "is a folder"),
]


@pytest.mark.parametrize("make, expect", [(m, e) for _, m, e in INPUT_CASES], ids=[k for k, _, _ in INPUT_CASES])
def test_hostile_input_files(make: Callable[[Path], Path], expect: str, tmp_path: Path) -> None:
    """Read before any model is loaded: refused in-process, without torch."""
    from embprof.engine.files import read_lines

    with pytest.raises(UserError, match=expect):
        read_lines(str(make(tmp_path)))


# -- output paths ---------------------------------------------------------------------------------------

def _outputs(snap: Path) -> list[tuple[str, list[str], str]]:
    folder = snap.parent
    (folder / "afile").write_text("x")
    os.symlink(snap, folder / "link.json")
    other = str(folder / ".." / folder.name / snap.name)
    return [
        ("export onto its input", ["export", str(snap), "--format", "json", "-o", str(snap)], "is also an input"),
        ("export onto its input, spelled otherwise", ["export", str(snap), "--format", "md", "-o", other], "is also an input"),
        ("export onto its input through a link", ["export", str(snap), "--format", "csv", "-o", str(folder / "link.json")], "is also an input"),
        ("export to a folder", ["export", str(snap), "-o", str(folder)], "is a folder"),
        ("export under a file", ["export", str(snap), "-o", str(folder / "afile" / "x.md")], "is a file, not a folder"),
        ("compare onto the first input", ["compare", str(snap), str(snap), "-o", str(snap)], "is also an input"),
        ("compare onto the second input", ["compare", str(folder / "link.json"), str(snap), "-o", other], "is also an input"),
        ("compare to a folder", ["compare", str(snap), str(snap), "-o", str(folder)], "is a folder"),
    ]


@pytest.mark.parametrize("case", range(8))
def test_output_paths_that_would_fail_or_destroy(case: int, snapshot_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kind, args, expect = _outputs(snapshot_file)[case]
    before = snapshot_file.read_bytes()
    listing = sorted(p.name for p in snapshot_file.parent.iterdir())
    rc, out, err = run_cli_in_process(args, capsys)
    one_error(rc, err, expect)
    assert snapshot_file.read_bytes() == before, kind
    assert sorted(p.name for p in snapshot_file.parent.iterdir()) == listing, kind


def test_export_of_a_matrix_into_its_own_manifest_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "m"
    (folder / "cells").mkdir(parents=True)
    (folder / "matrix.json").write_text("{}")
    for out in (folder / "matrix.json", folder / "cells" / "x.json"):
        rc, _, err = run_cli_in_process(["export", str(folder), "--format", "json", "-o", str(out)], capsys)
        one_error(rc, err, "matrix" if out.name == "x.json" else "is also an input")
    assert (folder / "matrix.json").read_text() == "{}"


# -- the loader, property-based ---------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)
SNAPSHOT_KEYS = sorted(_snapshot_dict().keys())


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=JSON)
def test_loader_takes_any_json(value: Any, tmp_path: Path) -> None:
    p = tmp_path / "any.json"
    p.write_text(json.dumps(value))
    try:
        load(p)
    except UserError as exc:
        assert "\n" not in str(exc)


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(SNAPSHOT_KEYS), value=JSON, drop=st.booleans())
def test_loader_takes_any_damage_to_a_real_snapshot(key: str, value: Any, drop: bool, tmp_path: Path) -> None:
    data = _snapshot_dict()
    if drop:
        data.pop(key)
    else:
        data[key] = value
    p = tmp_path / "damaged.json"
    p.write_text(json.dumps(data))
    try:
        snap = load(p)
    except UserError as exc:
        assert "\n" not in str(exc)
    else:  # what loads must write back as it was read
        assert json.loads(to_json(snap))["tool"] == "embprof"


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=2000))
def test_loader_takes_any_bytes(raw: bytes, tmp_path: Path) -> None:
    p = tmp_path / "bytes.json"
    p.write_bytes(raw)
    try:
        load(p)
    except UserError as exc:
        assert "\n" not in str(exc)


# -- found by trying it as a new user: beyond the lists above ----------------------------------------------

def test_output_onto_a_fifo_or_device_is_refused(snapshot_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fifo = tmp_path / "out.md"
    os.mkfifo(fifo)  # a write renames a file over the path: the FIFO (or /dev/null, as root) would be replaced
    rc, _, err = run_cli_in_process(["export", str(snapshot_file), "-o", str(fifo)], capsys)
    one_error(rc, err, "is a device, pipe or socket")
    assert fifo.is_fifo()


def test_export_of_a_matrix_into_its_references_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "m"
    (folder / "references").mkdir(parents=True)
    (folder / "matrix.json").write_text("{}")
    rc, _, err = run_cli_in_process(["export", str(folder), "--format", "csv", "-o", str(folder / "references" / "x.npz")], capsys)
    one_error(rc, err, "inside the matrix's references folder")


def test_charts_beside_the_output_never_replace_an_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, rec = recorded_run()
    a = save(build(rec, {"hostname": "h"}), tmp_path)
    named_like_a_chart = tmp_path / "c-latency.svg"  # the name `compare … -o c.md` gives its chart
    named_like_a_chart.write_bytes(a.read_bytes())
    before = named_like_a_chart.read_bytes()
    rc, _, err = run_cli_in_process(["compare", str(named_like_a_chart), str(a), "--format", "md", "-o", str(tmp_path / "c.md")], capsys)
    one_error(rc, err, "is also an input")
    assert named_like_a_chart.read_bytes() == before


def test_a_plan_check_names_the_file_it_came_from(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"workload": {"name": "encode", "repeats": 0}}))
    rc, _, err = run_cli_in_process(["run", "--plan", str(plan), "--print-plan"], capsys)
    one_error(rc, err, f"plan file '{plan}': --repeats")
    data = _snapshot_dict()
    data["plan"]["workload"]["repeats"] = 0
    snap = tmp_path / "s.json"
    snap.write_text(json.dumps(data))
    rc, _, err = run_cli_in_process(["show", str(snap)], capsys)
    one_error(rc, err, "is damaged: its plan: ")


def test_schema_version_true_is_not_version_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "s.json"
    p.write_text(json.dumps({**_snapshot_dict(), "schema_version": True}))
    rc, _, err = run_cli_in_process(["show", str(p)], capsys)
    one_error(rc, err, "schema version True")


@pytest.mark.parametrize("axis", ["devices", "dtypes", "backends", "precisions"])
def test_a_matrix_file_with_an_empty_axis_is_refused(axis: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "m.toml"
    spec.write_text(f"{axis} = []\n")
    rc, _, err = run_cli_in_process(["matrix", "--spec", str(spec), "--print-spec"], capsys)
    one_error(rc, err, f"'{axis}' is empty")


def test_prompts_refuses_server_options_it_would_ignore(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run_cli_in_process(["prompts", "--server", "http://127.0.0.1:9"], capsys)
    one_error(rc, err, "the server options do not apply")


def test_a_byte_order_mark_is_not_part_of_the_first_text(tmp_path: Path) -> None:
    from embprof.engine.files import read_lines

    p = tmp_path / "bom.txt"
    p.write_bytes("\ufefffirst\nsecond\n".encode())
    assert read_lines(str(p)) == ["first", "second"]


def test_a_speed_text_that_is_a_folder_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from embprof.engine.speedtext import resolve_speed_text

    with pytest.raises(UserError, match=r"\(from --text\) '.*' is a folder"):
        resolve_speed_text(str(tmp_path))
    monkeypatch.setenv("EMBPROF_SPEED_TEXT", "/dev/null")
    with pytest.raises(UserError, match=r"\(from EMBPROF_SPEED_TEXT\) '/dev/null' is not a regular file"):
        resolve_speed_text()


# -- the streams: closed, a closed pipe, an encoding that cannot show everything -----------------------------

def test_a_reader_that_goes_away_is_not_an_error(snapshot_file: Path) -> None:
    shown = subprocess.run(f"'{embprof_exe()}' show '{snapshot_file}' | head -c 10", shell=True, capture_output=True, timeout=120)
    assert shown.returncode == 0 and shown.stderr == b"", shown.stderr
    status = subprocess.run(f"'{embprof_exe()}' show '{snapshot_file}' | head -c 10 > /dev/null; echo ${{PIPESTATUS[0]}}", shell=True,
                            executable="/bin/bash", capture_output=True, text=True, timeout=120)
    assert status.stdout.strip() == "0" and status.stderr == "", status


def test_an_ascii_only_terminal_gets_escapes_not_a_traceback(snapshot_file: Path, tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONIOENCODING="ascii")
    helped = run_cli(["run", "encode", "--help"], env, timeout=120)
    assert helped.rc == 0 and "Traceback" not in helped.err, helped.err[-500:]
    named = tmp_path / "日本語-モデル.json"
    named.write_bytes(snapshot_file.read_bytes())
    shown = run_cli(["show", str(named)], env, timeout=120)
    assert shown.rc == 0 and shown.err == "", shown.err[-500:]
    listed = run_cli(["list", "--profiles-dir", str(tmp_path)], env, timeout=120)
    assert listed.rc == 0 and "\\u65e5" in listed.out


def test_closed_streams_are_one_line_or_the_status(snapshot_file: Path) -> None:
    closed_out = subprocess.run(["sh", "-c", f"exec 1>&-; exec '{embprof_exe()}' show '{snapshot_file}'"], capture_output=False,
                                stderr=subprocess.PIPE, timeout=120)
    assert closed_out.returncode == 2 and closed_out.stderr.count(b"\n") == 1 and b"standard output is closed" in closed_out.stderr
    closed_err = subprocess.run(["sh", "-c", f"exec 2>&-; exec '{embprof_exe()}' show /nonexistent.json"], capture_output=False,
                                stdout=subprocess.PIPE, timeout=120)
    assert closed_err.returncode == 2
    closed_in = subprocess.run(["sh", "-c", f"exec 0<&-; exec '{embprof_exe()}' run encode --input - --print-plan"],
                               capture_output=True, timeout=120)
    # The plan holds the texts it runs on, so even --print-plan reads standard input first.
    assert closed_in.returncode == 2 and closed_in.stderr == b"embprof: error: standard input is closed: give the texts with --input FILE\n"


def test_stdin_closed_for_input_is_one_sentence() -> None:
    from embprof.engine.files import read_lines

    saved, sys_stdin = None, __import__("sys")
    saved = sys_stdin.stdin
    sys_stdin.stdin = None  # what Python gives a process started with stdin closed
    try:
        with pytest.raises(UserError, match="standard input is closed"):
            read_lines("-")
    finally:
        sys_stdin.stdin = saved


def test_columns_zero_still_shows_the_tables(snapshot_file: Path) -> None:
    shown = run_cli(["show", str(snapshot_file)], dict(os.environ, COLUMNS="0"), timeout=120)
    assert shown.rc == 0 and "status" in shown.out
