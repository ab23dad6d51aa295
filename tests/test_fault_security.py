"""Fault suite: secrets, and files that could run code.

- A planted API key (an environment variable named by --api-key-env) and a URL's user:password@ are
  sent to the server and reach no output: every file under the test's folders (snapshots, exports in
  every format, a matrix's manifest, cells and reports, caches) and every line on stdout and stderr,
  including the error messages of a server that refuses, cannot be reached or answers 401 — and
  nothing in the dashboard's screen.
- A server that quotes the credentials back (the Authorization header in a 400/401/500 message or
  reason phrase, in a 200 answer that is not JSON, in a broken status line, in its model's name or
  llama.cpp's /props) has them, and the basic-auth token they make, replaced by *** before they
  reach stdout, stderr or the snapshot.
- An API key that no HTTP header can carry (a line end, another control character, a surrounding
  space, a character beyond ASCII) is refused in one sentence that names its variable, not the key.
- Reading a snapshot, a plan, a matrix file or a reference file never runs anything: the engine
  holds no eval/exec/pickle/unsafe YAML (checked in its source), a YAML tag is refused, an object
  array in a reference file is refused unopened.
- A model folder with its own code is refused without --trust-remote-code (its code never runs);
  the flag is off unless given, and each snapshot records whether it was on.
"""

from __future__ import annotations

import ast
import base64
import json
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import fault_server
import numpy as np
import pytest
from cli_helpers import run_cli, snapshot_from
from conftest import REPO
from embprof.engine.errors import UserError
from embprof.engine.plan import ServerTarget
from embprof.engine.targets.http import HttpTarget, ServerFault
from embprof.engine.trivial_server import TrivialEmbeddingServer, TrivialHandler
from pilot_helpers import NotificationLog, plain, until

KEY = "sk-planted-7f3a9c2e51"
PASSWORD = "pw-planted-0d8b6e4a"
USER = "user-planted"
SECRETS = (KEY, PASSWORD, USER)


def creds(url: str) -> str:
    return url.replace("http://", f"http://{USER}:{PASSWORD}@")


class Leak:
    """Every output of the commands run, and every file they could have written."""

    def __init__(self) -> None:
        self.outputs: list[tuple[str, str]] = []
        self._lock = threading.Lock()  # commands may run side by side (each is its own process)

    def run(self, args: list[str], env: dict[str, str], expect: int | None = 0) -> tuple[int, str, str]:
        rc, out, err, _ = run_cli(args, env, timeout=600)
        with self._lock:
            self.outputs += [(f"stdout of {args[:2]}", out), (f"stderr of {args[:2]}", err)]
        if expect is not None:
            assert rc == expect, (args, rc, err[-2000:])
        assert "Traceback" not in err
        return rc, out, err

    def check(self, *folders: Path, secrets: tuple[str, ...] = SECRETS) -> int:
        files = 0
        for folder in folders:
            for path in folder.rglob("*"):
                if path.is_file():
                    files += 1
                    self.outputs.append((str(path), path.read_bytes().decode("utf-8", "replace")))
        for where, text in self.outputs:
            for secret in secrets:
                assert secret not in text, f"{secret} leaked into {where}"
        return files


@pytest.fixture()
def server() -> Iterator[TrivialEmbeddingServer]:
    with TrivialEmbeddingServer() as s:
        yield s


@pytest.mark.slow
def test_a_planted_secret_reaches_no_output(cli_env: dict[str, str], server: TrivialEmbeddingServer, tmp_path: Path,
                                            speed_text: Path) -> None:
    env = dict(cli_env, EMBPROF_TEST_KEY=KEY, EMBPROF_SPEED_TEXT=str(speed_text))
    url = creds(server.url)
    key = ["--api-key-env", "EMBPROF_TEST_KEY"]
    leak = Leak()
    _, out, _ = leak.run(["run", "encode", "--server", url, "--api", "openai", *key], env)
    encode, _ = snapshot_from(out)
    _, out, _ = leak.run(["run", "load", "--server", url, "--api", "openai", *key, "--requests", "30", "--concurrency", "2"], env)
    load, _ = snapshot_from(out)
    exports = tmp_path / "exports"
    matrix = tmp_path / "matrix"
    data = str(Path(speed_text).parent.parent)
    spec = tmp_path / "matrix.toml"  # a server's key variable is a field of the matrix file
    spec.write_text(f'tasks = []\ndata_dir = {data!r}\nloops = 2\n\n'
                    f'[[server]]\nurl = {url!r}\napi = "openai"\napi_key_env = "EMBPROF_TEST_KEY"\n')

    def the_matrix() -> None:  # its commands in order: each reads what the one before wrote
        leak.run(["matrix", "--spec", str(spec), "-o", str(matrix)], env)
        leak.run(["matrix", "--spec", str(spec), "-o", str(matrix), "--print-spec"], env)
        for fmt in ("md", "html", "csv", "json"):
            leak.run(["export", str(matrix), "--format", fmt, "-o", str(exports / f"matrix.{fmt}")], env)

    def refused_by_the_server() -> None:
        with TrivialEmbeddingServer(_Refusing) as refusing:
            leak.run(["run", "encode", "--server", creds(refusing.url), "--api", "openai", *key], env, expect=2)

    # Failures quote the URL they could not use: without its credentials.
    closed = creds(f"http://127.0.0.1:{_closed_port()}")
    readers = [["run", "encode", "--server", url, "--api", "openai", *key, "--print-plan"], ["show", str(encode)],
               *[["export", str(load), "--format", fmt, "-o", str(exports / f"load.{fmt}")] for fmt in ("md", "csv", "json")],
               *[["compare", str(encode), str(load), "--format", fmt, "-o", str(exports / f"compare.{fmt}")] for fmt in ("md", "csv", "json")],
               ["compare", str(encode), str(load)], ["rerun", str(load), "--print-plan"], ["list"],
               ["matrix", "--server", url, "--api", "openai", "-o", str(tmp_path / "m2"), "--list-cells"]]
    # Two at a time: each command is a process of its own that reads or writes only its own files, and the
    # checks below read every output and file whatever the order.
    with ThreadPoolExecutor(max_workers=2) as pool:
        jobs = [pool.submit(the_matrix), pool.submit(refused_by_the_server),
                pool.submit(leak.run, ["run", "encode", "--server", closed, "--api", "openai", *key], env, 2),
                *[pool.submit(leak.run, args, env) for args in readers]]
        for job in jobs:
            job.result()
    files = leak.check(Path(env["EMBPROF_PROFILES_DIR"]), exports, matrix, Path(env["XDG_CACHE_HOME"]))
    assert files >= 20  # the grep saw the snapshots, exports and the matrix's files, not an empty folder


class _Refusing(TrivialHandler):
    """A server that refuses every credential (HTTP 401) and quotes them back in its message."""

    def do_GET(self) -> None:
        self._refuse()

    def do_POST(self) -> None:
        self._refuse()

    def _refuse(self) -> None:
        body = json.dumps({"error": {"message": "bad key; not " + self.headers.get("Authorization", "")}}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_the_dashboard_shows_no_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real engine against a local server, in the dashboard: the screen, the notifications and the
    snapshot it saves hold neither the key nor the URL's credentials."""
    from embprof.engine.plan import plan_from_options
    from embprof.tui.app import EmbprofApp
    from textual.widgets import DataTable, Static

    monkeypatch.setenv("EMBPROF_TEST_KEY", KEY)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with TrivialEmbeddingServer() as s:
        plan = plan_from_options({"server": creds(s.url), "api": "openai", "api_key_env": "EMBPROF_TEST_KEY"})
        app = EmbprofApp(plan, profiles_dir=tmp_path / "profiles")
        notes = NotificationLog()
        async with app.run_test(size=(160, 50), message_hook=notes.hook) as pilot:
            await until(pilot, lambda: app.current is not None and app.current.snapshot_path is not None, timeout=120)
            await pilot.pause(0.5)
            shown = [plain(w.render(), 300) for w in app.screen.query(Static)]
            for table in app.screen.query(DataTable):
                for row in range(table.row_count):
                    shown.extend(plain(c, 300) for c in table.get_row_at(row))
            shown.extend(n.message + n.title for n in notes)
            saved = Path(app.current.snapshot_path or "").read_text()
    assert "trivial" in "\n".join(shown) and s.url in saved  # the server is on screen and in the snapshot …
    for secret in SECRETS:  # … without what authenticates to it
        assert secret not in "\n".join(shown) and secret not in saved


# -- credentials quoted back -------------------------------------------------------------------------
# A password with @ : /, written percent-encoded in the URL: each of its forms is a secret.
ECHO_PASSWORD = "p@ss:w/rd-planted-51c2"
ECHO_PASSWORD_WRITTEN = "p%40ss%3Aw%2Frd-planted-51c2"
ECHO_TOKEN = base64.b64encode(f"{USER}:{ECHO_PASSWORD}".encode()).decode()
ECHO_SECRETS = (KEY, USER, ECHO_PASSWORD, ECHO_PASSWORD_WRITTEN, ECHO_TOKEN)


def echo_creds(url: str) -> str:
    return url.replace("http://", f"http://{USER}:{ECHO_PASSWORD_WRITTEN}@")


def _echo_target(mode: str, auth: str, monkeypatch: pytest.MonkeyPatch) -> tuple[HttpTarget, Any]:
    monkeypatch.setenv("EMBPROF_TEST_KEY", KEY)
    s = fault_server.start(mode)
    api = "llama" if mode == "props-echo" else "openai"
    if auth == "bearer":
        return HttpTarget(ServerTarget(url=s.url, api=api, api_key_env="EMBPROF_TEST_KEY")), s
    return HttpTarget(ServerTarget(url=echo_creds(s.url), api=api)), s


@pytest.mark.parametrize("auth", ["bearer", "basic"])
@pytest.mark.parametrize("mode", fault_server.ECHO_MODES)
def test_credentials_a_server_quotes_back_are_redacted(mode: str, auth: str, monkeypatch: pytest.MonkeyPatch) -> None:
    target, s = _echo_target(mode, auth, monkeypatch)
    said: list[str] = []
    try:
        try:
            target.resolve()
            said.append(target.describe().model_dump_json())
            try:
                target.request(None, ["a", "b"])
            except ServerFault as fault:
                said.append(str(fault))
        except UserError as refused:
            said.append(str(refused))
    finally:
        target.close()
        s.__exit__()
    sent = s.state.auth[-1] if s.state.auth else ""
    assert sent == (f"Bearer {KEY}" if auth == "bearer" else f"Basic {ECHO_TOKEN}") or mode == "get-echostatus", sent
    text = "\n".join(said)
    assert "***" in text, text  # the server did quote them …
    for secret in ECHO_SECRETS:  # … and none of them came through
        assert secret not in text, (secret, text)


@pytest.mark.slow
def test_credentials_a_server_quotes_back_reach_no_output(cli_env: dict[str, str], tmp_path: Path) -> None:
    env = dict(cli_env, EMBPROF_TEST_KEY=KEY)
    key = ["--api-key-env", "EMBPROF_TEST_KEY"]
    leak = Leak()
    runs = [("echo500", key, 1), ("echotext", key, 1), ("echo400", [], 1), ("echo401", [], 1), ("echostatus", [], 1),
            ("models-echo", key, 0), ("get-echostatus", [], 2)]
    for mode, args, rc in runs:
        s = fault_server.start(mode)
        try:
            url = s.url if args else echo_creds(s.url)
            _, out, err = leak.run(["run", "encode", "--server", url, "--api", "openai", "--repeats", "1", *args], env, expect=rc)
        finally:
            s.__exit__()
        assert "***" in out + err, (mode, out[-2000:], err)  # what was quoted is there, redacted
    leak.check(Path(env["EMBPROF_PROFILES_DIR"]), secrets=ECHO_SECRETS)


def test_a_secret_where_a_message_is_cut_leaves_no_part_of_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from embprof.engine.targets import protocol

    monkeypatch.setenv("EMBPROF_TEST_KEY", KEY)
    target = HttpTarget(ServerTarget(url="http://127.0.0.1:9", api="openai", api_key_env="EMBPROF_TEST_KEY"))
    for pad in range(0, 400, 7):  # the key across the point where each message is cut
        quoted = "x" * pad + f"Bearer {KEY} " + " " * 600
        messages = [protocol.server_message(json.dumps({"error": {"message": quoted}}).encode(), target.redact),
                    protocol.server_message(quoted.encode(), target.redact),
                    protocol.not_json(quoted.encode(), target.redact),
                    protocol.reason(ValueError(quoted), target.redact)]
        for message in messages:
            assert KEY[:8] not in message, (pad, message)


# -- an API key no header can carry -------------------------------------------------------------------
@pytest.mark.parametrize(("bad", "text"), [
    (KEY + "\r", "holds a control character (a pasted line end?)"),
    (KEY + "\r\n", "holds a control character (a pasted line end?)"),
    ("sk-\n" + KEY, "holds a control character (a pasted line end?)"),
    (KEY + "\x1b", "holds a control character"),
    (KEY + "\t", "holds a control character"),
    (KEY + "\x7f", "holds a control character"),
    (KEY + " ", "begins or ends with a space"),
    (" " + KEY, "begins or ends with a space"),
    (KEY + "\u00e9", "not ASCII"),
    ("\u201c" + KEY + "\u201d", "not ASCII"),
])
def test_an_api_key_no_header_can_carry_is_refused_unshown(bad: str, text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBPROF_TEST_KEY", bad)
    target = HttpTarget(ServerTarget(url="http://127.0.0.1:9", api="openai", api_key_env="EMBPROF_TEST_KEY"))
    with pytest.raises(UserError) as refused:
        target.resolve()  # before anything is sent: the port is closed
    message = str(refused.value)
    assert message.startswith("the API key in $EMBPROF_TEST_KEY ") and text in message, message
    assert "\n" not in message and KEY not in message and "sk-" not in message


@pytest.mark.slow
def test_an_api_key_no_header_can_carry_is_one_sentence_on_the_command_line(cli_env: dict[str, str],
                                                                            server: TrivialEmbeddingServer) -> None:
    leak = Leak()
    for bad in (KEY + "\r\n", KEY + "\u00e9"):
        env = dict(cli_env, EMBPROF_TEST_KEY=bad)
        _, out, err = leak.run(["run", "encode", "--server", server.url, "--api-key-env", "EMBPROF_TEST_KEY"], env, expect=2)
        assert out == "" and err.startswith("embprof: error: the API key in $EMBPROF_TEST_KEY ") and err.count("\n") == 1, err
    leak.check()


# -- nothing read runs anything ---------------------------------------------------------------------

UNSAFE_CALLS = {"eval", "exec", "compile", "__import__"}
UNSAFE_ATTRS = {("pickle", "load"), ("pickle", "loads"), ("marshal", "loads"), ("yaml", "load"), ("yaml", "unsafe_load"),
                ("yaml", "full_load"), ("dill", "load"), ("shelve", "open")}


def test_the_engine_and_the_dashboard_hold_no_code_loader() -> None:
    """Every file embprof reads is data: JSON, TOML, yaml.safe_load, npz without pickles. A call that
    could run what a file holds is refused here at the source: eval/exec, pickle, an unsafe YAML
    load, numpy with allow_pickle=True, torch.load without weights_only."""
    found: list[str] = []
    for folder in (REPO / "engine", REPO / "tui"):
        for path in folder.rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call):
                    continue
                f = node.func
                where = f"{path.relative_to(REPO)}:{node.lineno}"
                if isinstance(f, ast.Name) and f.id in UNSAFE_CALLS:
                    found.append(f"{where} {f.id}()")
                if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
                    if (f.value.id, f.attr) in UNSAFE_ATTRS:
                        found.append(f"{where} {f.value.id}.{f.attr}()")
                    if (f.value.id, f.attr) == ("np", "load"):
                        kw = {k.arg: k.value for k in node.keywords}
                        if not (isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value is False):
                            found.append(f"{where} np.load without allow_pickle=False")
                    if (f.value.id, f.attr) == ("torch", "load"):
                        kw = {k.arg: k.value for k in node.keywords}
                        if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                            found.append(f"{where} torch.load without weights_only=True")
    assert not found, found


class _Payload:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {os.environ.get('EMBPROF_PWNED', '/nonexistent/PWNED')}",))


def test_a_reference_file_with_a_pickle_is_refused_unopened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from embprof.engine.plan import CellPlan
    from embprof.engine.workloads.cell import CellWorkload

    marker = tmp_path / "PWNED"
    monkeypatch.setenv("EMBPROF_PWNED", str(marker))
    ref = tmp_path / "ref.npz"
    np.savez(ref, texts=np.array([_Payload()], dtype=object))
    text = tmp_path / "lines.txt"
    text.write_text("one\ntwo\n")
    workload = CellWorkload(CellPlan(cost="encode", input=str(text), tasks=(), reference=str(ref)))
    with pytest.raises(UserError, match="cannot be read"):
        workload.prepare()
    assert not marker.exists()


def test_snapshot_fields_that_look_like_code_stay_data(tmp_path: Path) -> None:
    from embprof.engine.snapshot import build, load, save
    from fake_engine import recorded_run

    _, rec = recorded_run()
    path = save(build(rec, {"hostname": "h"}), tmp_path)
    data = json.loads(path.read_text())
    marker = tmp_path / "PWNED"
    payload = {"__class__": "os.system", "py/object": "os.system", "!!python/object/apply:os.system": [f"touch {marker}"],
               "__reduce__": ["os.system", [f"touch {marker}"]]}
    data["environment"] = {"hostname": "h", **payload}
    data["workload"] = {**data["workload"], "recorded": {k: json.dumps(v) for k, v in payload.items()}}
    path.write_text(json.dumps(data))
    snap = load(path)
    assert snap.environment["__reduce__"] == ["os.system", [f"touch {marker}"]]
    assert snap.workload.recorded is not None and snap.workload.recorded["__class__"] == '"os.system"'
    # The workload's facts are typed: a field they do not have is refused, in one sentence, never looked up.
    data["workload"] = {**data["workload"], **payload}
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="is damaged: workload"):
        load(path)
    assert not marker.exists()


# -- a model's own code -------------------------------------------------------------------------------

def _model_with_code(folder: Path, marker: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["EvilModel"], "model_type": "evil",
        "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"},
    }))
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                    "from transformers import PretrainedConfig\nclass EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n")
    return folder


@pytest.mark.slow
def test_a_model_s_own_code_runs_only_with_the_flag_and_the_snapshot_says_so(cli_env: dict[str, str], tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    model = _model_with_code(tmp_path / "evil-model", marker)
    refused = run_cli(["run", "encode", "--model", str(model), "-q"], cli_env, timeout=300)
    assert refused.rc == 2, refused.err
    lines = refused.err.strip().splitlines()
    assert len(lines) == 1 and "custom code" in lines[0] and "--trust-remote-code" in lines[0] and "Traceback" not in refused.err
    assert not marker.exists()  # refused before a line of it ran
    printed = run_cli(["run", "encode", "--print-plan"], cli_env, timeout=60)
    assert printed.rc == 0, printed.err
    plan = json.loads(printed.out)
    assert plan["target"]["trust_remote_code"] is False  # off unless given
    for flag, expected in (([], False), (["--trust-remote-code"], True)):
        ran = run_cli(["run", "encode", "--repeats", "1", "--warmups", "0", "-q", *flag], cli_env, timeout=300)
        assert ran.rc == 0, ran.err
        path, _ = snapshot_from(ran.out)
        saved = json.loads(path.read_text())
        assert saved["target"]["trust_remote_code"] is expected
