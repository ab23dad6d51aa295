"""The engine in-process with the real bundled model, checked against independent measurements."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embprof.engine.context import RunContext
from embprof.engine.events import EncodeTimed, ErrorEvent, Event, EventBus, RunFinished
from embprof.engine.runner import Runner
from embprof.engine.plan import EncodePlan, LocalTarget, SimilarityPlan, SpeedPlan
from embprof.engine.results import SimilarityResult, SpeedResult, TokenLengths
from embprof.engine.snapshot import Recorder, build
from embprof.engine.targets import SentenceTransformerTarget, bundled_model_dir, make_target
from embprof.engine.workloads.encode import EncodeWorkload
from embprof.engine.workloads.similarity import SimilarityWorkload
from embprof.engine.workloads.speed import SpeedWorkload
from embprof.engine.workload_facts import EncodeFacts

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def loaded() -> tuple[SentenceTransformerTarget, RunContext, list[Event]]:
    seen: list[Event] = []
    bus = EventBus()
    bus.subscribe(seen.append)
    ctx = RunContext(bus)
    target = SentenceTransformerTarget(LocalTarget(device="cpu"))
    target.load(ctx)
    return target, ctx, seen


def test_speed_timings_agree_with_an_external_timer(loaded: Any, speed_text: Path) -> None:
    target, ctx, seen = loaded
    external: list[float] = []
    original = target.model.encode

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            external.append(time.perf_counter() - t0)

    target.model.encode = wrapped
    try:
        seen.clear()
        SpeedWorkload(SpeedPlan(text=str(speed_text), loops=3)).run(ctx, target)
    finally:
        target.model.encode = original
    speed = next(e.result for e in seen if isinstance(getattr(e, "result", None), SpeedResult))  # type: ignore[union-attr]
    assert len(external) == 1 + 3  # the warm-up, then the loops
    for ours, theirs in zip(speed.timings, external[1:]):
        # embprof's clock wraps the same call from one frame further out: within 1 ms + 1 %.
        assert abs(ours - theirs) < 0.001 + 0.01 * theirs


def test_similarity_matches_sentence_transformers_directly(loaded: Any) -> None:
    from sentence_transformers import SentenceTransformer

    target, ctx, seen = loaded
    seen.clear()
    wl = SimilarityWorkload(SimilarityPlan())
    wl.prepare()
    wl.run(ctx, target)
    sim = next(e.result for e in seen if isinstance(getattr(e, "result", None), SimilarityResult))  # type: ignore[union-attr]
    independent = SentenceTransformer(bundled_model_dir(), device="cpu")
    q = independent.encode_query(list(sim.queries))
    d = independent.encode_document(list(sim.documents))
    expected = independent.similarity(q, d).numpy()
    np.testing.assert_allclose(np.array(sim.scores), expected, atol=1e-5)


def test_encode_counts_truncated_inputs(loaded: Any, tmp_path: Path) -> None:
    target, ctx, seen = loaded
    long_line = " ".join(["profiling"] * 400)  # ~400 word-piece tokens > 256
    f = tmp_path / "lines.txt"
    f.write_text(f"short line\n{long_line}\nanother short one\n", encoding="utf-8")
    seen.clear()
    wl = EncodeWorkload(EncodePlan(input=str(f), repeats=1, warmups=0), make_target)
    wl.prepare()
    wl.run(ctx, target)
    tokens = next(e.result for e in seen if isinstance(getattr(e, "result", None), TokenLengths))  # type: ignore[union-attr]
    assert tokens.truncated == 1 and tokens.max > 256
    timed = [e for e in seen if isinstance(e, EncodeTimed)]
    assert timed[0].tokens is not None and timed[0].tokens <= 256 + 2 * 20  # the encoder saw the truncated input, not 400 tokens


class Exploding:
    """A workload that measures one encode and then fails the way a real run can."""

    name = "encode"

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def prepare(self) -> None: ...

    def prompt_names(self) -> list[str]:
        return []

    def facts(self) -> EncodeFacts:
        return EncodeFacts(input="two lines", lines=2)

    def run(self, ctx: RunContext, target: Any) -> None:
        with ctx.phase("encode", "before the fault"):
            target.encode(ctx, ["one", "two"])
        with ctx.phase("encode", "the fault"):
            raise self.exc


@pytest.mark.parametrize(
    "exc, kind", [(RuntimeError("kernel exploded"), "runtime"), (MemoryError("cannot allocate"), "oom")]
)
def test_a_failing_run_keeps_what_it_measured(exc: BaseException, kind: str) -> None:
    rec = Recorder()
    runner = Runner(SentenceTransformerTarget(LocalTarget(device="cpu")), Exploding(exc), subscribers=[rec])  # type: ignore[arg-type]
    assert runner.run_sync() == "failed"
    snap = build(rec, {})
    assert snap.status == "failed"
    err = snap.summary.errors[0]
    assert err.error_kind == kind and err.phase == "encode" and "Traceback" in err.detail
    assert snap.summary.headline is not None and snap.summary.headline.calls == 1
    assert snap.summary.phases[-1].ok is False
    assert isinstance(snap.events[-1], RunFinished)


def test_cancel_lands_between_batches_and_keeps_the_timings(speed_text: Path) -> None:
    rec = Recorder()
    cancel_after: list[Runner] = []

    def on_event(e: Event) -> None:
        if isinstance(e, EncodeTimed) and not e.warmup and e.label == "loop 1":
            cancel_after[0].cancel()

    wl = SpeedWorkload(SpeedPlan(text=str(speed_text), loops=50, batch_size=8))
    wl.prepare()
    runner = Runner(SentenceTransformerTarget(LocalTarget(device="cpu")), wl, subscribers=[rec, on_event])
    cancel_after.append(runner)
    assert runner.run_sync() == "incomplete"
    events = rec.events()
    assert any(isinstance(e, ErrorEvent) and e.error_kind == "cancelled" for e in events)
    loops = [e for e in events if isinstance(e, EncodeTimed) and not e.warmup]
    assert len(loops) == 1  # loop 2 was stopped at its first batch boundary


def test_qwen_lookalike_query_prompt(tiny_qwen: Path) -> None:
    from lookalikes import QWEN_PROMPTS

    seen: list[Event] = []
    bus = EventBus()
    bus.subscribe(seen.append)
    ctx = RunContext(bus)
    target = SentenceTransformerTarget(LocalTarget(model=str(tiny_qwen), device="cpu"))
    target.load(ctx)
    target.encode(ctx, ["which metal is liquid"], mode="query")
    assert target.last_prompt == QWEN_PROMPTS["query"]
    target.encode(ctx, ["mercury is liquid"], mode="document")
    assert target.last_prompt == ""
    assert (target.describe().parameters or 0) > 0
