"""A trivial local embedding endpoint: it answers every request at once with a fixed vector.

It measures the client, not a model: what embprof's HTTP client alone can send (the load
workload's ceiling), and the client's own overhead against curl (benchmarks). Both llama.cpp's
`/embedding` and the OpenAI-compatible `/v1/embeddings` shapes are answered.
"""

from __future__ import annotations

import json
import socket
import sys
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
        self._send(200, answer_body(self.path == "/v1/embeddings", body))


def answer_body(openai: bool, body: Any) -> bytes:
    """The fixed answer to a request's decoded body: one vector per text, in the OpenAI or llama.cpp shape."""
    data: Any
    if openai:
        items = body.get("input") if isinstance(body, dict) else None
        n = len(items) if isinstance(items, list) else 1
        data = {"data": [{"index": i, "embedding": VECTOR} for i in range(n)], "usage": {"prompt_tokens": n, "total_tokens": n}}
    else:
        items = body.get("content") if isinstance(body, dict) else None
        n = len(items) if isinstance(items, list) else 1
        data = [{"index": i, "embedding": [VECTOR]} for i in range(n)]
    return json.dumps(data).encode()


class _Server(ThreadingHTTPServer):
    """http.server's threading server, silent when a client goes away mid-request (a load client stopped at
    its deadline, a test's client that gave up): that is the client's right, and the base class would print
    a traceback for it on standard error."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class TrivialEmbeddingServer:
    """Runs a handler class on 127.0.0.1 on a free port, in a thread of this process."""

    def __init__(self, handler: type[BaseHTTPRequestHandler] = TrivialHandler) -> None:
        self.httpd = _Server(("127.0.0.1", 0), handler)
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


# -- the fast endpoint ------------------------------------------------------------------------------------------
# For the client-ceiling step and benchmark: http.server answers a few thousand requests a second, less
# than the load client sends, so it would be measured instead of the client. This one is an asyncio
# protocol (on uvloop where installed) that reads just enough HTTP/1.1 to find each request's end, in a
# process of its own so that it never shares the client's interpreter.
FAST_SERVER = "an asyncio protocol server (uvloop) in its own process"


def _fast_answer(method: bytes, path: bytes, body: bytes) -> bytes:
    if method == b"GET":  # what the client asks of a server before it loads it, as the slow endpoint answers
        payload = b'{"data": [{"id": "trivial"}]}' if path == b"/v1/models" else b'{"status": "ok"}'
        return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload)
    try:
        data = json.loads(body) if body else {}
    except ValueError:
        data = {}
    payload = answer_body(path.startswith(b"/v1/embeddings"), data)
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload)


def _serve_fast(port_out: Any) -> None:
    import asyncio

    class Protocol(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.buf = b""
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def data_received(self, data: bytes) -> None:
            self.buf += data
            while True:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                lines = self.buf[:end].split(b"\r\n")
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip() or b"0")
                if len(self.buf) < end + 4 + length:
                    return
                body, self.buf = self.buf[end + 4:end + 4 + length], self.buf[end + 4 + length:]
                parts = lines[0].split(b" ")
                self.transport.write(_fast_answer(parts[0], parts[1] if len(parts) > 1 else b"/", body))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Protocol, "127.0.0.1", 0, backlog=1024)
        port_out.write(f"{server.sockets[0].getsockname()[1]}\n")
        port_out.flush()
        await server.serve_forever()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


class FastTrivialServer:
    """The fast endpoint in a process of its own, on 127.0.0.1 and a free port; stopped on exit."""

    def __enter__(self) -> FastTrivialServer:
        import subprocess
        import sys

        self.proc = subprocess.Popen([sys.executable, "-m", "embprof.engine.trivial_server", "--fast"], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.isdigit():
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError("the local trivial endpoint did not start")
        self.port = int(line)
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait()


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--fast"]:
        _serve_fast(sys.stdout)
