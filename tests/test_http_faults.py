"""An embedding server that fails on purpose: every fault is counted and shown, the run goes on or
stops as --max-errors says, what was measured is kept, and no secret is ever written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import fault_server
from embprof.engine.events import RequestTimed
from embprof.engine.snapshot import Snapshot
from cli_helpers import run_cli, snapshot_from

pytestmark = pytest.mark.slow


def requests_of(snap: Snapshot) -> list[RequestTimed]:
    return [e for e in snap.events if isinstance(e, RequestTimed)]


def test_connection_refused_and_dns_get_one_sentence(cli_env: dict[str, str]) -> None:
    from llama_server import free_port

    rc, out, err, _ = run_cli(["run", "encode", "--server", f"http://127.0.0.1:{free_port()}"], cli_env)
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert "connection refused (is the server running?)" in err, err
    rc, out, err, _ = run_cli(["run", "encode", "--server", "http://no-such-host.invalid:8080"], cli_env)
    assert rc == 2 and err.count("\n") == 1 and "cannot connect to http://no-such-host.invalid:8080" in err, err


def test_http_500_stops_the_run_and_keeps_what_was_measured(cli_env: dict[str, str], server: Any) -> None:
    url = server("500", ok_first=3)
    rc, out, err, _ = run_cli(["run", "encode", "--server", url, "--batch-size", "8"], cli_env)
    assert rc == 1, err
    _, snap = snapshot_from(out)
    assert snap.status == "failed"
    reqs = requests_of(snap)
    assert [r.error_kind for r in reqs] == ["", "", "", "http 500"]
    assert reqs[-1].status == 500 and "boom" in reqs[-1].error
    assert "request failed (http 500)" in snap.summary.errors[-1].message


def test_max_errors_lets_the_run_go_on(cli_env: dict[str, str], server: Any) -> None:
    url = server("500", every=3)
    rc, out, err, _ = run_cli(["run", "encode", "--server", url, "--batch-size", "8", "--max-errors", "20"], cli_env)
    assert rc == 0, err
    _, snap = snapshot_from(out)
    reqs = requests_of(snap)
    failed = [r for r in reqs if r.error_kind]
    assert failed and all(r.error_kind == "http 500" for r in failed)
    assert len(failed) == len(reqs) // 3
    assert snap.summary.results["requests"].errors_by_kind == {"http 500": len(failed)}
    assert f"http 500 {len(failed)}" in out


@pytest.mark.parametrize(
    "mode, kind, text",
    [
        ("slow", "timeout", ""),
        ("drop", "connection", ""),
        ("notjson", "bad body", "not JSON"),
        ("badshape", "bad shape", "no 'data' list"),
        ("toolarge", "too large", "-b and -ub"),
    ],
)
def test_each_fault_is_named(cli_env: dict[str, str], server: Any, mode: str, kind: str, text: str) -> None:
    url = server(mode, ok_first=1, slow_s=2.0)
    api = ["--api", "openai"] if mode == "badshape" else []
    rc, out, err, _ = run_cli(["run", "encode", "--server", url, *api, "--timeout", "0.5", "--batch-size", "16"], cli_env)
    assert rc == 1, err
    _, snap = snapshot_from(out)
    last = requests_of(snap)[-1]
    assert last.error_kind == kind and text in last.error, (last.error_kind, last.error)
    assert kind in snap.summary.errors[-1].message


def test_server_dying_under_load_is_counted_and_kept(cli_env: dict[str, str], server: Any) -> None:
    url = server("die", ok_first=40)
    rc, out, err, _ = run_cli(["run", "load", "--server", url, "--requests", "200", "--concurrency", "2", "--max-errors", "5"], cli_env)
    assert rc == 1, err
    _, snap = snapshot_from(out)
    load_reqs = [r for r in requests_of(snap) if not r.warmup]
    ok = [r for r in load_reqs if not r.error_kind]
    assert len(ok) >= 38
    assert {r.error_kind for r in load_reqs if r.error_kind} == {"connection"}
    assert "more than --max-errors 5" in snap.summary.errors[-1].message


def test_secrets_are_sent_and_never_written(cli_env: dict[str, str], server: Any, tmp_path: Path) -> None:
    url = server("ok")
    with_creds = url.replace("http://", "http://alice:hunter2secret@")
    env = dict(cli_env, EMBPROF_TEST_KEY="sk-verysecret-123")
    rc, out, err, _ = run_cli(["run", "encode", "--server", with_creds, "--api", "openai", "--api-key-env", "EMBPROF_TEST_KEY"], env)
    assert rc == 0, err
    path, snap = snapshot_from(out)
    # The server saw them …
    assert "Bearer sk-verysecret-123" in fault_server.STATE.auth
    rc, out2, err2, _ = run_cli(["run", "encode", "--server", with_creds], cli_env)
    assert rc == 0, err2
    import base64

    assert "Basic " + base64.b64encode(b"alice:hunter2secret").decode() in fault_server.STATE.auth
    # … nothing written did: the snapshot, the summary, the progress lines, an export.
    rc2, md, _, _ = run_cli(["export", str(path), "--format", "md"], env)
    path2, _ = snapshot_from(out2)
    for text in (path.read_text(encoding="utf-8"), out, err, md, path2.read_text(encoding="utf-8"), out2, err2):
        assert "sk-verysecret-123" not in text and "hunter2secret" not in text and "alice" not in text
    assert snap.target.url == url and snap.target.api_key_env == "EMBPROF_TEST_KEY"


def test_prompts_are_applied_client_side(cli_env: dict[str, str], server: Any, tiny_gemma: Path) -> None:
    url = server("ok")
    rc, out, err, _ = run_cli(["run", "encode", "--server", url, "--api", "llama", "--prompts-from", str(tiny_gemma), "--as", "query",
                               "--repeats", "1"], cli_env)
    assert rc == 0, err
    sent = [t for b in fault_server.STATE.bodies if isinstance(b.get("content"), list) for t in b["content"]]
    assert sent and all(t.startswith("task: search result | query: ") for t in sent)
    _, snap = snapshot_from(out)
    assert snap.summary.results["encode"].prompt_used == "task: search result | query: "
    rc, out, err, _ = run_cli(["run", "encode", "--server", url, "--prompts-from", str(tiny_gemma), "--prompt-name", "Nope"], cli_env)
    assert rc == 2 and "unknown prompt name 'Nope'" in err


def test_missing_key_variable_and_bad_url(cli_env: dict[str, str]) -> None:
    rc, out, err, _ = run_cli(["run", "encode", "--server", "http://127.0.0.1:9", "--api-key-env", "EMBPROF_NOT_SET_ANYWHERE"], cli_env)
    assert rc == 2 and "EMBPROF_NOT_SET_ANYWHERE, but that environment variable is not set" in err
    rc, out, err, _ = run_cli(["run", "encode", "--server", "ftp://x"], cli_env)
    assert rc == 2 and "takes an http:// or https:// URL" in err
    rc, out, err, _ = run_cli(["run", "load"], cli_env)
    assert rc == 2 and "give --server URL" in err
