"""A trivial local embedding endpoint: it answers every request at once with a fixed vector.

It measures the client, not a model: what embprof's HTTP client alone can send (the load
workload's ceiling), and the client's own overhead against curl (benchmarks). Both llama.cpp's
`/embedding` and the OpenAI-compatible `/v1/embeddings` shapes are answered.
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

VECTOR = [0.5, 0.5, 0.5, 0.5]


class TrivialHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real server offers it

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in two writes: without TCP_NODELAY, Nagle's algorithm and the
        # client's delayed ACK add 40 ms to every answer, which would be measured as the server's.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        return

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> Any:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            return json.loads(raw) if raw else {}
        except ValueError:
            return {}

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path == "/v1/models":
            self._send(200, b'{"data": [{"id": "trivial"}]}')
        else:
            self._send(200, b'{"status": "ok"}')

    def do_POST(self) -> None:  # noqa: N802
        self._answer(self._body())

    def _answer(self, body: Any) -> None:
        data: Any
        if self.path == "/v1/embeddings":
            items = body.get("input") if isinstance(body, dict) else None
            n = len(items) if isinstance(items, list) else 1
            data = {"data": [{"index": i, "embedding": VECTOR} for i in range(n)], "usage": {"prompt_tokens": n, "total_tokens": n}}
        else:
            items = body.get("content") if isinstance(body, dict) else None
            n = len(items) if isinstance(items, list) else 1
            data = [{"index": i, "embedding": [VECTOR]} for i in range(n)]
        self._send(200, json.dumps(data).encode())


class TrivialEmbeddingServer:
    """Runs a handler class on 127.0.0.1 on a free port, in a thread of this process."""

    def __init__(self, handler: type[BaseHTTPRequestHandler] = TrivialHandler) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="embprof-trivial-server", daemon=True)

    def __enter__(self) -> TrivialEmbeddingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
