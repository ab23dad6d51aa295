"""embprof against a real llama.cpp server, built from the llama-cpp-python sdist (tests/llama_server.py)
and serving the bundled all-MiniLM-L6-v2 converted to GGUF f16 by llama.cpp's own converter.

The first run builds llama-server (several minutes on two cores) into a cache outside the project.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from embprof.engine.events import RequestTimed, ResourceSample
from llama_server import LlamaServer, minilm_gguf, server_binary
from cli_helpers import run_cli, snapshot_from

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llama() -> Iterator[LlamaServer]:
    model = minilm_gguf()
    server_binary()
    with LlamaServer(model) as server:
        yield server


def vm_hwm_mib(pid: int) -> float:
    """The kernel's own peak resident size of a process (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.parametrize("api", ["llama", "openai"])
def test_encode_and_speed_against_llama_server(cli_env: dict[str, str], llama: LlamaServer, api: str, speed_text: Path) -> None:
    rc, out, err, _ = run_cli(["run", "encode", "--server", llama.url, "--api", api, "--repeats", "3"], cli_env)
    assert rc == 0, err
    _, snap = snapshot_from(out)
    assert snap.status == "complete"
    reqs = [e for e in snap.events if isinstance(e, RequestTimed)]
    assert reqs and all(r.status == 200 and not r.error_kind for r in reqs)
    if api == "openai":
        assert all(r.tokens and r.tokens > 0 for r in reqs)  # llama.cpp reports usage on /v1/embeddings
        assert snap.summary.results["encode"].tokens_per_s is not None and snap.summary.results["encode"].tokens_per_s > 0
    else:
        # llama.cpp's native /embedding reports no token counts: not measured, never 0.
        assert all(r.tokens is None for r in reqs)
        assert snap.summary.results["encode"].tokens_per_s is None
    # Server-side memory, found by the URL's port: the sampled RSS of the server process, checked
    # against the kernel's own high-water mark for that process.
    assert snap.target.server_pid == llama.pid
    server_rss = [s.server_rss_mib for s in snap.events if isinstance(s, ResourceSample) and s.server_rss_mib is not None]
    assert server_rss
    assert max(server_rss) <= vm_hwm_mib(llama.pid) * 1.01
    assert max(server_rss) > 10  # the model is in there

    rc, out, err, _ = run_cli(["run", "speed", "--server", llama.url, "--api", api, "--loops", "2", "--text", str(speed_text)], cli_env)
    assert rc == 0, err
    _, snap = snapshot_from(out)
    speed = snap.summary.results["speed"]
    assert len(speed.timings) == 2 and speed.avg_words_per_sec > 0


def test_server_pid_given_and_metrics(cli_env: dict[str, str], llama: LlamaServer) -> None:
    rc, out, err, _ = run_cli(["run", "encode", "--server", llama.url, "--server-pid", str(llama.pid), "--repeats", "1"], cli_env)
    assert rc == 0, err
    _, snap = snapshot_from(out)
    assert snap.target.server_pid == llama.pid
    metrics = snap.summary.results["server_metrics"].delta
    # The server's own count of what it processed moved while the run went on.
    assert any(v > 0 for k, v in metrics.items() if "tokens" in k), metrics


def test_agreement_with_the_local_model(cli_env: dict[str, str], llama: LlamaServer) -> None:
    rc, out, err, _ = run_cli(["run", "encode", "--server", llama.url, "--repeats", "1", "--compare-model", "bundled"], cli_env)
    assert rc == 0, err
    _, snap = snapshot_from(out)
    agreement = snap.summary.results["agreement"]
    assert agreement.min >= 0.999, agreement
    assert len(agreement.cosine) == snap.summary.results["encode"].lines


def test_similarity_against_llama_server(cli_env: dict[str, str], llama: LlamaServer) -> None:
    rc, out, err, _ = run_cli(["run", "similarity", "--server", llama.url, "--api", "openai"], cli_env)
    assert rc == 0, err
    _, snap = snapshot_from(out)
    assert list(snap.summary.results["similarity"].top1_correct) == [True]  # as MiniLM ranks it locally


def test_load_against_llama_server(cli_env: dict[str, str], llama: LlamaServer) -> None:
    rc, out, err, _ = run_cli(["run", "load", "--server", llama.url, "--requests", "60", "--concurrency", "2"], cli_env)
    assert rc == 0, err
    _, snap = snapshot_from(out)
    load = snap.summary.results["load"]
    assert load.ok == 60 and load.errors == 0
    assert load.client_ceiling_per_s is not None and load.requests_per_s is not None
    assert load.client_ceiling_per_s > load.requests_per_s
    rc, out, err, _ = run_cli(["run", "load", "--server", llama.url, "--api", "openai", "--duration", "2", "--rate", "20"], cli_env)
    assert rc == 0, err
    _, snap = snapshot_from(out)
    load = snap.summary.results["load"]
    assert load.errors == 0 and 10 <= load.requests_done <= 80  # about 40 arrivals in 2 s


def test_texts_of_a_stated_token_length_are_counted_by_the_servers_tokenizer(cli_env: dict[str, str], llama: LlamaServer) -> None:
    rc, out, err, _ = run_cli(["run", "load", "--server", llama.url, "--text-tokens", "64", "--requests", "20"], cli_env)
    assert rc == 0, err
    _, snap = snapshot_from(out)
    notes = [e.text for e in snap.events if getattr(e, "kind", "") == "note" and e.text.startswith("texts of 64 tokens")]
    assert len(notes) == 1 and "by the server's tokenizer" in notes[0], notes
    counted = int(notes[0].split(" words each, ")[1].split(" tokens")[0])
    assert abs(counted - 64) <= 3, notes[0]
    assert snap.summary.results["load"].ok == 20
    # Where the time went: llama.cpp sends no timings with an answer, but its /metrics total the prompt seconds.
    from embprof.engine.report import summary_tables

    (split,) = [t for t in summary_tables(snap) if t.name == "load-split"]
    seconds = snap.summary.results["server_metrics"].delta["llamacpp:prompt_seconds_total"]
    assert str(split.rows[0][0]).startswith("inference (llama.cpp /metrics") and split.rows[0][1] == 21  # the warm-up and 20
    assert split.rows[0][2] == pytest.approx(seconds / 21)
    # The server's inference is inside each request's time on the client: over the same 21 requests (the
    # warm-up, often the slowest, among them) the server's total is below the client's.
    sent = [e for e in snap.events if getattr(e, "kind", "") == "request_timed" and e.group == "load"]
    assert len(sent) == 21 and sum(e.warmup for e in sent) == 1
    assert 0 < seconds < sum(e.duration_ns for e in sent) / 1e9


def test_the_knee_of_a_real_llama_server(cli_env: dict[str, str], llama: LlamaServer) -> None:
    """--find-knee against llama-server: from half of what one connection sustains, rate steps until the
    objective breaks, then bisected; the answer is a rate with its curve, each step's figures its own."""
    rc, out, err, _ = run_cli(["run", "load", "--server", llama.url, "--find-knee", "--step-duration", "2", "--slo-p99", "150",
                               "--slo-errors", "0"], cli_env)
    assert rc == 0, err
    _, snap = snapshot_from(out)
    knee = snap.summary.results["knee"]
    assert knee.start_from.startswith("half of what one connection sustained")
    assert len(knee.steps) >= 2 and knee.sustainable_per_s is not None, knee
    held = [s for s in knee.steps if s.passed]
    assert max(s.offered_per_s for s in held) == knee.sustainable_per_s
    assert all(s.p99_s is not None and s.p99_s <= 0.150 and s.errors == 0 for s in held)
    broke = [s for s in knee.steps if not s.passed]
    assert broke and knee.bracket is not None and knee.bracket[1] / knee.bracket[0] <= 1.05 + 1e-9
    assert all(s.offered_per_s > knee.sustainable_per_s for s in broke)
    phases = [ph.name for ph in snap.summary.phases]
    assert "knee: one connection" in phases and sum(n.startswith("knee step") for n in phases) == len(knee.steps)
    assert "The knee's steps" in out
    # Exports: the curve as a chart beside the Markdown report, and every step as CSV.
    path, _ = snapshot_from(out)
    md = path.parent / "knee.md"
    rc, _, err, _ = run_cli(["export", str(path), "--format", "md", "-o", str(md)], cli_env)
    assert rc == 0, err
    chart = path.parent / "knee-knee.svg"
    assert chart.is_file() and chart.read_text().lstrip().startswith("<?xml") and "knee-knee.svg" in md.read_text()
    rc, csv_out, err, _ = run_cli(["export", str(path), "--format", "csv", "--table", "knee-steps"], cli_env)
    assert rc == 0, err
    import csv as csv_module
    import io

    rows = list(csv_module.DictReader(io.StringIO(csv_out)))
    assert [float(r["offered/s"]) for r in rows] == pytest.approx([st.offered_per_s for st in knee.steps], rel=1e-3)


def test_too_large_input_names_the_flags(cli_env: dict[str, str], tmp_path: Path) -> None:
    long_text = tmp_path / "long.txt"
    long_text.write_text(" ".join(["word"] * 400) + "\n", encoding="utf-8")
    with LlamaServer(minilm_gguf(), "-ub", "128", "-b", "128") as small:
        rc, out, err, _ = run_cli(["run", "encode", "--server", small.url, "--input", str(long_text)], cli_env)
    assert rc == 1, err
    _, snap = snapshot_from(out)
    last = [e for e in snap.events if isinstance(e, RequestTimed)][-1]
    assert last.error_kind == "too large" and "-b and -ub" in last.error


@pytest.mark.skipif(not os.environ.get("EMBPROF_DATASETS") and not Path(__file__).parents[2].joinpath("shared", "datasets", "sts16").is_dir(),
                    reason="the evaluation datasets are absent")
def test_mteb_task_against_llama_server(cli_env: dict[str, str], llama: LlamaServer, tmp_path: Path) -> None:
    from conftest import DATASETS

    data = tmp_path / "data" / "sts16"
    data.mkdir(parents=True)
    rows = (DATASETS / "sts16" / "test.jsonl").read_text(encoding="utf-8").splitlines()[:50]
    (data / "test.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    rc, out, err, _ = run_cli(["mteb", "--server", llama.url, "-t", "STS16", "--data-dir", str(data.parent), "--results-dir", str(tmp_path / "results")], cli_env)
    assert rc == 0, err
    _, snap = snapshot_from(out)
    result = snap.summary.results["mteb:STS16"]
    assert result.status == "ok" and result.main_score is not None and 0.3 < result.main_score <= 1.0
    assert [e.texts for e in result.encodes] == [50, 50]
