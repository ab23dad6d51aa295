"""Fault suite: text from outside shown as data, on the console and in the dashboard.

Model names, file and folder names, server messages and snapshot fields may hold terminal control
characters (ESC starts a sequence that clears the screen or retitles the window; CR rewrites a line;
U+009B is CSI on some terminals) or Rich/Textual markup ('[/b]', which would otherwise be styled or
refused). Everywhere they are shown they are escaped (``\\x1b``) and never read as markup.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import run_cli_in_process
from embprof.engine.events import Note, RunStarted
from embprof.engine.results import TargetFacts
from embprof.engine.snapshot import build, save
from embprof.engine.text import clean, one_line, printable
from embprof.engine.workload_facts import EncodeFacts
from embprof.tui.console import ConsoleProgress, SafeConsole
from fake_engine import recorded_run
from pilot_helpers import NotificationLog, finished, make_app, plain, until

EVIL = "evil\x1b[2J\x1b]0;owned\x07\r\x9b31m\u202e[/b][bold]name"
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def no_raw_control(text: str) -> None:
    """No control character in what was shown, except the newlines and tabs of the layout itself."""
    found = RAW.findall(text)
    assert not found, [hex(ord(c)) for c in found]


def test_printable_and_one_line() -> None:
    assert printable("a\x1bb\tc\nd\x9b\u202e") == "a\\x1bb\tc\nd\\x9b\\u202e"
    assert one_line("a\nb\tc\rd") == "a\\nb\\tc\\rd"
    assert printable("plain text, ünïcode and 日本語") == "plain text, ünïcode and 日本語"


def test_clean_copies_only_what_changed() -> None:
    quiet = Note(t_ns=1, text="fine", level="info")
    assert clean(quiet) is quiet
    loud = clean(RunStarted(t_ns=0, run_id="r", started_utc="t", target=TargetFacts(model_name=EVIL, backend="http"),
                            workload=EncodeFacts(), sample_hz=10.0, plan=None))
    no_raw_control(loud.target.model_dump_json())
    assert "\\x1b[2J" in loud.target.model_name


def test_the_console_escapes_what_it_prints_and_keeps_its_own_styles() -> None:
    buf = io.StringIO()
    console = SafeConsole(file=buf, force_terminal=True, color_system="standard", width=200)
    progress = ConsoleProgress(console)
    progress(RunStarted(t_ns=0, run_id="r", started_utc="t", target=TargetFacts(model_name=EVIL, backend="sentence-transformers", device="cpu", dtype="float32"),
                        workload=EncodeFacts(), sample_hz=10.0, plan=None))
    progress(Note(t_ns=2, text=f"the server said {EVIL}", level="warning"))
    out = buf.getvalue()
    assert "\\x1b[2J" in out and "\\x07" in out and "\\x9b" in out and "\\r" in out  # shown, not dropped
    assert "\x1b[2J" not in out and "\x07" not in out and "\x9b" not in out and "\r" not in out
    assert "\x1b[33m" in out or "\x1b[1m" in out  # Rich's own styles still reach the terminal
    assert "[/b][bold]name" in out  # markup in data is shown, not applied


@pytest.fixture()
def evil_snapshot(tmp_path: Path) -> Path:
    _, rec = recorded_run()
    path = save(build(rec, {"hostname": EVIL}), tmp_path / "profiles")
    data = json.loads(path.read_text())
    data["target"]["model_name"] = EVIL
    data["events"][0]["target"]["model_name"] = EVIL
    data["events"].insert(-1, {"kind": "note", "t_ns": 10, "text": f"a note from a server: {EVIL}", "level": "warning"})
    evil = path.with_name(f"run-{EVIL.replace('/', '_')}.json")
    evil.write_text(json.dumps(data))
    path.unlink()
    return evil


@pytest.mark.parametrize("command", ["show", "list", "export-md", "export-csv", "compare"])
def test_commands_escape_snapshot_fields_and_file_names(command: str, evil_snapshot: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    args = {"show": ["show", str(evil_snapshot)], "list": ["list", "--profiles-dir", str(evil_snapshot.parent)],
            "export-md": ["export", str(evil_snapshot), "--format", "md"],
            "export-csv": ["export", str(evil_snapshot), "--format", "csv"],
            "compare": ["compare", str(evil_snapshot), str(evil_snapshot)]}[command]
    rc, out, err = run_cli_in_process(args, capsys)
    assert rc == 0, err
    no_raw_control(out)
    no_raw_control(err)
    assert "\\x1b[2J" in out, out[:2000]


def test_an_error_naming_a_hostile_file_is_escaped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run_cli_in_process(["show", str(tmp_path / f"{EVIL}.json")], capsys)
    assert rc == 2
    no_raw_control(err)
    assert err.count("\n") == 1 and "\\x1b[2J" in err


async def test_the_dashboard_shows_hostile_names_as_text(tmp_path: Path, evil_snapshot: Path) -> None:
    """A snapshot whose model, host, note and file name hold control characters and markup: opened,
    listed and notified about, and nothing on screen holds a raw control character (nor crashes on
    the '[/b]' that markup would refuse)."""
    from textual.widgets import DataTable, Static

    profiles = tmp_path / "profiles"
    app = make_app(tmp_path)
    notes = NotificationLog()
    async with app.run_test(size=(160, 50), message_hook=notes.hook) as pilot:
        await finished(app, pilot)
        live = app.current
        app.open_snapshot(evil_snapshot)
        await until(pilot, lambda: app.current is not live and app.current is not None)
        await pilot.pause(0.5)
        app.list_snapshots()
        app.action_show_panel("runs")
        await pilot.pause(0.5)
        app.notify(f"a server said: {EVIL}", title=EVIL)
        await pilot.pause(0.2)
        assert app.current is not None
        assert "\\x1b[2J" in app.current.model_name
        shown: list[str] = []
        for widget in app.screen.query(Static):
            shown.append(plain(widget.render(), 300))
        for table in app.screen.query(DataTable):
            for row in range(table.row_count):
                shown.extend(plain(cell, 300) if not isinstance(cell, str) else cell for cell in table.get_row_at(row))
        shown.extend(n.message + n.title for n in notes)
        everything = "\n".join(shown)
        no_raw_control(everything)
        assert "\\x1b[2J" in everything  # the model's name is there, escaped
        assert evil_snapshot.parent == profiles


def test_clean_walks_nested_data_once() -> None:
    shared: list[Any] = ["\x1b"]
    value = {"a": shared, "b": [shared, shared], "c": ("x", {"\x07": 1})}
    out = clean(value)
    assert out["a"] == ["\\x1b"] and out["b"] == [["\\x1b"], ["\\x1b"]] and out["c"][1] == {"\\x07": 1}
