"""Where the speed text comes from, including a real download from a local HTTP server."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from embprof.engine.errors import UserError
from embprof.engine.speedtext import SPEED_TEXT_SHA256, cache_dir, resolve_speed_text


@pytest.fixture()
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.delenv("EMBPROF_SPEED_TEXT", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("EMBPROF_SPEED_TEXT_URL", "http://127.0.0.1:9/unreachable")
    return tmp_path


@pytest.fixture()
def server(speed_text: Path, tmp_path: Path) -> Iterator[str]:
    root = tmp_path / "www"
    root.mkdir()
    (root / "good.txt").write_bytes(speed_text.read_bytes())
    (root / "bad.txt").write_bytes(speed_text.read_bytes() + b"tampered")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a: object, **kw: object) -> None:
            super().__init__(*a, directory=str(root), **kw)  # type: ignore[arg-type]

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_canonical_text_facts(speed_text: Path) -> None:
    t = resolve_speed_text(str(speed_text))
    assert t.source == "--text" and t.canonical
    assert len(t.paragraphs) == 43 and t.words == 3633  # mteb 1.x's WORDS_IN_UGLY_DUCKLING
    assert hashlib.sha256(speed_text.read_bytes()).hexdigest() == SPEED_TEXT_SHA256


def test_order_explicit_then_env_then_cache(clean_env: Path, speed_text: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = clean_env / "other.txt"
    other.write_text("one two\n\nthree")
    monkeypatch.setenv("EMBPROF_SPEED_TEXT", str(other))
    assert resolve_speed_text(str(speed_text)).source == "--text"
    env = resolve_speed_text(None)
    assert env.source == "EMBPROF_SPEED_TEXT" and not env.canonical and env.paragraphs == ["one two", "three"]
    monkeypatch.delenv("EMBPROF_SPEED_TEXT")
    cached = cache_dir() / "the_ugly_duckling.txt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(speed_text.read_bytes())
    assert resolve_speed_text(None).source == "cache"


def test_offline_without_a_copy_says_how_to_supply_it(clean_env: Path) -> None:
    with pytest.raises(UserError) as err:
        resolve_speed_text(None)
    assert "--text FILE" in str(err.value) and "EMBPROF_SPEED_TEXT" in str(err.value)


def test_download_is_checked_and_cached(clean_env: Path, server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBPROF_SPEED_TEXT_URL", server + "/bad.txt")
    with pytest.raises(UserError, match="sha256"):
        resolve_speed_text(None)
    assert not (cache_dir() / "the_ugly_duckling.txt").exists()
    monkeypatch.setenv("EMBPROF_SPEED_TEXT_URL", server + "/good.txt")
    got = resolve_speed_text(None)
    assert got.source == "download" and got.canonical
    assert resolve_speed_text(None).source == "cache"


def test_a_tampered_cache_is_not_trusted(clean_env: Path, speed_text: Path, server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cached = cache_dir() / "the_ugly_duckling.txt"
    cached.parent.mkdir(parents=True)
    cached.write_text("not the text")
    monkeypatch.setenv("EMBPROF_SPEED_TEXT_URL", server + "/good.txt")
    assert resolve_speed_text(None).source == "download"
    assert cached.read_bytes() == speed_text.read_bytes()
