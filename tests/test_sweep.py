"""Sweeps, the latency model, the memory-limit search, --vs and compare, end to end through the
installed command with the real bundled model; numbers checked against independent sources."""

from __future__ import annotations

import random
import re
import xml.dom.minidom
from pathlib import Path

import pytest

from embprof.engine.events import EncodeTimed, PhaseStarted
from embprof.engine.results import SweepResult
from embprof.engine.snapshot import Snapshot
from embprof.engine.sweepstats import fit_latency
from cli_helpers import run_cli, snapshot_from

pytestmark = pytest.mark.slow


def sweep_of(snap: Snapshot) -> SweepResult:
    sweep = snap.summary.results["sweep"]
    assert isinstance(sweep, SweepResult) and not sweep.partial
    return sweep


def test_lines_sweep_fit_predicts_an_unseen_line_count(cli_env: dict[str, str]) -> None:
    # Texts of one length (24 tokens): each batch is then padded alike, and the curve is the line's
    # own. Mixed lengths pad a short list far more than a long one (the fit's padding note).
    rc, out, err, _ = run_cli(["run", "sweep", "--device", "cpu", "--axis", "lines=25,50,100,150,200", "--axis", "tokens=24",
                               "--budget", "8", "--target-ci", "3"], cli_env)
    assert rc == 0, err
    _, snap = snapshot_from(out)
    sweep = sweep_of(snap)
    points = sweep.points
    assert [p.params["lines"] for p in points] == [25, 50, 100, 150, 200]
    assert all(p.params["tokens"] == 24 for p in points)
    for p in points:
        assert p.status == "ok" and p.stop in ("precision", "budget", "max-repeats")
        assert p.stats.samples_s is not None
        assert p.repeats == len(p.stats.samples_s) >= 3
        # The point's timings are its encode calls as the event stream recorded them.
        calls = [e.duration_ns / 1e9 for e in snap.events if isinstance(e, EncodeTimed) and not e.warmup and e.label == p.label]
        assert calls == list(p.stats.samples_s)
    (fit,) = sweep.fits
    assert fit.r2 is not None and fit.r2 >= 0.95, fit
    assert fit.observations == 5 and fit.timings == sum(p.repeats for p in points)
    assert "a line" in fit.formula and "Latency model" in out

    # The unseen count: the same fit without the 150-line point predicts that point's median. Held
    # out of one run rather than measured by a second process: separate processes on this machine
    # differ by up to a quarter on the same work (see README), more than a prediction's error.
    seen = [p for p in points if p.params["lines"] != 150]
    (held_out,) = [p for p in points if p.params["lines"] == 150]
    assert held_out.median_s is not None and held_out.tokens is not None
    without = fit_latency([p.lines for p in seen], [p.tokens for p in seen], [p.median_s for p in seen])
    assert without is not None and without.r2 is not None and without.r2 >= 0.95
    predicted = without.predict(150, held_out.tokens)
    assert abs(predicted - held_out.median_s) / held_out.median_s <= 0.15, (predicted, held_out.median_s)


def test_threads_sweep_uses_the_threads_asked_for(cli_env: dict[str, str]) -> None:
    rc, out, err, _ = run_cli(["run", "sweep", "--device", "cpu", "--axis", "threads=1,2", "--axis", "lines=64", "--budget", "4", "--target-ci", "10"], cli_env)
    assert rc == 0, err
    _, snap = snapshot_from(out)
    one, two = sweep_of(snap).points
    assert one.params["threads"] == 1 and two.params["threads"] == 2
    # The kernel's CPU accounting (psutil, sampled) shows the difference: one thread stays near
    # one core; two threads use more than one.
    assert one.peak_cpu_percent is not None and one.peak_cpu_percent < 125, one.peak_cpu_percent
    assert two.peak_cpu_percent is not None and two.peak_cpu_percent > 125, two.peak_cpu_percent


def test_grid_of_model_settings_reloads_and_applies_them(cli_env: dict[str, str]) -> None:
    import os

    from transformers import AutoTokenizer

    from embprof.engine.targets import bundled_model_dir

    cores = os.cpu_count() or 1
    args = ["run", "sweep", "--device", "cpu", "--axis", "dtype=float32,bfloat16", "--axis", "truncate_dim=64,384",
            "--axis", "max_seq_length=24", "--axis", "tokens=40", "--axis", f"threads={cores + 1}", "--budget", "1.5", "--target-ci", "10"]
    rc, out, err, _ = run_cli(args, cli_env)
    assert rc == 0, err
    _, snap = snapshot_from(out)
    points = sweep_of(snap).points
    assert len(points) == 4 and all(p.status == "ok" for p in points)
    # The first load plus one for each (dtype, truncate_dim) pair the grid visits.
    assert len([e for e in snap.events if isinstance(e, PhaseStarted) and e.name == "load"]) == 5
    # Tokens per text: about 40 (cut with the tokenizer) plus [CLS]/[SEP], or the max_seq_length cap.
    tok = AutoTokenizer.from_pretrained(bundled_model_dir())
    specials = len(tok("")["input_ids"])
    for p in points:
        assert p.tokens is not None
        per_text = p.tokens / p.lines
        cap = p.params["max_seq_length"]
        assert isinstance(cap, int)
        expected = min(cap, 40 + specials)
        assert abs(per_text - expected) <= 3, (p.label, per_text, expected)
    assert any("threads above this machine's" in n for n in snap.summary.notes)


def test_text_length_search_stops_at_max_seq_length(cli_env: dict[str, str]) -> None:
    args = ["run", "sweep", "--device", "cpu", "--axis", "tokens=64", "--until-oom", "--ram-ceiling", "100000", "--budget", "1"]
    rc, out, err, _ = run_cli(args, cli_env)
    assert rc == 0, err
    _, snap = snapshot_from(out)
    limit = sweep_of(snap).memory_limit
    assert limit is not None and limit.axis == "tokens"
    assert [c.value for c in limit.curve] == [64, 128, 256]
    assert limit.largest_that_fits == 256 and "max_seq_length (256)" in limit.stopped


def test_ram_ceiling_stops_the_batch_search(cli_env: dict[str, str], tmp_path: Path) -> None:
    words = "the quick brown fox jumps over a lazy dog while seven wizards judge boxing in the old hall".split()
    rnd = random.Random(0)
    text = tmp_path / "long.txt"
    text.write_text("\n".join(" ".join(rnd.choice(words) for _ in range(100)) for _ in range(40)) + "\n", encoding="utf-8")
    # Starting small leaves several points below the ceiling even where the loaded model alone takes more RAM
    # than here (more cores, more allocator arenas).
    ceiling = 900.0
    args = ["run", "sweep", "--device", "cpu", "--input", str(text), "--axis", "batch=8", "--until-oom", "--ram-ceiling", str(ceiling)]
    # Two compute threads whatever the cores: per-thread buffers are part of the RSS the ceiling is set against.
    rc, out, err, child_maxrss = run_cli(args, {**cli_env, "OMP_NUM_THREADS": "2"}, cold=True)
    assert rc == 0, err
    _, snap = snapshot_from(out)
    sweep = sweep_of(snap)
    limit = sweep.memory_limit
    assert limit is not None
    points = sweep.points
    assert points[-1].status == "over-ceiling" and points[-1].peak_rss_mib is not None and points[-1].peak_rss_mib > ceiling
    assert all(p.status == "ok" and p.peak_rss_mib is not None and p.peak_rss_mib <= ceiling for p in points[:-1])
    assert [p.params["batch"] for p in points] == [8 * 2**i for i in range(len(points))]  # doubling
    assert len(points) >= 2, f"batch 8 already crossed {ceiling} MiB: {points[0].peak_rss_mib} MiB"
    assert limit.largest_that_fits == points[-2].params["batch"]
    assert "crossed the 900 MiB ceiling" in limit.stopped
    # The kernel saw at least the peak the sampler reported (ru_maxrss of the child, from wait4).
    assert child_maxrss >= points[-1].peak_rss_mib * 0.98
    assert re.search(rf"largest batch that fits\s+│\s+{points[-2].params['batch']}\n", out), out


def test_nothing_fits_says_so(cli_env: dict[str, str]) -> None:
    args = ["run", "sweep", "--device", "cpu", "--axis", "batch=8", "--until-oom", "--ram-ceiling", "50"]
    rc, out, err, _ = run_cli(args, cli_env)
    assert rc == 0, err
    _, snap = snapshot_from(out)
    limit = sweep_of(snap).memory_limit
    assert limit is not None and limit.largest_that_fits is None and len(sweep_of(snap).points) == 1
    assert any(n.startswith("nothing fits: batch 8, the first point") for n in snap.summary.notes)
    # The printed answer says "none" rather than leaving the line out.
    assert re.search(r"largest batch that fits\s+│\s+none: batch 8, the first point, already failed", out), out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--axis", "batch=8,16", "--batch-size", "64"], "batch is both an axis and --batch-size"),
        (["--axis", "batch=8", "--axis", "lines=10", "--until-oom"], "--until-oom grows batch alone"),
        (["--axis", "lines=10", "--until-oom"], "grows exactly one axis"),
        (["--axis", "lines=10", "--ram-ceiling", "100"], "--ram-ceiling goes with --until-oom"),
        (["--axis", "lines="], "axis 'lines' has no values"),
    ],
)
def test_contradictory_sweeps_are_refused(cli_env: dict[str, str], args: list[str], message: str) -> None:
    rc, out, err, _ = run_cli(["run", "sweep", *args], cli_env)
    assert rc == 2 and out == "" and err.count("\n") == 1 and message in err, err


def test_vs_runs_two_models_alternately(cli_env: dict[str, str], tiny_gemma: Path) -> None:
    rc, out, err, _ = run_cli(["run", "encode", "--device", "cpu", "-m", str(tiny_gemma), "--vs", "bundled", "--repeats", "6"], cli_env)
    assert rc == 0, err
    _, snap = snapshot_from(out)
    vs = snap.summary.results["vs"]
    assert vs.a.model_name == str(tiny_gemma) and "all-MiniLM-L6-v2" in vs.b.model_name
    # The ratios are B's call over A's, pair by pair, from the recorded calls; the order is ABBA.
    calls = [e for e in snap.events if isinstance(e, EncodeTimed) and not e.warmup]
    tags = [c.label.split()[0] for c in calls]
    assert tags == ["A", "B", "B", "A", "A", "B", "B", "A", "A", "B", "B", "A"]
    a = {c.label.split()[-1]: c.duration_ns for c in calls if c.label.startswith("A")}
    b = {c.label.split()[-1]: c.duration_ns for c in calls if c.label.startswith("B")}
    assert list(vs.ratios) == pytest.approx([b[k] / a[k] for k in sorted(a, key=int)])
    assert vs.ci95 is not None and vs.p_value is not None
    loads = [e for e in snap.events if isinstance(e, PhaseStarted) and e.name == "load"]
    assert len(loads) == 2
    assert "A against B" in out


def test_compare_same_and_different_workloads(cli_env: dict[str, str], tmp_path: Path) -> None:
    paths = []
    for extra in (["--dtype", "float32"], ["--dtype", "bfloat16"]):
        rc, out, err, _ = run_cli(["run", "encode", "--device", "cpu", "--repeats", "4", *extra], cli_env)
        assert rc == 0, err
        paths.append(snapshot_from(out)[0])
    rc, out, err, _ = run_cli(["run", "similarity", "--device", "cpu"], cli_env)
    assert rc == 0, err
    other = snapshot_from(out)[0]

    rc, out, err, _ = run_cli(["compare", str(paths[0]), str(paths[1])], cli_env)
    assert rc == 0, err
    assert "encode call p50 s" in out and "B/A" in out and "p=" in out
    assert "dtype" in out and "bfloat16" in out  # the setting that differs is flagged
    assert "separate runs of the same work" in out and "--vs" in out  # what the rank test cannot see

    md = tmp_path / "cmp.md"
    rc, _, err, _ = run_cli(["compare", str(paths[0]), str(paths[1]), "--format", "md", "-o", str(md)], cli_env)
    assert rc == 0, err
    chart = tmp_path / "cmp-latency.svg"
    assert chart.is_file() and "![cmp-latency.svg](cmp-latency.svg)" in md.read_text(encoding="utf-8")
    xml.dom.minidom.parse(str(chart))  # a well-formed SVG

    rc, out, err, _ = run_cli(["compare", str(paths[0]), str(other)], cli_env)
    assert rc == 0, err
    assert "different workloads (encode, similarity)" in out
    assert "encode call p50 s" not in out and "peak RSS MiB" in out
    assert "separate runs of the same work" not in out  # no latency compared, nothing to caution

    rc, out, err, _ = run_cli(["compare", str(paths[0])], cli_env)
    assert rc == 2 and "at least two" in err


def test_sweep_export_writes_its_charts(cli_env: dict[str, str], tmp_path: Path) -> None:
    rc, out, err, _ = run_cli(["run", "sweep", "--device", "cpu", "--axis", "lines=8,16,32", "--budget", "2"], cli_env)
    assert rc == 0, err
    path, _ = snapshot_from(out)
    for fmt in ("svg", "png"):
        md = tmp_path / f"sweep-{fmt}.md"
        rc, _, err, _ = run_cli(["export", str(path), "--format", "md", "-o", str(md), "--charts", fmt], cli_env)
        assert rc == 0, err
        for name in ("latency", "throughput"):
            img = tmp_path / f"sweep-{fmt}-{name}.{fmt}"
            assert img.is_file() and img.stat().st_size > 1000
            assert f"({img.name})" in md.read_text(encoding="utf-8")
    assert (tmp_path / "sweep-png-latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rc, out, err, _ = run_cli(["export", str(path), "--format", "csv", "--table", "sweep"], cli_env)
    assert rc == 0 and out.splitlines()[0].startswith("point,status,median s")
