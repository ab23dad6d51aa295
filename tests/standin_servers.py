"""Local stand-ins for the embedding servers that cannot be installed here: Hugging Face
text-embeddings-inference (a Rust binary, shipped as a container) and Ollama (a Go binary).

Each answers exactly the routes, fields and headers its server's source writes (router/src/http/server.rs
and types.rs of text-embeddings-inference; server/routes.go and api/types.go of Ollama), and computes its
vectors with the real model (sentence-transformers, the bundled all-MiniLM-L6-v2), so that a client that
reads an answer in the wrong order or shape disagrees with the local model. What differs from the real
servers is what no client can see: the batching and the engine under the routes.

Run as ``python standin_servers.py tei|ollama PORT MODEL_DIR``; it prints ``ready`` once it listens.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TEI_VERSION = "1.8.0"
OLLAMA_VERSION = "0.12.3"
OLLAMA_MODEL = "all-minilm:latest"


class _Model:
    """The real model, one encode at a time (as a server's single batch queue), with its tokenizer's counts."""

    def __init__(self, folder: str) -> None:
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(folder, device="cpu")
        self.lock = threading.Lock()
        self.name = folder

    def embed(self, texts: list[str], normalize: bool) -> tuple[list[list[float]], int, dict[str, float]]:
        """Vectors, the prompt tokens (with special tokens, as the model reads them) and the parts' seconds."""
        start = time.perf_counter()
        with self.lock:
            queued = time.perf_counter()
            tokens = sum(len(ids) for ids in self.model.tokenizer(texts)["input_ids"])
            tokenized = time.perf_counter()
            vectors = self.model.encode(texts, normalize_embeddings=normalize, convert_to_numpy=True)
            done = time.perf_counter()
        return vectors.tolist(), tokens, {"queue": queued - start, "tokenization": tokenized - queued, "inference": done - tokenized}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        return

    def send(self, status: int, body: Any, headers: dict[str, str] | None = None, content_type: str = "application/json") -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(raw)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(raw)

    def body(self) -> Any:
        n = int(self.headers.get("Content-Length") or 0)
        try:
            return json.loads(self.rfile.read(n)) if n else None
        except ValueError:
            return None

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.server.api.get(self)

    def do_POST(self) -> None:  # noqa: N802
        self.server.api.post(self, self.body())


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, api: Any) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.api = api


class Tei:
    """text-embeddings-inference: GET /health (empty 200), /info; POST /embed (a bare list of vectors, with the x-*
    headers: times in whole milliseconds, the parts the mean over the inputs, the total the request's; characters and
    tokens as totals), /v1/embeddings and
    /embeddings (OpenAI's shape). No models list. Errors are {"error", "error_type"}."""

    MAX_INPUT = 512
    MAX_CLIENT_BATCH = 32

    def __init__(self, model: _Model) -> None:
        self.model = model

    def get(self, h: _Handler) -> None:
        if h.path in ("/health", "/", "/ping"):
            h.send(200, b"", content_type="text/plain")
        elif h.path == "/info":
            h.send(200, {"model_id": self.model.name, "model_sha": None, "model_dtype": "float32",
                         "model_type": {"embedding": {"pooling": "mean"}}, "max_concurrent_requests": 512,
                         "max_input_length": self.MAX_INPUT, "max_batch_tokens": 16384, "max_batch_requests": None,
                         "max_client_batch_size": self.MAX_CLIENT_BATCH, "auto_truncate": False, "tokenization_workers": 2,
                         "version": TEI_VERSION, "sha": None, "docker_label": None})
        else:
            h.send(404, b"", content_type="text/plain")  # axum's fallback: an empty 404

    def post(self, h: _Handler, body: Any) -> None:
        openai = h.path in ("/v1/embeddings", "/embeddings")
        if h.path != "/embed" and not openai:
            h.send(404, b"", content_type="text/plain")
            return
        if not isinstance(body, dict):
            h.send(422, {"error": "Failed to deserialize the JSON body", "error_type": "Validation"})
            return
        inputs = body.get("input" if openai else "inputs")
        texts = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            h.send(400 if texts == [] else 422, {"error": "`inputs` cannot be empty" if texts == [] else "invalid inputs",
                                                 "error_type": "Validation"})
            return
        if len(texts) > self.MAX_CLIENT_BATCH:
            h.send(413, {"error": f"batch size {len(texts)} > maximum allowed batch size {self.MAX_CLIENT_BATCH}",
                         "error_type": "Validation"})
            return
        start = time.perf_counter()
        vectors, tokens, parts = self.model.embed(texts, normalize=True if openai else bool(body.get("normalize", True)))
        total = time.perf_counter() - start
        # The parts are the mean over the inputs of each input's own time; the inputs of one request ride one batch here,
        # so each input's part is the batch's. The total is the request's, from its start.
        headers = {"x-compute-type": "gpu+optimized", "x-compute-time": str(int(total * 1000)), "x-total-time": str(int(total * 1000)),
                   "x-tokenization-time": str(int(parts["tokenization"] * 1000)), "x-queue-time": str(int(parts["queue"] * 1000)),
                   "x-inference-time": str(int(parts["inference"] * 1000)), "x-compute-characters": str(sum(map(len, texts))),
                   "x-compute-tokens": str(tokens)}
        if openai:
            h.send(200, {"object": "list", "data": [{"object": "embedding", "embedding": v, "index": i} for i, v in enumerate(vectors)],
                         "model": self.model.name, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}, headers)
        else:
            h.send(200, vectors, headers)


class Ollama:
    """Ollama: GET / ("Ollama is running"), /api/version, /api/tags; POST /api/embed (durations in nanoseconds,
    prompt_eval_count the tokens), /v1/embeddings and GET /v1/models (OpenAI's shape). Anything else is gin's 404."""

    def __init__(self, model: _Model) -> None:
        self.model = model
        self.loaded = False

    def get(self, h: _Handler) -> None:
        if h.path == "/":
            h.send(200, b"Ollama is running", content_type="text/plain; charset=utf-8")
        elif h.path == "/api/version":
            h.send(200, {"version": OLLAMA_VERSION})
        elif h.path == "/api/tags":
            h.send(200, {"models": [{"name": OLLAMA_MODEL, "model": OLLAMA_MODEL, "modified_at": "2026-01-01T00:00:00Z",
                                     "size": 45960996, "digest": "1b226e2802db", "details": {"format": "gguf", "family": "bert",
                                     "parameter_size": "23M", "quantization_level": "F16"}}]})
        elif h.path == "/v1/models":
            h.send(200, {"object": "list", "data": [{"id": OLLAMA_MODEL, "object": "model", "created": 1767225600, "owned_by": "library"}]})
        else:
            h.send(404, b"404 page not found", content_type="text/plain")

    def post(self, h: _Handler, body: Any) -> None:
        if h.path not in ("/api/embed", "/v1/embeddings"):
            h.send(404, b"404 page not found", content_type="text/plain")
            return
        if not isinstance(body, dict) or body.get("model") != OLLAMA_MODEL:
            name = body.get("model") if isinstance(body, dict) else None
            h.send(404, {"error": f"model '{name}' not found"})
            return
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            h.send(400, {"error": "invalid input type"})
            return
        start = time.perf_counter_ns()
        load_ns = 0 if self.loaded else 1_000_000  # the runner's scheduling: long only on a model's first use
        self.loaded = True
        vectors, tokens, _ = self.model.embed(texts, normalize=True)
        total = time.perf_counter_ns() - start + load_ns
        if h.path == "/v1/embeddings":
            h.send(200, {"object": "list", "data": [{"object": "embedding", "embedding": v, "index": i} for i, v in enumerate(vectors)],
                         "model": OLLAMA_MODEL, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
        else:
            h.send(200, {"model": OLLAMA_MODEL, "embeddings": vectors, "total_duration": total, "load_duration": load_ns,
                         "prompt_eval_count": tokens})


def main() -> int:
    kind, port, folder = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    model = _Model(folder)
    api = Tei(model) if kind == "tei" else Ollama(model)
    server = _Server(port, api)
    print("ready", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
