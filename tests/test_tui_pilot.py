"""The dashboard against injected events: every panel, the controls, the failure paths."""

from __future__ import annotations

import statistics
import threading
from pathlib import Path
from typing import Any

import fake_engine
import pytest
from pilot_helpers import NotificationLog, finished, make_app, text_of, until
from embprof.engine.plan import RunPlan, plan_from_options
from embprof.tui.app import EmbprofApp
from embprof.tui.panels import PhaseBands, StatusBar
from embprof.tui.panels.scores import ScoresPanel
from embprof.tui.screens import RunForm
from textual.events import Unmount
from textual.message import Message
from textual.widget import Widget
from textual.widgets import DataTable, Static


def latency_groups(app: EmbprofApp) -> list[Any]:
    assert app.current is not None
    return app.current.run.call_groups()


async def test_latency_panel_shows_the_recorded_statistics(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await finished(app, pilot)
        stats = text_of(app, "#latency-stats")
        mean_ms = statistics.fmean(fake_engine.CALL_MS)
        assert f"mean {mean_ms:,.1f} ms" in stats
        assert "calls 3" in stats and "CV" in stats
        assert f"warm-up {fake_engine.WARMUP_MS:,.1f} ms" in stats and "not counted" in stats
        items_per_s = 3 * 34 / (sum(fake_engine.CALL_MS) / 1000)
        assert f"{items_per_s:,.1f} items/s" in stats
        status = str(app.query_one(StatusBar).render())
        assert "done" in status and "encode" in status and "fake/minilm" in status


async def test_memory_panel_peaks_and_no_gpu(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await finished(app, pilot)
        await pilot.press("2")
        await pilot.pause(0.3)
        peaks = text_of(app, "#memory-peaks")
        view = app.current
        assert view is not None
        top = max(s.rss_mib for s in view.samples)
        assert view.run.peaks["rss_mib"][0] == top
        assert f"peak RSS {top:,.1f} MiB" in peaks
        assert "ru_maxrss" in peaks
        assert "No GPU" in peaks and "NVML unavailable (fake)" in peaks
        bands = str(app.query_one(PhaseBands).render())
        assert "import" in bands and "warm-up" in bands and "encode" in bands


async def test_memory_panel_with_a_gpu(tmp_path: Path) -> None:
    app = make_app(tmp_path, gpu=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await finished(app, pilot)
        await pilot.press("2")
        await pilot.pause(0.3)
        peaks = text_of(app, "#memory-peaks")
        assert "GPU this process peak" in peaks and "torch reserved peak" in peaks
        assert "No GPU" not in peaks


async def test_cpu_panel_has_a_bar_per_core(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await finished(app, pilot)
        await pilot.press("3")
        await pilot.pause(0.5)
        cores = app.query_one("#cores", Static)
        lines = [line for line in cores.render_lines(cores.region.reset_offset) if line.text.strip()]  # type: ignore[attr-defined]
        assert [line.text.split()[0:2] for line in lines] == [["core", "0"], ["core", "1"]]
        assert all(line.text.rstrip().endswith("95%") for line in lines)
        summary = text_of(app, "#cpu-summary")
        assert "threads 12" in summary and "190%" in summary


async def test_similarity_panel_heat_map_and_ranking(tmp_path: Path) -> None:
    app = make_app(tmp_path, similarity=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await finished(app, pilot)
        await pilot.press("4")
        await pilot.pause(0.3)
        table = app.query_one("#scores-table", DataTable)
        assert table.row_count == 4
        assert "0.7700" in str(table.get_cell_at((1, 1)))
        rank = text_of(app, "#scores-foot")
        assert "2 > 4 > 1 > 3" in rank and "0.0900" in rank and "right document first" in rank
        # Narrow or captured, a label never runs into the value before it.
        narrow = text_of(app, "#scores-foot", width=40) + text_of(app, "#scores-head", width=30)
        for glued in ("0.0900right", "''document", "3margin"):
            assert glued not in narrow.replace("\n", ""), narrow


async def test_a_scores_table_is_drawn_whole_before_the_table_has_had_an_idle_turn(tmp_path: Path) -> None:
    """A DataTable measures auto-width columns only when its queue is idle and caches its cells without their widths:
    a frame painted before that (a busy machine) kept "STS1" for STS16 until the table was filled again. The panel
    sets the widths as it fills the table, so the first frame is whole: drawn here with no await in between."""
    app = make_app(tmp_path, mteb=True)
    async with app.run_test(size=(200, 50)) as pilot:
        await finished(app, pilot)
        table = app.query_one("#scores-table", DataTable)
        assert app.current is not None
        app.query_one("#scores", ScoresPanel).show(app.current)
        lines = [table.render_line(y).text for y in range(3)]
        assert "STS16 " in lines[1] and "cosine_spearman" in lines[1], lines
        assert "Banking77Classification" in lines[2], lines


async def test_scores_panel_shows_the_mteb_task_table(tmp_path: Path) -> None:
    app = make_app(tmp_path, mteb=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await finished(app, pilot)
        await pilot.press("4")
        await pilot.pause(0.3)
        table = app.query_one("#scores-table", DataTable)
        assert table.row_count == 2
        row0 = [str(c) for c in table.get_row_at(0)]
        row1 = [str(c) for c in table.get_row_at(1)]
        assert row0[:3] == ["STS16", "ok", "0.789859"]
        # The task's peak RSS is the largest sample inside its phase, read from the samples shown.
        view = app.current
        assert view is not None
        sts_phase = next(p for p in view.run.phases if p.name == "STS16")
        inside = [s.rss_mib for s in view.samples if sts_phase.start_s <= s.t_ns / 1e9 <= (sts_phase.end_s or 0)]
        assert row0[5] == f"{max(inside):,.3f}"
        assert row1[:2] == ["Banking77Classification", "failed"]
        assert "Banking77Classification failed: ValueError: the classifier could not be fitted" in text_of(app, "#scores-foot")
        # The MTEB phases are bands on the memory chart, named as mteb names them.
        await pilot.press("2")
        await pilot.pause(0.3)
        bands = str(app.query_one(PhaseBands).render())
        assert "Encoding training samples" in bands and "Scoring" in bands


async def test_scores_panel_shows_a_sweep_and_its_fit(tmp_path: Path) -> None:
    app = make_app(tmp_path, sweep=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await finished(app, pilot)
        await pilot.press("4")
        await pilot.pause(0.3)
        table = app.query_one("#scores-table", DataTable)
        assert table.row_count == 3
        assert [str(c) for c in table.get_row_at(2)][:5] == ["lines=100", "ok", "1.1200", "3.50", "budget"]
        assert "280 ms + 8.4 ms a line" in text_of(app, "#scores-head") and "R² 0.998" in text_of(app, "#scores-head")
        # The GFLOP/s figure is an estimate, and says so.
        assert "GFLOP/s (estimate)" in [str(c.label) for c in table.columns.values()]


async def scores_head_of_a_sweep(tmp_path: Path, sweep: Any = True) -> str:
    """The Scores panel's head line after the scripted sweep run."""
    app = make_app(tmp_path, sweep=sweep)
    async with app.run_test(size=(120, 40)) as pilot:
        await finished(app, pilot)
        await pilot.press("4")
        await pilot.pause(0.3)
        return text_of(app, "#scores-head")


async def test_scores_panel_says_when_padding_is_in_the_fixed_cost(tmp_path: Path) -> None:
    fit = fake_engine.SWEEP.fits[0].model_copy(update={"padding_percent_range": (31.0, 74.0)})
    sweep = fake_engine.SWEEP.model_copy(update={"fits": (fit,)})
    assert "part of the fixed cost is padding: 31–74 % of tokens" in await scores_head_of_a_sweep(tmp_path, sweep)


async def test_scores_panel_says_when_nothing_fits(tmp_path: Path) -> None:
    from embprof.engine.results import MemoryPoint

    limit = fake_engine.NO_FIT.model_copy(update={"curve": (MemoryPoint(value=8, peak_rss_mib=950.0, peak_gpu_mib=None,
                                                                         torch_peak_mib=None, status="over-ceiling"),)})
    sweep = fake_engine.SWEEP.model_copy(update={"memory_limit": limit})
    head = await scores_head_of_a_sweep(tmp_path, sweep)
    assert "largest batch that fits: none" in head


async def test_compare_screen_from_two_marked_runs(tmp_path: Path) -> None:
    from embprof.tui.app import CompareScreen

    app = make_app(tmp_path)
    notes = NotificationLog()
    async with app.run_test(size=(160, 50), message_hook=notes.hook) as pilot:
        await finished(app, pilot)
        await until(pilot, lambda: bool(app.current and app.current.snapshot_path))
        first = app.current
        await pilot.press("r")
        await until(pilot, lambda: app.current is not first and bool(app.current and app.current.snapshot_path))
        await pilot.press("c")
        await pilot.pause(0.2)
        assert not isinstance(app.screen, CompareScreen)  # nothing marked yet: a hint, not a screen
        await pilot.press("5")
        await until(pilot, lambda: app.query_one("#runs-table", DataTable).row_count == 2)
        app.query_one("#runs-table", DataTable).focus()
        await pilot.press("m", "down", "m")
        await pilot.pause(0.2)
        assert len(app.marked) == 2, [n.message for n in notes]
        await pilot.press("c")
        await pilot.pause(0.5)
        await until(pilot, lambda: isinstance(app.screen, CompareScreen))
        screen = app.screen
        assert isinstance(screen, CompareScreen)
        titles = [t.title for t in screen.tables]
        assert "Figures side by side (ratios to A)" in titles
        fig = next(t for t in screen.tables if t.name == "compare")
        p50 = next(r for r in fig.rows if r[0] == "encode call p50 s")
        assert p50[2] == p50[1] and p50[3] == 1.0  # the same scripted run twice: ratio 1
        await pilot.press("w")
        await until(pilot, lambda: bool(list((tmp_path / "profiles").glob("compare-*.md"))))
        written = list((tmp_path / "profiles").glob("compare-*.md"))
        assert len(written) == 1 and "Figures side by side" in written[0].read_text(encoding="utf-8")
        assert list((tmp_path / "profiles").glob("compare-*-latency.svg"))
        await pilot.press("escape")


async def test_memory_panel_shows_the_server_process(tmp_path: Path) -> None:
    app = make_app(tmp_path, server=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await finished(app, pilot)
        await pilot.press("2")
        await pilot.pause(0.3)
        view = app.current
        assert view is not None
        peak = max(s.server_rss_mib for s in view.samples if s.server_rss_mib is not None)
        assert f"server peak RSS {peak:,.1f} MiB" in text_of(app, "#memory-peaks")


async def test_form_builds_its_plan_with_plan_from_options(tmp_path: Path) -> None:
    from embprof.engine.errors import UserError
    from embprof.engine.plan import MtebPlan, ServerTarget
    from textual.widgets import Input, Select

    app = make_app(tmp_path, autostart=False)
    async with app.run_test(size=(120, 50)) as pilot:
        await pilot.press("n")
        await pilot.pause(0.2)
        form = app.screen
        assert isinstance(form, RunForm)
        form.query_one("#f-workload", Select).value = "mteb"
        form.query_one("#f-tasks", Input).value = "STS16, JSTS"
        form.query_one("#f-data", Input).value = "/data"
        plan = form.plan()
        assert isinstance(plan.workload, MtebPlan)
        assert plan.workload.tasks == ("STS16", "JSTS") and plan.workload.data_dir == "/data"
        # The form's options, given to the engine's own builder, make the very same plan.
        assert plan == plan_from_options(form.options())
        form.query_one("#f-tasks", Input).value = ""
        with pytest.raises(UserError) as no_task:
            form.plan()
        # The sentence is the engine's, shown in the form as it is.
        await pilot.click("#f-run")
        await pilot.pause(0.2)
        assert str(no_task.value) in text_of(app, "#form-error")
        form.query_one("#f-workload", Select).value = "load"
        with pytest.raises(UserError, match="drives a server"):
            form.plan()
        form.query_one("#f-server", Input).value = "http://user:pw@127.0.0.1:8080"
        form.query_one("#f-api", Select).value = "openai"
        plan = form.plan()
        assert isinstance(plan.target, ServerTarget) and plan.target.api == "openai" and plan.workload.name == "load"
        assert plan.target.display_name == "http://127.0.0.1:8080 (openai)"  # what the screen may show


def test_the_tui_builds_no_run_itself() -> None:
    """Run assembly lives in the engine: the dashboard names no workload or target class, and holds
    no list of workloads or devices of its own (the command line, tui/cli.py, is checked apart)."""
    tui = Path(__file__).resolve().parents[1] / "tui"
    for path in tui.rglob("*.py"):
        if path.name in ("cli.py", "console.py"):
            continue
        text = path.read_text(encoding="utf-8")
        for banned in ("EncodeWorkload", "SweepWorkload", "MtebWorkload", "SentenceTransformerTarget", "HttpTarget(", "parse_axes",
                       "TargetSpec", '"encode", "speed", "similarity"', '"auto", "cpu", "cuda"'):
            assert banned not in text, f"{path.name}: {banned}"


async def test_failure_is_shown_recorded_and_the_app_runs_on(tmp_path: Path) -> None:
    app = make_app(tmp_path, fail_load=True)
    notes = NotificationLog()
    async with app.run_test(size=(100, 30), message_hook=notes.hook) as pilot:
        await finished(app, pilot)
        first = app.current
        assert first is not None and first.state == "failed"
        assert any("could not load model" in n.message for n in notes)
        saved = Path(first.snapshot_path or "")
        from embprof.engine.snapshot import load

        assert load(saved).summary.errors[0].error_kind == "input"  # recorded in the run's snapshot
        app.runner_factory = fake_engine.factory()
        await pilot.press("r")
        await until(pilot, lambda: app.current is not first and app.current is not None and app.current.state == "done")


async def test_stop_keeps_what_was_measured(tmp_path: Path) -> None:
    app = make_app(tmp_path, hold=True)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.current is not None and bool(latency_groups(app)))
        assert app.current is not None and app.current.running
        await pilot.press("s")
        await finished(app, pilot)
        assert app.current.state == "stopped"
        assert latency_groups(app)[0].warmup_s == (fake_engine.WARMUP_MS / 1000,)


async def test_new_run_form_starts_the_chosen_run(tmp_path: Path) -> None:
    app = make_app(tmp_path, autostart=False)
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press("n")
        await pilot.pause()
        assert isinstance(app.screen, RunForm)
        app.screen.query_one("#f-hz").value = "500"  # type: ignore[attr-defined]
        await pilot.click("#f-run")
        await pilot.pause()
        assert "between 1 and 100" in str(app.screen.query_one("#form-error", Static).render())
        app.screen.query_one("#f-hz").value = "20"  # type: ignore[attr-defined]
        app.screen.query_one("#f-batch").value = "8"  # type: ignore[attr-defined]
        await pilot.pause(0.5)  # let the button's press animation end before the next click
        await pilot.click("#f-run")
        await finished(app, pilot)
        assert app.plan.recording.sample_hz == 20 and app.plan.workload.batch_size == 8  # type: ignore[union-attr]
        assert fake_engine.FakeRunner.instances[-1].plan == app.plan


async def test_bad_workload_input_is_refused_with_one_sentence(tmp_path: Path) -> None:
    from embprof.engine.errors import UserError

    def refuse(plan: RunPlan, subscribers: Any) -> Any:
        raise UserError(f"input file '{plan.workload.input}' does not exist")  # type: ignore[union-attr]

    app = make_app(tmp_path, autostart=False)
    app.runner_factory = refuse
    notes = NotificationLog()
    async with app.run_test(size=(100, 30), message_hook=notes.hook) as pilot:
        app.start_run(plan_from_options({"input": str(tmp_path / "missing.txt")}))
        await until(pilot, lambda: any("does not exist" in n.message for n in notes))
        assert app.current is None


async def test_replay_of_a_snapshot_shows_what_was_recorded(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await finished(app, pilot)
        live = app.current
        assert live is not None
        live_stats = text_of(app, "#latency-stats")
        app.open_snapshot(Path(live.snapshot_path or ""))
        await until(pilot, lambda: app.current is not live)
        await pilot.pause(0.3)
        assert app.current is not None and app.current.source == "snapshot"
        assert text_of(app, "#latency-stats") == live_stats
        assert app.current.run.peaks == live.run.peaks


async def test_a_snapshot_that_does_not_parse(tmp_path: Path) -> None:
    bad = tmp_path / "profiles" / "broken.json"
    bad.parent.mkdir(parents=True)
    bad.write_text("{ half a file")
    app = make_app(tmp_path, autostart=False)
    notes = NotificationLog()
    async with app.run_test(size=(100, 30), message_hook=notes.hook) as pilot:
        await pilot.press("o")
        table = app.query_one("#runs-table", DataTable)
        await until(pilot, lambda: table.row_count == 1)
        await pilot.press("enter")
        await until(pilot, lambda: any("not valid JSON" in n.message for n in notes))
        assert app.current is None


async def test_quit_stops_the_run_and_leaves_no_thread(tmp_path: Path) -> None:
    before = {t.ident for t in threading.enumerate()}
    app = make_app(tmp_path, hold=True)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.current is not None and bool(latency_groups(app)))
        await pilot.press("q")
        await pilot.pause(0.5)
    assert fake_engine.FakeRunner.instances[-1].cancelled.is_set()
    # asyncio_N are the test loop's idle executor threads, not the app's.
    leftover = [t for t in threading.enumerate() if t.ident not in before and t.is_alive() and not t.name.startswith("asyncio_")]
    assert not leftover, leftover


async def test_narrow_shows_one_panel_and_wide_shows_all(tmp_path: Path) -> None:
    app = make_app(tmp_path, autostart=False)
    async with app.run_test(size=(80, 24)) as pilot:
        assert not app.screen.has_class("wide")
        shown = [p.id for p in app.query("#panels > Panel") if p.display]
        assert shown == ["latency"]
        await pilot.press("5")
        assert [p.id for p in app.query("#panels > Panel") if p.display] == ["runs"]
    app = make_app(tmp_path, autostart=False)
    async with app.run_test(size=(200, 50)) as pilot:
        assert app.screen.has_class("wide")
        assert len([p for p in app.query("#panels > Panel") if p.display]) == 5


async def test_events_arrive_coalesced_and_in_order(tmp_path: Path) -> None:
    """Hundreds of events reach the UI as a few EventsReady messages, and in the engine's order."""
    from embprof.tui.app import EventsReady

    seen: list[Any] = []
    app = make_app(tmp_path)
    async with app.run_test(size=(100, 30), message_hook=lambda m: seen.append(m) if isinstance(m, EventsReady) else None) as pilot:
        await finished(app, pilot)
    events = fake_engine.scripted_run()
    assert 1 <= len(seen) < len(events)
    assert app.current is not None
    assert [c.seconds for c in app.current.calls if not c.warmup] == [ms / 1000 for ms in fake_engine.CALL_MS]


async def test_export_writes_beside_the_snapshot(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    notes = NotificationLog()
    async with app.run_test(size=(100, 30), message_hook=notes.hook) as pilot:
        await finished(app, pilot)
        await pilot.press("e")
        await pilot.pause()
        await pilot.click("#md")
        snap = Path(app.current.snapshot_path or "")  # type: ignore[union-attr]
        report = snap.with_suffix(".md")
        await until(pilot, lambda: any(str(report) in n.message for n in notes))
        assert report.is_file() and report.read_text().startswith("# embprof profile: encode")
        assert any(str(report) in n.message for n in notes)


async def test_a_redraw_queued_at_exit_is_dropped(tmp_path: Path) -> None:
    """A timer tick or a panel switch's after-refresh can run once the last screen is gone."""
    app = make_app(tmp_path, autostart=False)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
    assert not app.screen_stack
    app.redraw()
    app.on_resize()


async def test_a_tick_while_the_screens_are_taken_down_draws_nothing(tmp_path: Path) -> None:
    """At exit the screens' widgets are removed before the screen stack is emptied; the interval timer
    can fire in between, with the panels still listed but their children gone. The tick here comes at
    the moment the Latency panel, its children already gone, is itself unmounted."""
    app = make_app(tmp_path)
    ticked: list[bool] = []
    panel: list[Widget] = []

    def tick_in_the_window(message: Message) -> None:
        if isinstance(message, Unmount) and panel and not panel[0].children and not ticked:
            assert app.screen_stack  # the window this test is about: the stack still lists the screen
            ticked.append(True)
            app.tick()

    async with app.run_test(size=(160, 45), message_hook=tick_in_the_window) as pilot:
        await finished(app, pilot)
        panel.append(app.query_one("#latency"))
    assert ticked == [True]


async def test_command_palette_offers_the_controls(tmp_path: Path) -> None:
    app = make_app(tmp_path, autostart=False)
    async with app.run_test(size=(100, 30)) as pilot:
        titles = [c.title for c in app.get_system_commands(app.screen)]
        for wanted in ("New run", "Run again", "Stop", "Open snapshot", "Export", "Show Memory"):
            assert wanted in titles
        await pilot.press("question_mark")
        await pilot.pause()
        assert "keys" in str(app.screen.query_one("#help", Static).render())
        await pilot.press("x")
        await pilot.pause()
        assert not app.screen.query("#help")


async def test_unmeasured_tokens_are_na_never_0(tmp_path: Path) -> None:
    """llama.cpp's native API reports no token counts: tokens/s is n/a with its reason, not 0."""
    app = make_app(tmp_path, llama=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await finished(app, pilot)
        stats = text_of(app, "#latency-stats")
        assert "tokens/s n/a (the server reports no token counts)" in stats, stats
        assert "0 tokens/s" not in stats and "padding" not in stats
        assert "items/s" in stats and "words/s" in stats


async def test_mteb_run_latency_is_per_group_and_words_are_na(tmp_path: Path) -> None:
    """An MTEB run's encode calls are of different kinds: a table per group, no pooled p50/CV;
    its words are not counted, so words/s is n/a (never 0)."""
    app = make_app(tmp_path, mteb=True)
    async with app.run_test(size=(160, 40)) as pilot:
        await finished(app, pilot)
        stats = text_of(app, "#latency-stats")
        assert app.current is not None and app.current.run.headline() is None
        for group in ("STS16 › Encoding samples 1", "Banking77Classification › Encoding test samples"):
            assert group in stats, stats
        assert "p50" in stats and "p95" in stats and "CV" not in stats
        assert "words/s n/a (not counted in MTEB runs)" in stats
        assert " 0 words/s" not in stats


async def test_few_calls_are_shown_one_by_one(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await finished(app, pilot)
        calls = text_of(app, "#latency-calls")
        for i, ms in enumerate(fake_engine.CALL_MS, 1):
            assert f"#{i}" in calls and f"{ms:,.1f} ms" in calls
        assert app.query_one("#latency").has_class("-few")


async def test_run_again_reruns_the_plan_on_display(tmp_path: Path) -> None:
    """r runs the plan of the run on display: a snapshot's recorded plan, not the last one started."""
    speed = plan_from_options({"workload": "speed", "loops": 5, "batch_size": 8})
    app = make_app(tmp_path, plan=speed)
    async with app.run_test(size=(120, 40)) as pilot:
        await finished(app, pilot)
        first = app.current
        assert first is not None and first.plan == speed
        app.start_run(RunPlan())
        await until(pilot, lambda: app.current is not first and app.current is not None and app.current.snapshot_path is not None)
        assert fake_engine.FakeRunner.instances[-1].plan == RunPlan()
        app.open_snapshot(Path(first.snapshot_path or ""))
        await until(pilot, lambda: app.current is not None and app.current.source == "snapshot")
        assert app.current.plan == speed  # the plan recorded in the snapshot
        runs = len(fake_engine.FakeRunner.instances)
        await pilot.press("r")
        await until(pilot, lambda: len(fake_engine.FakeRunner.instances) > runs)
        assert fake_engine.FakeRunner.instances[-1].plan == speed
        # The rerun's own view, saved, before the app closes (the snapshot's view is finished too).
        await until(pilot, lambda: app.current is not None and app.current.source == "live" and app.current.snapshot_path is not None)


async def test_run_again_on_a_snapshot_without_a_plan_says_so(tmp_path: Path) -> None:
    from embprof.tui.view import RunView

    app = make_app(tmp_path, autostart=False)
    notes = NotificationLog()
    async with app.run_test(size=(120, 40), message_hook=notes.hook) as pilot:
        view = RunView(key="old", source="snapshot", plan=None, plan_note="migrated from schema 1")
        view.apply_all(fake_engine.scripted_run())
        app.views[view.key] = view
        app.show_view(view)
        runs = len(fake_engine.FakeRunner.instances)
        await pilot.press("r")
        await pilot.pause(0.2)
        assert len(fake_engine.FakeRunner.instances) == runs
        assert any("no plan" in n.message and "migrated from schema 1" in n.message for n in notes)


async def test_large_layout_gives_runs_the_wide_cell_without_scores(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    async with app.run_test(size=(200, 50)) as pilot:
        await finished(app, pilot)
        runs, scores = app.query_one("#runs"), app.query_one("#scores")
        assert runs.size.width > scores.size.width
    app = make_app(tmp_path, similarity=True)
    async with app.run_test(size=(200, 50)) as pilot:
        await finished(app, pilot)
        runs, scores = app.query_one("#runs"), app.query_one("#scores")
        assert scores.size.width > runs.size.width


@pytest.mark.parametrize("fixture, wanted", [
    ("v1-llama-load.json", ("requests/s", "tokens/s n/a (the server reports no token counts)")),
    ("v1-llama-encode.json", ("tokens/s n/a (the server reports no token counts)",)),
])
async def test_an_old_snapshot_opens_with_unmeasured_figures_as_na(tmp_path: Path, fixture: str, wanted: tuple[str, ...]) -> None:
    """A version-1 snapshot (migrated on read) opens off the UI thread; what it did not measure is n/a."""
    import shutil

    folder = tmp_path / "profiles"
    folder.mkdir()
    shutil.copy(Path(__file__).parent / "fixtures" / "v1" / fixture, folder / fixture)
    app = make_app(tmp_path, autostart=False)
    async with app.run_test(size=(120, 40)) as pilot:
        app.open_snapshot(folder / fixture)
        await until(pilot, lambda: app.current is not None)
        await pilot.pause(0.2)
        stats = text_of(app, "#latency-stats")
        for text in wanted:
            assert text in stats, stats
        assert " 0 tokens/s" not in stats


async def test_a_long_session_holds_a_bounded_number_of_runs(tmp_path: Path) -> None:
    """A dashboard left running runs for hours stays flat: past MAX_VIEWS the oldest saved runs are let go
    (each can hold a few MiB of figures) and stay in the Runs list as their snapshots, which open again."""
    from embprof.tui.app import MAX_VIEWS

    app = make_app(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await finished(app, pilot)
        first = app.current
        assert first is not None
        for _ in range(MAX_VIEWS + 3):
            before = app.current
            await pilot.press("r")
            await until(pilot, lambda b=before: app.current is not b and app.current is not None
                        and app.current.snapshot_path is not None, timeout=30)
        await pilot.pause(0.5)
        assert len(app.views) <= MAX_VIEWS
        assert first.key not in app.views
        await until(pilot, lambda: any(str(first.snapshot_path) in str(key.value) for key in app.query_one("#runs-table", DataTable).rows))
        app.open_snapshot(Path(first.snapshot_path or ""))
        await until(pilot, lambda: app.current is not None and app.current.snapshot_path == first.snapshot_path)
        assert len(app.views) <= MAX_VIEWS
