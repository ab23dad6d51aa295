"""Nothing unmeasured is shown as a figure: an MTEB run counts no words and llama.cpp's native API
reports no tokens, so their words/s, tokens, tokens/s and padding are null in the snapshot and
"n/a" on the console, never 0; and an MTEB run's calls of different phases are never pooled."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import sts16_slice
from embprof.engine.events import BatchTimed, EncodeTimed
from cli_helpers import run_cli, snapshot_from
from test_llama_server import llama  # noqa: F401 - the module's server fixture

pytestmark = pytest.mark.slow

UNMEASURED_ROWS = re.compile(r"^\s*(tokens/s|words/s|padding %|tokens|tokens \(server-reported\))\s+│\s*(\S.*)$")


def zero_rows(out: str, labels: tuple[str, ...]) -> list[str]:
    """Console table rows for these figures whose value is a plain zero."""
    bad = []
    for line in out.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if cells and cells[0] in labels and any(re.fullmatch(r"0(\.0+)?", c) for c in cells[1:]):
            bad.append(line)
    return bad


def test_an_mteb_run_shows_words_per_second_as_not_measured(cli_env: dict[str, str], tmp_path: Path) -> None:
    sts16_slice(tmp_path / "data", 40)
    rc, out, err, _ = run_cli(["mteb", "-t", "STS16", "--data-dir", str(tmp_path / "data"), "--results-dir", str(tmp_path / "results")],
                              cli_env)
    assert rc == 0, err
    _, snap = snapshot_from(out)
    calls = snap.summary.calls
    assert {c.group for c in calls} == {"STS16 › Encoding samples 1", "STS16 › Encoding samples 2"}
    assert snap.summary.headline is None  # two kinds of call: no pooled p50
    for c in calls:
        assert c.words is None and c.words_per_s is None  # never counted in MTEB runs
        assert c.tokens is not None and c.tokens_per_s is not None and c.tokens_per_s > 0  # the tokenizer counted these
    assert all(e.words is None for e in snap.events if isinstance(e, EncodeTimed))
    assert "Latency by kind of call" in out and "STS16 › Encoding samples 1" in out
    assert "n/a (texts not read twice in MTEB runs)" in out
    assert not zero_rows(out, ("words/s",))
    task = snap.summary.results["mteb:STS16"]
    assert task.main_score is not None and all(e.tokens is not None and e.batches for e in task.encodes)
    raw = json.loads(Path(snap.summary.results["mteb:STS16"].results_file or "").read_text())
    assert raw["task_name"] == "STS16"


def test_a_llama_api_encode_shows_tokens_as_not_measured(cli_env: dict[str, str], llama: object) -> None:  # noqa: F811
    rc, out, err, _ = run_cli(["run", "encode", "--server", llama.url, "--api", "llama", "--repeats", "2"], cli_env)  # type: ignore[attr-defined]
    assert rc == 0, err
    _, snap = snapshot_from(out)
    head = snap.summary.headline
    assert head is not None and head.calls == 2
    assert head.tokens is None and head.tokens_per_s is None and head.padding_percent is None
    assert head.words_per_s is not None and head.words_per_s > 0  # words are counted client-side
    assert snap.summary.results["encode"].tokens_per_s is None
    assert all(b.tokens is None and b.padded_tokens is None for b in snap.events if isinstance(b, BatchTimed))
    (requests,) = [r for r in snap.summary.requests if r.group == "encode"]
    assert requests.tokens is None
    assert not zero_rows(out, ("tokens/s", "padding %", "tokens", "tokens (server-reported)"))
    assert "n/a (the server reports no token counts)" in out
    assert "n/a tokens" in err  # the progress line of each call says so too


def test_print_plan_then_plan_file_then_rerun_against_llama_server(cli_env: dict[str, str], llama: object, tmp_path: Path) -> None:  # noqa: F811
    import subprocess

    from conftest import embprof_exe
    from embprof.engine.plan import RunPlan, ServerTarget

    url = llama.url  # type: ignore[attr-defined]
    printed = subprocess.run([embprof_exe(), "run", "encode", "--server", url, "--api", "openai", "--repeats", "2", "--print-plan"],
                             env=cli_env, capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0, printed.stderr
    plan = RunPlan.model_validate_json(printed.stdout)
    assert isinstance(plan.target, ServerTarget) and plan.target.api == "openai"
    f = tmp_path / "plan.json"
    f.write_text(printed.stdout)
    rc, out, err, _ = run_cli(["run", "--plan", str(f)], cli_env)
    assert rc == 0, err
    first_path, first = snapshot_from(out)
    assert first.plan == plan and first.target.backend == "http"
    head = first.summary.headline
    assert head is not None and head.calls == 2 and head.tokens_per_s is not None  # OpenAI's API reports prompt_tokens
    rc, out, err, _ = run_cli(["rerun", str(first_path)], cli_env)
    assert rc == 0, err
    _, second = snapshot_from(out)
    assert second.plan == first.plan and second.summary.headline is not None and second.summary.headline.calls == 2
