"""A small local embedding server that misbehaves on purpose, for the fault tests.

It answers llama.cpp's and the OpenAI shapes like engine/trivial_server.py, except as told:
``mode`` says how each request (after ``ok_first`` good ones) goes wrong, and ``every`` makes only
every n-th request fail. It records the Authorization header it was sent.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from embprof.engine.trivial_server import TrivialEmbeddingServer, TrivialHandler

MODES = ("ok", "500", "slow", "drop", "notjson", "badshape", "toolarge", "die")


class State:
    def __init__(self) -> None:
        self.mode = "ok"
        self.every = 1
        self.ok_first = 0
        self.slow_s = 2.0
        self.count = 0
        self.auth: list[str] = []
        self.bodies: list[Any] = []
        self.lock = threading.Lock()
        self.server: TrivialEmbeddingServer | None = None


STATE = State()


class FaultHandler(TrivialHandler):
    def do_POST(self) -> None:  # noqa: N802
        st = STATE
        with st.lock:
            st.count += 1
            n = st.count
            st.auth.append(self.headers.get("Authorization", ""))
        failing = st.mode != "ok" and n > st.ok_first and (n - st.ok_first) % st.every == 0
        body = self._body()
        with st.lock:
            st.bodies.append(body)
        if not failing:
            return self._answer(body)
        mode = st.mode
        if mode == "500":
            self._send(500, json.dumps({"error": {"code": 500, "message": "boom", "type": "server_error"}}).encode())
        elif mode == "toolarge":
            msg = "input (600 tokens) is too large to process. increase the physical batch size (current batch size: 512)"
            self._send(500, json.dumps({"error": {"code": 500, "message": msg, "type": "server_error"}}).encode())
        elif mode == "slow":
            time.sleep(st.slow_s)
            super().do_POST()
        elif mode == "drop":
            self.close_connection = True
            self.connection.close()
        elif mode == "notjson":
            self._send(200, b"<html>proxy error</html>", "text/html")
        elif mode == "badshape":
            self._send(200, json.dumps({"embeddings": "nope"}).encode())
        elif mode == "die":
            self.close_connection = True
            self.connection.close()
            server = st.server
            if server is not None:  # stop serving and close the port: later connects are refused
                def die() -> None:
                    server.httpd.shutdown()
                    server.httpd.server_close()

                threading.Thread(target=die, daemon=True).start()


def start(mode: str = "ok", **settings: Any) -> TrivialEmbeddingServer:
    global STATE
    STATE = State()
    STATE.mode = mode
    for k, v in settings.items():
        setattr(STATE, k, v)
    server = TrivialEmbeddingServer(FaultHandler)
    STATE.server = server
    return server.__enter__()
