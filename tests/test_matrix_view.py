"""The Matrix view against a fake runner: hand-built rows arrive cell by cell, no model, no processes.

Each step of the fake run waits on the test (a gate), so the test sees every intermediate state of
the table (pending, running, figures) without timing assumptions: no fixed pauses, no races.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pilot_helpers import plain, until
from embprof.engine.errors import UserError
from embprof.engine.frontier import frontiers
from embprof.engine.matrix import Manifest, MatrixEvent, MatrixInterrupted, MatrixListener, MatrixSpec, expand
from embprof.engine.matrix_report import AXIS_VIEW
from embprof.engine.matrix.row import MatrixRow
from embprof.tui.matrix_app import COLUMNS, PHASE_MAX, MatrixApp, MatrixChart
from rich.text import Text
from textual.widgets import DataTable, Log, Static

HOSTILE = "[bold]x[/bold] <script>"
SPEC = MatrixSpec(precisions=("float32", "int8", "binary"))
NO_ENERGY = "no energy counter"


def rows_for(folder: Path) -> list[MatrixRow]:
    """The three cells of SPEC, as their snapshots would give them: a reference, int8 and binary vectors."""
    cells = expand(SPEC, folder).cells
    assert [c.reference for c in cells] == [True, False, False]
    common: dict[str, Any] = dict(model="sentence-transformers/all-MiniLM-L6-v2", backend="torch", device="cpu", dtype="float32",
                                  status="ok", energy_why=NO_ENERGY, top_k=3, scores={"STS16": 0.8, "JSTS": 0.7})
    return [
        MatrixRow(cell_id=cells[0].cell_id, label=cells[0].label, order=0, reference=True, quality=0.80, agreement_mean=1.0,
                  topk_overlap=1.0, p50_s=0.040, items_per_s=800.0, peak_rss_bytes=900 << 20, load_s=2.0, **common),
        # int8 vectors: as good as the reference nearly, and cheaper in latency: on the frontier.
        MatrixRow(cell_id=cells[1].cell_id, label=cells[1].label, order=1, precision="int8", quality=0.79, agreement_mean=0.99,
                  topk_overlap=0.9, p50_s=0.030, items_per_s=1000.0, peak_rss_bytes=950 << 20, load_s=None, **common),
        # binary: better and faster than int8, which it pushes off the latency frontier; no agreement
        # figure, and a hostile label.
        MatrixRow(cell_id=cells[2].cell_id, label=HOSTILE, order=2, precision="binary", quality=0.795, agreement_mean=None,
                  agreement_why="binary vectors are compared by Hamming distance", topk_overlap=0.7, p50_s=0.025,
                  items_per_s=None, peak_rss_bytes=None, load_s=1.5, **common),
    ]


class SteppedMatrixRunner:
    """A fake ``run_matrix``: emits one step each time the test opens the gate."""

    def __init__(self, rows: list[MatrixRow]) -> None:
        self.rows = rows
        self.gate = threading.Semaphore(0)
        self.emitted = 0
        self.calls: list[dict[str, Any]] = []

    def step(self) -> None:
        self.gate.release()

    def __call__(self, spec: MatrixSpec, folder: Path, listener: MatrixListener, *, retry_failed: bool = False,
                 cancel: Callable[[], bool] = lambda: False) -> Manifest:
        self.calls.append({"retry_failed": retry_failed})
        total = len(self.rows)

        def emit(event: MatrixEvent) -> None:
            assert self.gate.acquire(timeout=15), "the test never opened the gate"
            listener(event)
            self.emitted += 1

        emit(MatrixEvent("note", label=HOSTILE, text="dropped: torch has no int8 weights"))
        for i, row in enumerate(self.rows, 1):
            label = row.label
            emit(MatrixEvent("start", row.cell_id, label, i, total))
            emit(MatrixEvent("phase", row.cell_id, label, i, total, f"encode {HOSTILE}"))
            emit(MatrixEvent("end", row.cell_id, label, i, total, row=row))
        return Manifest(spec, [], [], [], {})


def table_text(app: MatrixApp, cid: str, column: str) -> str:
    value = app.query_one("#matrix-table", DataTable).get_cell(cid, column)
    assert isinstance(value, Text), f"{column} holds {type(value).__name__}, not Text: strings in a DataTable are markup"
    return value.plain


def status_line(app: MatrixApp) -> str:
    return plain(app.query_one("#matrix-status", Static).content).rstrip("\n")


async def test_the_table_and_chart_fill_in_cell_by_cell(tmp_path: Path) -> None:
    rows = rows_for(tmp_path)
    runner = SteppedMatrixRunner(rows)
    app = MatrixApp(SPEC, tmp_path, retry_failed=True, runner=runner)
    async with app.run_test(size=(160, 48)) as pilot:
        table = app.query_one("#matrix-table", DataTable)
        await until(pilot, lambda: table.row_count == 3)
        ids = [r.cell_id for r in rows]
        assert [str(k.value) for k in table.rows] == ids
        assert all(table_text(app, cid, "status") == "pending" for cid in ids)
        assert all(table_text(app, cid, "quality") == "" for cid in ids)
        assert status_line(app).startswith("0/3 cells")
        chart = app.query_one(MatrixChart)
        assert chart.points == [] and chart.why  # nothing to plot yet: a sentence, not an empty plot

        # The dropped combination's note, its label shown as written (not as markup).
        runner.step()
        log = app.query_one("#matrix-log", Log)
        await until(pilot, lambda: runner.emitted == 1 and len(log.lines) == 1)
        assert log.lines[0] == f"{HOSTILE}: dropped: torch has no int8 weights"

        for n, row in enumerate(rows):
            cid = row.cell_id
            runner.step()
            await until(pilot, lambda: table_text(app, cid, "status") == "running")  # noqa: B023 - awaited here
            assert f"{n}/3 cells · running: {row.label}" in status_line(app)
            runner.step()
            await until(pilot, lambda: table_text(app, cid, "status").startswith("running · "))  # noqa: B023
            # The phase as written (a long one cut to fit the column; the status line has it whole).
            assert table_text(app, cid, "status") == f"running · encode {HOSTILE}"[: len("running · ") + PHASE_MAX - 1] + "…"
            assert status_line(app) == f"{n}/3 cells · running: {row.label} · encode {HOSTILE}"
            # The cells after it wait their turn.
            assert all(table_text(app, later.cell_id, "status") == "pending" for later in rows[n + 1:])
            runner.step()
            await until(pilot, lambda: table_text(app, cid, "status") == "ok")  # noqa: B023
            assert status_line(app).startswith(f"{n + 1}/3 cells")
            # The frontier column marks exactly the cells frontiers() puts on a frontier, by axis.
            expected = frontiers(rows[: n + 1])
            for done in rows[: n + 1]:
                axes = [AXIS_VIEW[f.axis][0] for f in expected if done.cell_id in f.cells]
                assert table_text(app, done.cell_id, "frontier") == ", ".join(axes)

        await until(pilot, lambda: app.outcome is not None)
        assert app.exit_code() == 0 and runner.calls == [{"retry_failed": True}]
        assert status_line(app).startswith("3/3 cells · finished: 3 ok, 0 not ok")

        ref, int8, binary = (r.cell_id for r in rows)
        assert table_text(app, ref, "cell") == f"{rows[0].label} (reference)"
        assert table_text(app, binary, "cell") == HOSTILE  # the runner's label, literally
        assert table_text(app, ref, "quality") == "0.800"
        assert table_text(app, ref, "agreement mean") == "1.00000"
        assert table_text(app, ref, "p50 ms") == "40.00"
        assert table_text(app, int8, "items/s") == "1,000.0"
        assert table_text(app, ref, "peak RSS MiB") == "900.0"
        # Unmeasured figures are n/a, never 0.
        assert table_text(app, int8, "load s") == "n/a"
        for column in ("agreement mean", "items/s", "peak RSS MiB"):
            assert table_text(app, binary, column) == "n/a"
        for cid in (ref, int8, binary):
            assert table_text(app, cid, "energy J/1k") == "n/a"
        # int8 was on the latency frontier until binary, better and faster, arrived: its mark went.
        latency = next(f for f in frontiers(rows) if f.axis == "p50_s")
        assert latency.cells == (binary, ref)
        assert table_text(app, binary, "frontier") == "latency"
        assert table_text(app, int8, "frontier") == ""

        # What is on screen: the hostile label printed as is, nowhere read as markup.
        lines = [table.render_line(y).text for y in range(table.size.height)]
        assert any(HOSTILE in line for line in lines), lines

        # The chart: p50 in ms against quality, the frontier cells marked apart from the rest.
        assert chart.axis == "p50_s" and chart.why is None
        assert sorted(chart.points) == sorted((r.cell_id, r.p50_s * 1e3, r.quality) for r in rows if r.p50_s is not None)
        assert chart.frontier == list(latency.cells)
        assert app.query_one("#matrix-plot").display and not app.query_one("#matrix-why").display

        # Energy: no cell measured it, so the chart gives the reason instead of an empty plot.
        await pilot.press("e")
        await until(pilot, lambda: chart.axis == "energy_j_per_1000")
        assert chart.points == [] and chart.why is not None and NO_ENERGY in chart.why
        assert NO_ENERGY in plain(app.query_one("#matrix-why", Static).content)
        assert app.query_one("#matrix-why").display and not app.query_one("#matrix-plot").display
        await pilot.press("a")  # on round to the first axis again
        await until(pilot, lambda: chart.axis == "p50_s")
        assert chart.why is None and chart.points

        # Finished: q quits at once, with the run's code.
        await pilot.press("q")
    assert app.return_value == 0


def test_the_table_has_the_consoles_columns() -> None:
    from embprof.tui.matrix_tables import CONSOLE_COLUMNS

    assert set(COLUMNS) <= set(CONSOLE_COLUMNS)


class SlowRunner:
    """A fake ``run_matrix`` whose cells take a while and that honours ``cancel`` between cells, as the
    real one does. Its first cell runs until the test has seen the stop requested, so the order of
    events never depends on the machine's speed."""

    def __init__(self, rows: list[MatrixRow]) -> None:
        self.rows = rows
        self.started = threading.Event()
        self.release = threading.Event()
        self.saw_cancel = False
        self.finished = 0

    def __call__(self, spec: MatrixSpec, folder: Path, listener: MatrixListener, *, retry_failed: bool = False,
                 cancel: Callable[[], bool] = lambda: False) -> Manifest:
        total = len(self.rows)
        for i, row in enumerate(self.rows, 1):
            if cancel():
                self.saw_cancel = True
                raise MatrixInterrupted()
            listener(MatrixEvent("start", row.cell_id, row.label, i, total))
            listener(MatrixEvent("phase", row.cell_id, row.label, i, total, "encode"))
            self.started.set()
            self.release.wait(10)  # the cell's process at work: q arrives meanwhile
            listener(MatrixEvent("end", row.cell_id, row.label, i, total, row=row))
            self.finished += 1
        return Manifest(spec, [], [], [], {})


@pytest.mark.parametrize("key", ["q", "ctrl+c"])
async def test_q_stops_after_the_running_cell_and_exits_130(tmp_path: Path, key: str) -> None:
    rows = rows_for(tmp_path)
    runner = SlowRunner(rows)
    app = MatrixApp(SPEC, tmp_path, runner=runner)
    async with app.run_test(size=(160, 48)) as pilot:
        await until(pilot, runner.started.is_set)
        await until(pilot, lambda: "running: " in status_line(app))
        await pilot.press(key)
        assert app.stop_requested
        assert "stopping after this cell" in status_line(app)
        assert app.return_value is None  # the cell that runs is not abandoned: the app waits for it
        runner.release.set()
        # The cell ends, the runner raises MatrixInterrupted before the next one, and the app exits.
        await until(pilot, lambda: app.return_value is not None)
    assert runner.saw_cancel and runner.finished == 1
    assert app.outcome is not None and app.outcome.kind == "stopped"
    assert app.done[rows[0].cell_id].status == "ok"  # the finished cell is shown (and kept by run_matrix)
    assert app.return_value == 130


async def test_input_the_matrix_cannot_run_is_one_sentence_and_exits_1(tmp_path: Path) -> None:
    def refusing(spec: MatrixSpec, folder: Path, listener: MatrixListener, *, retry_failed: bool = False,
                 cancel: Callable[[], bool] = lambda: False) -> Manifest:
        raise UserError(f"the speed text is absent: {HOSTILE}")

    app = MatrixApp(SPEC, tmp_path, runner=refusing)
    async with app.run_test(size=(160, 48)) as pilot:
        await until(pilot, lambda: app.outcome is not None)
        assert f"cannot run: the speed text is absent: {HOSTILE}" in status_line(app)
        assert app.query_one("#matrix-log", Log).lines[-1] == f"cannot run: the speed text is absent: {HOSTILE}"
        table = app.query_one("#matrix-table", DataTable)
        assert table.row_count == 3 and all(table_text(app, str(k.value), "status") == "pending" for k in table.rows)
        await pilot.press("q")
    assert app.return_value == 1


class ClusterRunner:
    """What `--ray` reports of a cell: queued on the cluster, started on a host (a retry says so), done."""

    def __init__(self, rows: list[MatrixRow]) -> None:
        self.rows = rows

    def __call__(self, spec: MatrixSpec, folder: Path, listener: MatrixListener, *, retry_failed: bool = False,
                 cancel: Callable[[], bool] = lambda: False) -> Manifest:
        total = len(self.rows)
        for i, row in enumerate(self.rows, 1):
            listener(MatrixEvent("queued", row.cell_id, row.label, i, total, "queued on the cluster"))
        first = self.rows[0]
        listener(MatrixEvent("start", first.cell_id, first.label, 1, total, f"on {HOSTILE} (attempt 2: retried)"))
        return Manifest(spec, [], [], [], {})


async def test_cells_on_a_cluster_show_queued_then_where_they_run(tmp_path: Path) -> None:
    rows = rows_for(tmp_path)
    app = MatrixApp(SPEC, tmp_path, retry_failed=True, runner=ClusterRunner(rows))
    async with app.run_test(size=(160, 48)) as pilot:
        first, rest = rows[0].cell_id, [r.cell_id for r in rows[1:]]
        await until(pilot, lambda: table_text(app, first, "status").startswith("running"))
        # The host, as a cluster names it, is data: shown as written, never read as markup.
        assert table_text(app, first, "status").startswith(f"running on {HOSTILE}"[: len("running ") + PHASE_MAX - 1])
        assert all(table_text(app, cid, "status") == "queued" for cid in rest)
