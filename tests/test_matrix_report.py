"""The matrix's tables, charts, Markdown and HTML page: unmeasured figures are n/a (never 0), outside
strings are escaped, and the page renders in a real browser with no network at all."""

from __future__ import annotations

import html
import io
import re
import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embprof.engine.frontier import frontiers
from embprof.engine.matrix_report import (
    inline_svg,
    matrix_charts,
    matrix_html,
    matrix_markdown,
    matrix_tables,
)
from embprof.engine.matrix.row import Frontier, MatrixRow
from embprof.engine.tables import NA

MIB = 1 << 20
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
NO_RAPL = "RAPL energy counter not readable (permission denied)"
# Runs a script if inserted as markup, makes a request if inserted as an image, and breaks mathtext
# if matplotlib parses it ('\notacommand' is no TeX command).
HOSTILE = '<script>window.__pwned=1</script><img src="x" onerror="window.__pwned=2"> · $\\notacommand$ & co'
HOSTILE_TASK = "<b>Task</b>"


def _rows() -> list[MatrixRow]:
    common: dict[str, Any] = dict(model=MODEL, cost_workload="speed text (43 paragraphs), batch 32", items=32, calls=40,
                                  energy_source="rapl package")
    return [
        MatrixRow(cell_id="c0", order=0, label="all-MiniLM-L6-v2 · torch · float32 · cpu", backend="torch", device="cpu",
                  dtype="float32", reference=True, status="ok",
                  scores={"STSBenchmark": 0.8203, "SciFact": 0.6450}, quality=0.73265,
                  agreement_mean=1.0, agreement_min=1.0, topk_overlap=1.0, top_k=10,
                  import_s=4.2, load_s=2.31, disk_bytes=int(86.7 * MIB), weights_bytes=int(86.7 * MIB),
                  p50_s=0.0412, p95_s=0.0468, items_per_s=776.7, peak_rss_bytes=int(1210 * MIB),
                  energy_j_per_1000=41.2, **common),
        MatrixRow(cell_id="c1", order=1, label="all-MiniLM-L6-v2 · onnx · int8 per-channel · cpu", backend="onnx", device="cpu",
                  quantize="int8", quantize_mode="per-channel", status="ok",
                  scores={"STSBenchmark": 0.8150, "SciFact": 0.6432}, quality=0.7291,
                  agreement_mean=0.9931, agreement_min=0.9712, topk_overlap=0.94, top_k=10,
                  load_s=0.41, export_s=18.4, export_cached=False, disk_bytes=int(22.1 * MIB), weights_bytes=int(22.0 * MIB),
                  p50_s=0.0139, p95_s=0.0161, items_per_s=2302.2, peak_rss_bytes=int(412 * MIB),
                  energy_j_per_1000=14.8, **common),
        MatrixRow(cell_id="c2", order=2, label="all-MiniLM-L6-v2 · torch · float32 · cpu · binary", backend="torch", device="cpu",
                  dtype="float32", precision="binary", status="ok",
                  scores={"STSBenchmark": 0.7702, "SciFact": 0.5922}, quality=0.6812,
                  agreement_why="binary vectors are compared by Hamming distance, not cosine", topk_overlap=0.81, top_k=10,
                  load_s=2.28, disk_bytes=int(86.7 * MIB), weights_bytes=int(86.7 * MIB),
                  p50_s=0.0405, p95_s=0.0472, items_per_s=790.1, peak_rss_bytes=int(1215 * MIB),
                  energy_j_per_1000=40.9, **common),
        MatrixRow(cell_id="c3", order=3, label="all-MiniLM-L6-v2 · openvino · float32 · cpu", backend="openvino", device="cpu",
                  status="ok", scores={"STSBenchmark": 0.8203, "SciFact": 0.6450}, quality=0.73265,
                  agreement_mean=0.99999, agreement_min=0.99997, agrees_1e4=True, topk_overlap=1.0, top_k=10,
                  load_s=0.62, export_s=21.0, export_cached=True, disk_bytes=int(86.9 * MIB), weights_bytes=int(86.7 * MIB),
                  p50_s=0.0201, p95_s=0.0233, items_per_s=1592.0, peak_rss_bytes=int(640 * MIB),
                  energy_j_per_1000=None, energy_why=NO_RAPL, model=MODEL, items=32, calls=40),
        MatrixRow(cell_id="c4", order=4, label="all-MiniLM-L6-v2 · torch · float16 · cuda:0", backend="torch", device="cuda:0",
                  dtype="float16", status="oom", reason="CUDA out of memory at batch 256 (GPU 0 has 7.6 GiB)",
                  load_s=3.1, model=MODEL),
        MatrixRow(cell_id="c5", order=5, label="all-MiniLM-L6-v2 · onnx · int8 per-tensor · cpu", backend="onnx", device="cpu",
                  quantize="int8", quantize_mode="per-tensor", status="failed",
                  reason="onnx export failed: unsupported operator aten::scaled_dot_product_attention", model=MODEL),
        MatrixRow(cell_id="c6", order=6, label=HOSTILE, backend="torch", device="cpu", status="ok",
                  scores={"STSBenchmark": 0.61, "SciFact": 0.40, HOSTILE_TASK: 0.5}, quality=0.5033,
                  agreement_mean=0.91, agreement_min=0.62, topk_overlap=0.55, top_k=10,
                  load_s=1.9, p50_s=0.3, p95_s=0.35, items_per_s=106.7, peak_rss_bytes=int(2900 * MIB),
                  energy_j_per_1000=300.0, **common),
    ]


DROPPED = [("all-MiniLM-L6-v2 · openvino · int8 · cuda:0", "openvino runs on cpu only in this matrix")]
META = {"model": f"<b>{MODEL}</b>", "host": "ci-runner & co", "cells": 7}


def _md_table(md: str, title_start: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the Markdown table under the heading that starts with ``title_start``."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"## {title_start}"))
    body = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        body.append([c.strip() for c in line.strip()[1:-1].split(" | ")])
    return body[0], [r for r in body[2:]]


def test_frontier_of_the_example() -> None:
    fr = {f.axis: f for f in frontiers(_rows())}
    assert fr["p50_s"].cells == ("c1", "c3")  # int8 fastest; openvino float32 as good as the reference, faster
    assert set(fr["p50_s"].considered) == {"c0", "c1", "c2", "c3", "c6"}
    assert fr["energy_j_per_1000"].cells == ("c1", "c0") and "c3" not in fr["energy_j_per_1000"].considered


def test_markdown_says_na_and_never_zero() -> None:
    rows = _rows()
    fr = frontiers(rows)
    md = matrix_markdown("embprof matrix", rows, fr, DROPPED, ["m-frontier-latency.svg"])
    assert md.startswith("# embprof matrix\n") and "![m-frontier-latency.svg](m-frontier-latency.svg)" in md
    header, body = _md_table(md, "Matrix")
    assert header[:5] == ["cell", "status", "quality", "STSBenchmark", "SciFact"] and header[-1] == "frontier"
    by_label = {r[0]: dict(zip(header, r)) for r in body}
    assert len(by_label) == len(rows)
    # Best quality first, unscored cells last.
    assert [r[0] for r in body][-2:] == [rows[4].label, rows[5].label]

    # Every figure the row lacks is n/a; no figure anywhere is drawn as 0.
    fields = {"quality": "quality", "agreement mean": "agreement_mean", "agreement min": "agreement_min",
              "top-k overlap": "topk_overlap", "p50 ms": "p50_s", "p95 ms": "p95_s", "items/s": "items_per_s",
              "peak RSS MiB": "peak_rss_bytes", "load s": "load_s", "export s": "export_s", "disk MiB": "disk_bytes",
              "weights MiB": "weights_bytes", "energy J/1k": "energy_j_per_1000"}
    checked = 0
    for row in rows:
        cells = by_label[row.label]
        for column, field in fields.items():
            if getattr(row, field) is None:
                assert cells[column].startswith("n/a"), (row.label, column, cells[column])
                checked += 1
        for value in cells.values():
            assert not re.fullmatch(r"0+(\.0+)?", value), (row.label, cells)
    assert checked > 30

    openvino, oom, failed, binary = (by_label[rows[i].label] for i in (3, 4, 5, 2))
    assert openvino["energy J/1k"] == f"n/a ({NO_RAPL})"
    assert openvino["export s"] == "21.000 (cached)"
    assert openvino["frontier"] == "latency, memory"
    assert binary["agreement mean"] == "n/a (binary vectors are compared by Hamming distance, not cosine)"
    assert binary["top-k overlap"] == "0.810"
    assert oom["status"] == "oom (CUDA out of memory at batch 256 (GPU 0 has 7.6 GiB))"
    assert oom["load s"] == "3.100" and oom["p50 ms"] == "n/a (oom)" and oom["frontier"] == ""
    assert failed["status"].startswith("failed (onnx export failed") and failed["quality"] == "n/a (failed)"
    assert by_label[rows[0].label]["export s"] == "n/a (not exported)"
    assert by_label[rows[0].label][HOSTILE_TASK] == "n/a (not scored)"
    assert by_label[rows[1].label]["p50 ms"] == "13.900" and by_label[rows[1].label]["peak RSS MiB"] == "412.000"

    _, dropped = _md_table(md, "Dropped")
    assert dropped == [list(DROPPED[0])]
    _, lat = _md_table(md, "Frontier: quality against p50 latency")
    assert [r[0] for r in lat] == [rows[1].label, rows[3].label]


@dataclass(frozen=True)
class Dropped:  # the shape of engine.matrix.Dropped
    label: str
    reason: str


def test_dropped_cells_as_objects_or_pairs() -> None:
    rows = _rows()
    fr = frontiers(rows)
    as_objects = {t.name: t for t in matrix_tables(rows, fr, [Dropped(*DROPPED[0])])}
    as_pairs = {t.name: t for t in matrix_tables(rows, fr, DROPPED)}
    assert as_objects["dropped"].rows == as_pairs["dropped"].rows == [list(DROPPED[0])]


def test_tables_without_energy_say_why() -> None:
    rows = [r.model_copy(update={"energy_j_per_1000": None, "energy_source": None, "energy_why": "no energy counter on this machine"})
            for r in _rows()]
    fr = frontiers(rows)
    tables = {t.name: t for t in matrix_tables(rows, fr)}
    assert "dropped" not in tables
    energy = tables["frontier-energy"]
    assert energy.rows == [[NA("no cell measured energy: no energy counter on this machine"), None, None]]
    page = matrix_html("no energy", rows, fr, [], {})
    assert 'id="chart-energy_j_per_1000"' not in page
    assert "No energy per 1,000 texts chart: no cell measured energy: no energy counter on this machine." in page


def test_html_escapes_outside_strings_and_needs_no_network() -> None:
    rows = _rows()
    page = matrix_html("matrix <i>run</i>", rows, frontiers(rows), DROPPED, META)
    assert "<script" not in page and "onerror=" not in page.replace("onerror=&quot;", "")
    assert html.escape(HOSTILE) in page
    assert html.escape(HOSTILE_TASK) in page and HOSTILE_TASK not in page
    assert "&lt;b&gt;sentence-transformers/all-MiniLM-L6-v2&lt;/b&gt;" in page and "ci-runner &amp; co" in page
    assert "<title>matrix &lt;i&gt;run&lt;/i&gt;</title>" in page
    # Nothing to fetch: no URL at all (matplotlib's namespace and metadata URLs are stripped) and no prolog.
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", page, re.I)
    assert "<?xml" not in page and "<!DOCTYPE svg" not in page and page.count("<!DOCTYPE") == 1
    for axis in ("p50_s", "peak_rss_bytes", "energy_j_per_1000"):
        assert page.count(f'<svg id="chart-{axis}" class="chart"') == 1
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids)), "two charts share an id"


def test_inline_svg_prefixes_references() -> None:
    svg = ('<?xml version="1.0"?>\n<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" "http://www.w3.org/x.dtd">\n'
           '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" width="10pt">'
           '<metadata><rdf:RDF/></metadata><defs><path id="m1" d="M0 0"/><clipPath id="p2"/></defs>'
           '<!-- a &lt;label&gt; --><use xlink:href="#m1"/><g clip-path="url(#p2)"/><use href="#other"/></svg>')
    out = inline_svg(svg, "chart-x", 'a "caption"')
    assert out.startswith('<svg id="chart-x" class="chart" role="img" aria-label="a &quot;caption&quot;" width="10pt">')
    assert 'id="chart-x-m1"' in out and 'xlink:href="#chart-x-m1"' in out and "url(#chart-x-p2)" in out
    assert 'href="#other"' in out  # not an id of this chart: left alone
    assert "http" not in out and "metadata" not in out and "<!--" not in out


def test_charts_written_as_svg_and_png(tmp_path: Path) -> None:
    import matplotlib.image

    rows = _rows()
    fr = frontiers(rows)
    svgs = matrix_charts(rows, fr, tmp_path, "m", "svg")
    assert [p.name for p in svgs] == ["m-frontier-latency.svg", "m-frontier-memory.svg", "m-frontier-energy.svg"]
    for p in svgs:
        ET.fromstring(p.read_bytes())  # well-formed XML
        assert b"<text" not in p.read_bytes()  # text is drawn as paths: no font needed
    pngs = matrix_charts(rows, fr, tmp_path / "png", "m", "png")
    assert len(pngs) == 3
    img = pngs[0].read_bytes()
    pixels = matplotlib.image.imread(io.BytesIO(img), format="png")
    assert pixels.shape[0] > 200 and pixels.shape[1] > 300 and float(np.var(pixels)) > 0
    assert not list(tmp_path.glob(".*.tmp")) and not list((tmp_path / "png").glob(".*.tmp"))  # atomic: no leftovers
    # No cell on any axis: no chart and no file, not an empty plot.
    assert matrix_charts([rows[4], rows[5]], frontiers([rows[4], rows[5]]), tmp_path / "none", "m", "svg") == []


def test_svg_is_the_same_for_the_same_figures(tmp_path: Path) -> None:
    rows = _rows()
    a = matrix_charts(rows, frontiers(rows), tmp_path / "a", "m", "svg")[0].read_bytes()
    b = matrix_charts(rows, frontiers(rows), tmp_path / "b", "m", "svg")[0].read_bytes()
    assert a == b


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


@pytest.mark.slow
def test_html_renders_offline_in_a_browser(tmp_path: Path) -> None:
    exe = _chromium()
    if exe is None:
        pytest.skip("no chromium executable on PATH or at /usr/bin/chromium (make tools installs Debian's chromium)")
    from playwright.sync_api import Route, sync_playwright

    import matplotlib.image

    rows = _rows()
    fr = frontiers(rows)
    page_file = tmp_path / "matrix.html"
    page_file.write_text(matrix_html("embprof matrix", rows, fr, DROPPED, META), encoding="utf-8")
    url = page_file.as_uri()
    requests: list[str] = []
    errors: list[str] = []

    def route(r: Route) -> None:
        if r.request.url == url:
            r.continue_()
        else:  # the page must need nothing else: record it and refuse it
            requests.append(r.request.url)
            r.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.route("**/*", route)
            page.on("request", lambda req: requests.append(req.url) if req.url != url else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url, wait_until="load")
            charts = page.evaluate(
                """() => [...document.querySelectorAll('svg.chart')].map(svg => {
                    const box = svg.getBoundingClientRect();
                    const count = (suffix) => {
                        const g = svg.querySelector(`[id="${svg.id}-${suffix}"]`);
                        return g ? g.querySelectorAll('path, use').length : -1;
                    };
                    return {id: svg.id, width: box.width, height: box.height, cells: count('cells'),
                            frontier: count('frontier'), line: count('frontier-line'),
                            drawn: svg.querySelectorAll('path, use').length};
                })"""
            )
            tables = page.evaluate(
                """() => [...document.querySelectorAll('table')].map(t => {
                    const box = t.getBoundingClientRect();
                    return {rows: t.rows.length, width: box.width, height: box.height, visible: t.checkVisibility()};
                })"""
            )
            pwned = page.evaluate("() => typeof window.__pwned")
            text = page.evaluate("() => document.body.innerText")
            shot = page.screenshot(full_page=True)
        finally:
            browser.close()

    assert requests == [] and errors == []
    assert pwned == "undefined"
    assert HOSTILE.split(" · ")[0] in text  # the label is shown as text
    by_id = {c["id"]: c for c in charts}
    assert set(by_id) == {"chart-p50_s", "chart-peak_rss_bytes", "chart-energy_j_per_1000"}
    fronts: dict[str, Frontier] = {f.axis: f for f in fr}
    for axis, c in by_id.items():
        f = fronts[axis.removeprefix("chart-")]
        assert c["width"] > 100 and c["height"] > 100, c
        assert c["cells"] >= len(f.considered), c  # one marker per ok cell with both figures
        assert c["frontier"] >= len(f.cells) and c["line"] >= 1, c
        assert c["drawn"] > len(f.considered), c
    # The meta table, the matrix, dropped cells and three frontier tables, all laid out and visible.
    assert len(tables) == 6
    for t in tables:
        assert t["visible"] and t["width"] > 50 and t["height"] > 10 and t["rows"] >= 2, t
    pixels = matplotlib.image.imread(io.BytesIO(shot), format="png")
    assert pixels.shape[0] > 900 and float(np.var(pixels)) > 0
