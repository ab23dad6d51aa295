"""The fold of a run's events (engine/fold.py) against figures worked out here from the same scripted numbers: sums,
rates and counts by hand, never read back from the fold itself. Written where a mutation run over fold.py showed
figures no test looked at (tokens, words and bytes added up, warm-ups kept, what a training run's summary says)."""

from __future__ import annotations

import math

import pytest

from embprof.engine.events import BatchTimed, EncodeTimed, RequestTimed, TrainStep
from embprof.engine.fold import MAX_WARMUPS_KEPT, RunState

MS = 1_000_000


def encode(call: int, ms: float, *, items: int = 4, tokens: int | None = 40, words: int | None = 20, warmup: bool = False,
           group: str = "encode") -> EncodeTimed:
    return EncodeTimed(t_ns=call + 1, phase_id=1, call_index=call, label=f"call {call}", items=items, tokens=tokens, words=words,
                       duration_ns=round(ms * MS), warmup=warmup, group=group)


def batch(call: int, ms: float, *, tokens: int | None, padded: int | None, warmup: bool = False, group: str = "encode") -> BatchTimed:
    return BatchTimed(t_ns=call + 1, phase_id=1, call_index=call, batch_index=0, items=4, tokens=tokens, padded_tokens=padded,
                      duration_ns=round(ms * MS), warmup=warmup, group=group)


def fold(events: list) -> RunState:  # type: ignore[type-arg]
    state = RunState()
    for e in events:
        state.apply(e)
    return state


def test_calls_add_up_their_items_tokens_words_and_batches() -> None:
    calls = [(100.0, 4, 40, 20), (300.0, 6, 66, 30), (200.0, 2, 18, 9)]  # ms, items, tokens, words
    batches = [(60.0, 40, 64), (250.0, 66, 96), (150.0, 18, 32)]  # ms, tokens, padded
    events = [encode(0, 999.0, warmup=True), batch(0, 900.0, tokens=1, padded=1000, warmup=True)]
    for i, ((ms, items, tokens, words), (bms, btok, pad)) in enumerate(zip(calls, batches), 1):
        events += [batch(i, bms, tokens=btok, padded=pad), encode(i, ms, items=items, tokens=tokens, words=words)]
    state = fold(events)
    (g,) = state.call_groups()
    seconds = 0.6  # 100 + 300 + 200 ms
    assert (g.calls, g.warmup_calls, g.warmup_s, g.items, g.tokens, g.words) == (3, 1, (0.999,), 12, 124, 59)
    assert g.items_per_s == pytest.approx(12 / seconds) and g.tokens_per_s == pytest.approx(124 / seconds)
    assert g.words_per_s == pytest.approx(59 / seconds)
    assert (g.batches, g.batch_tokens, g.padded_tokens) == (3, 124, 192)  # the warm-up's batch counts for nothing
    assert g.padding_percent == pytest.approx(100 * (192 - 124) / 192)
    assert g.stats.p50_s == pytest.approx(0.2) and g.batch_stats.max_s == pytest.approx(0.25)
    # The dashboard's headline is the same group, built by the same code.
    assert state.headline() == g


def test_a_group_of_warm_ups_alone_has_no_figures() -> None:
    state = fold([encode(0, 50.0, warmup=True, group="warm"), encode(1, 10.0, group="timed")])
    warm, timed = state.call_groups()
    assert warm.group == "warm" and warm.calls == 0 and warm.warmup_calls == 1
    # Nothing timed: no totals, which would read as "0 tokens"; no batches: no padding.
    assert (warm.tokens, warm.words, warm.batch_tokens, warm.padded_tokens, warm.padding_percent) == (None, None, None, None, None)
    assert timed.tokens == 40 and timed.words == 20
    assert state.headline() == timed  # the one group with timed calls


def test_headline_is_none_with_two_kinds_of_timed_call() -> None:
    state = fold([encode(0, 10.0, group="a"), encode(1, 20.0, group="b")])
    assert state.headline() is None and [g.group for g in state.call_groups()] == ["a", "b"]


def test_an_unknown_count_makes_its_total_unknown() -> None:
    state = fold([batch(1, 10.0, tokens=10, padded=None), encode(1, 10.0, tokens=None, words=None),
                  batch(2, 10.0, tokens=10, padded=16), encode(2, 10.0)])
    (g,) = state.call_groups()
    assert g.tokens is None and g.words is None and g.tokens_per_s is None and g.words_per_s is None
    assert g.batch_tokens == 20 and g.padded_tokens is None and g.padding_percent is None


def test_warm_ups_kept_are_the_latest_hundred() -> None:
    state = fold([encode(i, float(i + 1), warmup=True) for i in range(MAX_WARMUPS_KEPT + 5)] + [encode(999, 1.0)])
    (g,) = state.call_groups()
    assert g.warmup_calls == MAX_WARMUPS_KEPT + 5
    assert g.warmup_s == tuple((i + 1) / 1e3 for i in range(5, MAX_WARMUPS_KEPT + 5))


def request(i: int, ms: float, *, sent: int, received: int, tokens: int | None = None, error: str = "", warmup: bool = False,
            group: str = "load") -> RequestTimed:
    return RequestTimed(t_ns=i + 1, phase_id=1, call_index=0, request_index=i, items=2, duration_ns=round(ms * MS),
                        status=None if error else 200, bytes_sent=sent, bytes_received=received, tokens=tokens, error_kind=error,
                        warmup=warmup, group=group)


def test_requests_add_up_bytes_answers_failures_and_tokens() -> None:
    state = fold([request(0, 5.0, sent=100, received=900, tokens=7, warmup=True),
                  request(1, 10.0, sent=120, received=1000, tokens=8),
                  request(2, 30.0, sent=130, received=0, error="timeout"),
                  request(3, 20.0, sent=110, received=50, error="http 500"),
                  request(4, 40.0, sent=140, received=1100, tokens=9)])
    (r,) = state.request_groups()
    assert (r.requests, r.answered, r.failed, r.failed_by_kind) == (5, 3, 2, {"timeout": 1, "http 500": 1})
    assert (r.bytes_sent, r.bytes_received, r.tokens) == (600, 3050, 24)
    assert r.stats.count == 2 and r.stats.mean_s == pytest.approx(0.025)  # answered and not the warm-up


def test_requests_with_no_answer_have_no_token_count() -> None:
    (r,) = fold([request(0, 5.0, sent=10, received=0, error="connection")]).request_groups()
    assert r.answered == 0 and r.tokens is None and r.bytes_sent == 10


def step(n: int, ms: float, *, loss: float | None, lr: float | None = 1e-4, parts: tuple[float | None, ...] = (1.0, 2.0, 3.0, 4.0),
         rss: float | None = None, reserved: float | None = None, gpu: float | None = None, tokens: int | None = 100,
         max_rss: float | None = None, rose: bool | None = None) -> TrainStep:
    data, forward, backward, optimizer = (None if p is None else round(p * MS) for p in parts)
    return TrainStep(t_ns=n, phase_id=1, step=n, epoch=n / 10, samples=8, tokens=tokens, loss=loss, learning_rate=lr,
                     duration_ns=round(ms * MS), data_ns=data, forward_ns=forward, backward_ns=backward, optimizer_ns=optimizer,
                     rss_mib=rss, max_rss_mib=max_rss, max_rss_rose=rose, torch_peak_reserved_mib=reserved, gpu_process_mib=gpu)


def test_a_training_summary_is_its_steps_added_up() -> None:
    steps = [
        step(3, 20.0, loss=2.0, lr=3e-4, parts=(1.0, 5.0, 9.0, 2.0), rss=500.0, reserved=900.0, gpu=1000.0, max_rss=520.0, rose=True),
        step(4, 30.0, loss=1.5, lr=2e-4, parts=(2.0, 6.0, 10.0, 3.0), rss=510.0, reserved=950.0, gpu=1000.0, max_rss=530.0, rose=True),
        step(5, 10.0, loss=1.5, lr=1e-4, parts=(3.0, 7.0, 11.0, None), rss=510.0, reserved=950.0, gpu=990.0, max_rss=530.0, rose=False),
        step(6, 40.0, loss=None, lr=None, parts=(4.0, 8.0, 12.0, 4.0), rss=505.0, tokens=50),
    ]
    state = fold(steps)
    assert state.training is not None
    t = state.training.summary()
    seconds = 0.1  # 20 + 30 + 10 + 40 ms
    assert (t.steps, t.first_step, t.last_step, t.epoch, t.samples, t.tokens) == (4, 3, 6, 0.6, 32, 350)
    assert t.seconds == pytest.approx(seconds, rel=1e-12)
    assert t.samples_per_s == pytest.approx(32 / seconds) and t.tokens_per_s == pytest.approx(350 / seconds)
    assert t.step.count == 4 and t.step.max_s == pytest.approx(0.04, rel=1e-12)
    parts = {p.part: p for p in t.parts}
    assert parts["data"].stats.mean_s == pytest.approx(0.0025, rel=1e-12)  # (1 + 2 + 3 + 4) / 4 ms
    assert parts["backward"].share_percent == pytest.approx(100 * 0.042 / seconds, rel=1e-12)  # 9 + 10 + 11 + 12 ms
    assert parts["optimizer"].stats.count == 3 and parts["optimizer"].share_percent == pytest.approx(100 * 0.009 / seconds, rel=1e-12)
    assert t.unsplit == ("optimizer",)
    # The first loss and the last (None: the last step's loss was not finite); the lowest, first reached at step 4.
    assert (t.first_loss, t.last_loss, t.min_loss.value, t.min_loss.step) == (2.0, None, 1.5, 4)
    assert t.last_learning_rate is None
    # Peaks, each with the step that first reached it.
    assert (t.rss_at_step_end.value, t.rss_at_step_end.step) == (510.0, 4)
    assert (t.torch_reserved.value, t.torch_reserved.step) == (950.0, 4)
    assert (t.gpu_process.value, t.gpu_process.step) == (1000.0, 3)
    assert t.torch_allocated.value is None
    assert (t.max_rss.value, t.max_rss.step) == (530.0, 4)  # the kernel's mark last rose in step 4


def test_a_part_never_timed_has_no_share_and_steps_of_no_time_no_rates() -> None:
    t1 = fold([step(1, 5.0, loss=1.0, parts=(1.0, 1.0, 1.0, None))]).training
    assert t1 is not None
    s = t1.summary()
    assert {p.part: p.share_percent for p in s.parts}["optimizer"] is None
    assert {p.part: p.share_percent for p in s.parts}["data"] == pytest.approx(100 * 1.0 / 5.0, rel=1e-12)
    assert s.last_learning_rate == 1e-4 and s.last_loss == 1.0
    t0 = fold([step(1, 0.0, loss=1.0, parts=(0.0, 0.0, 0.0, 0.0))]).training
    assert t0 is not None
    s0 = t0.summary()
    assert s0.seconds == 0.0 and s0.samples_per_s is None and s0.tokens_per_s is None
    assert all(p.share_percent is None for p in s0.parts)  # 0 of 0 s is no share, not a division by zero
    assert not math.isnan(s0.step.mean_s or 0.0)


S = 1_000_000_000


def test_a_runs_phases_peaks_counters_errors_and_notes_are_its_events() -> None:
    from embprof.engine.events import ErrorEvent, Note, PhaseEnded, PhaseStarted, Result, RunFinished, RunStarted
    from embprof.engine.fold import MAX_NOTES
    from embprof.engine.plan import RunPlan
    from embprof.engine.results import KernelCounters, TargetFacts
    from embprof.engine.workload_facts import EncodeFacts
    from fake_engine import sample

    plan, workload = RunPlan(), EncodeFacts()
    state = RunState()
    # Before anything arrives, nothing is said: no run, no time, no samples.
    assert (state.run_id, state.started_utc, state.plan, state.target, state.workload, state.sample_hz, state.status,
            state.last_t_s, state.samples_seen) == ("", "", None, None, None, 0.0, None, 0.0, 0)
    events = [
        RunStarted(t_ns=0, run_id="r1", started_utc="2026-01-01T00:00:00+00:00", target=TargetFacts(backend="sentence-transformers", model_name="m"), workload=workload,
                   sample_hz=4.0, plan=plan),
        sample(S // 2, 100.0),
        PhaseStarted(t_ns=1 * S, phase_id=1, name="load"),
        sample(3 * S // 2, 290.0, threads=12, gpu=True),  # NVML and torch read once (their fields: see fake_engine.sample)
        PhaseStarted(t_ns=2 * S, phase_id=2, name="encode", detail="repeat 1/1", parent_id=1),
        sample(5 * S // 2, 300.0),
        sample(3 * S, 300.0, cpu=250.0),
        PhaseEnded(t_ns=7 * S // 2, phase_id=2, name="encode", duration_ns=3 * S // 2, ok=False),
        sample(4 * S, 350.0),
        sample(9 * S // 2, 350.0),  # as high again, later: the peak is when it was first reached
        sample(19 * S // 4, 320.0),  # lower again before the phase ends: its peak stays
        PhaseEnded(t_ns=5 * S, phase_id=1, name="load", duration_ns=4 * S),
        sample(11 * S // 2, 200.0),
        Result(t_ns=6 * S, result=KernelCounters(ru_maxrss_mib=360.0, torch_max_memory_allocated_mib=400.0,
                                                 torch_max_memory_reserved_mib=500.0)),
        ErrorEvent(t_ns=13 * S // 2, error_kind="runtime", message="boom", phase="encode", detail="where"),
        *[Note(t_ns=13 * S // 2, text=f"note {i}") for i in range(MAX_NOTES + 1)],
        RunFinished(t_ns=7 * S, status="incomplete", duration_ns=29 * S // 4),
    ]
    for e in events:
        state.apply(e)
    assert (state.run_id, state.plan, state.workload, state.sample_hz, state.status) == ("r1", plan, workload, 4.0, "incomplete")
    # A phase's label names it; the moments a phase begins and ends are inside it; the innermost phase wins.
    assert state.phase_at(2.0) == "encode repeat 1/1" and state.phase_at(3.5) == "encode repeat 1/1"
    assert state.phase_at(1.0) == "load" and state.phase_at(4.0) == "load" and state.phase_at(6.0) == ""
    phase = state.phase(2)
    assert phase is not None and phase.name == "encode"
    assert state.phase_peak(2, "rss_mib") == 300.0 and state.phase_peak(1, "rss_mib") == 350.0 and state.phase_peak(9, "rss_mib") is None

    s = state.summary()
    assert s.duration_s == 7.25  # the run's own duration, not its last event's time
    assert s.samples == 8 and s.timeline_stride == 1 and state.summary(timeline_stride=4).timeline_stride == 4
    kinds = {"run_started": 1, "resource_sample": 8, "phase_started": 2, "phase_ended": 2, "result": 1, "error": 1,
             "note": MAX_NOTES + 1, "run_finished": 1}
    assert s.events_seen == kinds and s.events_kept == kinds
    load, enc = s.phases
    assert (load.phase_id, load.name, load.detail, load.parent_id, load.path) == (1, "load", "", 0, "load")
    assert (load.start_s, load.end_s, load.duration_s, load.ok, load.samples, load.rss_before_mib) == (1.0, 5.0, 4.0, True, 6, 100.0)
    assert (enc.parent_id, enc.path, enc.start_s, enc.end_s, enc.duration_s, enc.ok) == (1, "load › encode", 2.0, 3.5, 1.5, False)
    assert (enc.samples, enc.rss_before_mib, enc.gpu_process_before_mib) == (2, 290.0, 580.0)
    assert load.peaks["rss_mib"] == 350.0 and enc.peaks["rss_mib"] == 300.0 and enc.peaks["cpu_percent"] == 250.0
    rss = s.peaks["rss_mib"]
    assert (rss.sampled, rss.at_s, rss.phase, rss.counter, rss.counter_source) == (350.0, 4.0, "load", 360.0, "ru_maxrss")
    assert (s.peaks["threads"].sampled, s.peaks["threads"].at_s) == (12.0, 1.5)
    assert s.peaks["cpu_percent"].sampled == 250.0 and "server_rss_mib" not in s.peaks  # no server sampled: no peak, not 0
    # torch's own high-water marks beside what the samples saw of its allocator.
    for field, sampled, counter, source in (("torch_reserved_mib", 435.0, 500.0, "torch.cuda.max_memory_reserved"),
                                            ("torch_allocated_mib", 290.0, 400.0, "torch.cuda.max_memory_allocated")):
        peak = s.peaks[field]
        assert (peak.sampled, peak.at_s, peak.counter, peak.counter_source) == (sampled, 1.5, counter, source)
    (err,) = s.errors
    assert (err.t_ns, err.error_kind, err.message, err.phase, err.detail) == (13 * S // 2, "runtime", "boom", "encode", "where")
    assert len(s.notes) == MAX_NOTES and s.notes[-1] == f"note {MAX_NOTES - 1}"


def test_a_run_still_going_lasts_until_its_latest_event() -> None:
    from embprof.engine.events import PhaseStarted

    state = fold([PhaseStarted(t_ns=S // 4, phase_id=1, name="load"), encode(0, 10.0), PhaseStarted(t_ns=S // 2, phase_id=2, name="warm")])
    assert state.summary().duration_s == 0.5 and state.phase_at(9.0) == "warm"  # open phases hold every later moment
    assert state.summary().phases[1].end_s is None


def test_failures_of_one_kind_are_counted_together_and_latency_is_exact() -> None:
    # Seconds, not milliseconds: pytest.approx's absolute floor (1e-12) would hide a nanosecond's error in a small figure.
    state = fold([request(0, 1.5, sent=1, received=1, error="timeout"), request(1, 2.5, sent=1, received=1, error="timeout"),
                  request(2, 250.0, sent=1, received=1), request(3, 750.0, sent=1, received=1)])
    (r,) = state.request_groups()
    assert r.failed_by_kind == {"timeout": 2} and r.stats.mean_s == pytest.approx(0.5, rel=1e-12)
    (g,) = fold([batch(1, 125.0, tokens=1, padded=1), encode(1, 1000.0)]).call_groups()
    assert g.batch_stats.mean_s == pytest.approx(0.125, rel=1e-12)


def test_a_peak_at_the_moment_a_phase_begins_is_that_phases() -> None:
    from embprof.engine.events import PhaseStarted
    from fake_engine import sample

    state = fold([PhaseStarted(t_ns=S, phase_id=1, name="load"), sample(2 * S, 100.0), PhaseStarted(t_ns=7 * S, phase_id=2, name="encode"),
                  sample(7 * S, 500.0)])
    assert state.summary().peaks["rss_mib"].phase == "encode"


def test_what_a_target_says_of_itself_later_replaces_what_it_said_at_the_start() -> None:
    # A server's model name and dimension are known only once it answers: the target states its facts again as a
    # Result, and the run's record is that later statement, not the one made before loading.
    from embprof.engine.events import Result, RunStarted
    from embprof.engine.plan import RunPlan
    from embprof.engine.results import TargetFacts
    from embprof.engine.workload_facts import EncodeFacts

    before = TargetFacts(backend="http", model_name="asked-for")
    after = TargetFacts(backend="http", model_name="served", embedding_dim=384)
    state = fold([RunStarted(t_ns=0, run_id="r", started_utc="2026-01-01T00:00:00+00:00", target=before, workload=EncodeFacts(),
                             sample_hz=4.0, plan=RunPlan()),
                  Result(t_ns=S, result=after)])
    assert state.target == after and state.results["target"] == after
