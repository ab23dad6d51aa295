"""Embedding servers as targets: llama.cpp's native `POST /embedding` and the OpenAI-compatible
`POST /v1/embeddings` (served by llama.cpp, vLLM, TEI, Infinity …), over one httpx client with
connection reuse and timeouts.

Every request is an event (RequestTimed): wall time from send to parsed response, bytes each way,
items, the tokens the server reports, the status, and for a failure its kind. Prompts are applied
client-side, as sentence-transformers applies them for a local model. The API key is read from an
environment variable the user names and sent as a bearer token; it and any credentials in the URL
are never written anywhere.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import orjson

from .context import RunContext
from .errors import PartialFailure, UserError
from .events import BatchTimed, EncodeTimed, RequestTimed, Result
from .plan import ServerTarget, strip_credentials
from .results import RequestErrors, ServerMetrics, TargetFacts
from .stats import known_sum
from .targets import Capabilities, EncodeMode, EncodeOutcome, declared_prompts_of, default_prompt_name, resolve_prompt_text

__all__ = ["HttpTarget", "ServerFault", "strip_credentials"]

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "0.0.0.0")
TOO_LARGE = re.compile(r"too large to process|increase the physical batch size", re.I)
TOO_LARGE_HINT = (
    "an input is longer than the server's physical batch: restart llama-server with larger -b and -ub "
    "(-ub is the most tokens one input may have; e.g. -b 2048 -ub 2048), or send shorter texts"
)


class ServerFault(PartialFailure):
    """More failed requests than --max-errors allows; everything measured until then is kept."""


def find_listening_pid(port: int) -> int | None:
    """The local process listening on a TCP port, if this user may see it."""
    import psutil

    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return int(conn.pid)
    except (psutil.AccessDenied, PermissionError):
        return None
    return None


def _classify(exc: Exception) -> str:
    import httpx

    # Anything else that stops an answer arriving (refused, reset, closed mid-body) is the connection's.
    return "timeout" if isinstance(exc, httpx.TimeoutException) else "connection"


class HttpTarget:
    kind = "http"
    device: str | None = None  # where it computes is the server's business

    def __init__(self, spec: ServerTarget) -> None:
        self.spec = spec
        # llama.cpp's native /embedding reports no token counts; OpenAI's API reports prompt_tokens.
        self.capabilities = Capabilities(reports_tokens=spec.api == "openai", has_tokenizer=False, local_device=False,
                                         server_process=True)
        self.base = spec.url.rstrip("/")
        self.url = strip_credentials(self.base)
        self.server_pid = spec.server_pid
        self.errors = 0
        self.errors_by_kind: dict[str, int] = {}
        self._client: Any = None
        self._prompts: dict[str, str] | None = None
        self._last_prompt: str | None = None
        self._props: dict[str, Any] = {}
        self._model_name = spec.server_model
        self._metrics_start: dict[str, float] | None = None
        self._request_index = 0

    # -- before the run ------------------------------------------------------------------------------
    def resolve(self) -> None:
        """Before the run: the URL answers (one sentence if not), and the local server's process is known."""
        if self.spec.api_key_env is not None and not os.environ.get(self.spec.api_key_env):
            raise UserError(f"--api-key-env names {self.spec.api_key_env}, but that environment variable is not set")
        self._reach()
        if self.server_pid is not None:
            import psutil

            if not psutil.pid_exists(self.server_pid):
                raise UserError(f"--server-pid {self.server_pid}: no such process on this machine")
        if self.server_pid is None:
            parts = urlsplit(self.spec.url)
            if parts.hostname in LOCAL_HOSTS:
                port = parts.port or (443 if parts.scheme == "https" else 80)
                self.server_pid = find_listening_pid(port)

    def declared_prompts(self) -> dict[str, str] | None:
        return self.prompts

    @property
    def prompts(self) -> dict[str, str]:
        if self._prompts is None:
            self._prompts = {}
            if self.spec.prompts_from:
                declared = declared_prompts_of(self.spec.prompts_from)
                if declared is None:
                    raise UserError(f"--prompts-from '{self.spec.prompts_from}': its prompts cannot be read without downloading it")
                self._prompts = declared
        return self._prompts

    @property
    def max_seq_length(self) -> int | None:
        n = (self._props.get("default_generation_settings") or {}).get("n_ctx") or self._props.get("n_ctx")
        return int(n) if n else None

    # -- the connection ---------------------------------------------------------------------------------
    def _new_client(self) -> Any:
        import httpx

        # identity: a server that compresses its answer (cpp-httplib gzips when asked) would spend
        # milliseconds on it for every request and the time would read as the model's.
        headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
        if self.spec.api_key_env:
            headers["Authorization"] = f"Bearer {os.environ[self.spec.api_key_env]}"
        parts = urlsplit(self.spec.url)
        # Credentials in the URL become basic auth, unless an API key (a bearer token) is given.
        auth = (parts.username or "", parts.password or "") if parts.username is not None and not self.spec.api_key_env else None
        return httpx.Client(
            base_url=strip_credentials(self.base),
            headers=headers,
            auth=auth,
            timeout=httpx.Timeout(self.spec.timeout_s, connect=min(10.0, self.spec.timeout_s)),
            limits=httpx.Limits(max_keepalive_connections=64, max_connections=256),
        )

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self._new_client()
        return self._client

    def load(self, ctx: RunContext) -> None:
        """Reach the server once (its health or model list), learn what it says of itself."""
        with ctx.phase("connect", self.url):
            self._reach()
        self._metrics_start = self._metrics()

    def _reach(self) -> None:
        import httpx

        try:
            if self.spec.api == "llama":
                r = self.client.get("/health")
                if r.status_code == 503:
                    raise UserError(f"the server at {self.url} is still loading its model (/health says 503); try again")
                props = self.client.get("/props")
                if props.status_code == 200:
                    self._props = props.json()
            else:
                r = self.client.get("/v1/models")
                if r.status_code == 200 and self._model_name is None:
                    data = r.json().get("data") or []
                    if data:
                        self._model_name = str(data[0].get("id"))
            if r.status_code in (401, 403):
                raise UserError(f"the server at {self.url} refused the credentials (HTTP {r.status_code}); see --api-key-env")
        except httpx.ConnectError as exc:
            raise UserError(f"cannot connect to {self.url}: {_reason(exc)} (is the server running?)") from None
        except httpx.TimeoutException:
            raise UserError(f"{self.url} did not answer within {self.spec.timeout_s:g} s") from None
        except ValueError:
            raise UserError(f"{self.url} answered with something that is not JSON: is it an embedding server?") from None

    def _metrics(self) -> dict[str, float] | None:
        """llama.cpp's own counters from /metrics (started with --metrics); None when it is off."""
        if self.spec.api != "llama":
            return None
        try:
            r = self.client.get("/metrics", timeout=5.0)
        except Exception:
            return None
        if r.status_code != 200:
            return None
        out: dict[str, float] = {}
        for line in r.text.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            name, _, value = line.rpartition(" ")
            try:
                out[name.strip()] = float(value)
            except ValueError:
                continue
        return out

    # -- facts ---------------------------------------------------------------------------------------------
    def describe(self) -> TargetFacts:
        facts: dict[str, Any] = {
            "backend": "http",
            "api": self.spec.api,
            "url": self.url,
            "model_name": self._model_name or self._server_model_file() or self.url,
            "server_pid": self.server_pid,
            "prompts_from": self.spec.prompts_from,
            "prompt_names": tuple(sorted(self.prompts)),
            "timeout_s": self.spec.timeout_s,
            "max_errors": self.spec.max_errors,
            "api_key_env": self.spec.api_key_env,  # the variable's name only, never its value
        }
        if self._props:
            facts["server_n_ctx"] = self.max_seq_length
            build = self._props.get("build_info")
            facts["server_build"] = str(build) if build is not None else None
            facts["server_model_file"] = self._server_model_file()
        return TargetFacts(**facts)

    def _server_model_file(self) -> str | None:
        path = self._props.get("model_path")
        return os.path.basename(str(path)) if path else None

    def default_prompt_for(self, mode: EncodeMode) -> str | None:
        return default_prompt_name(self.prompts, mode)

    @property
    def last_prompt(self) -> str | None:
        return self._last_prompt

    # -- work ----------------------------------------------------------------------------------------------
    def prompt_text(self, mode: EncodeMode, prompt_name: str | None, prompt: str | None) -> str | None:
        """Prompts are applied client-side, as sentence-transformers applies them for a local model."""
        return resolve_prompt_text(self.prompts, prompt_name or self.default_prompt_for(mode), prompt,
                                   "the prompts known for this server (--prompts-from MODEL)")

    def encode(
        self,
        ctx: RunContext,
        texts: Sequence[str],
        *,
        mode: EncodeMode = "plain",
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int = 32,
        label: str = "encode",
        group: str = "",
        warmup: bool = False,
    ) -> EncodeOutcome:
        prefix = self.prompt_text(mode, prompt_name, prompt)
        self._last_prompt = prefix
        inputs = [(prefix or "") + t for t in texts]
        call_index = ctx.next_call_index()
        vectors: list[list[float]] = []
        # Unknown until the server says: a server that reports no counts leaves the total unknown, not 0.
        tokens_total: int | None = 0
        batches = 0
        start = time.perf_counter_ns()
        for b, lo in enumerate(range(0, len(inputs), batch_size)):
            ctx.check_cancel()
            chunk = inputs[lo : lo + batch_size]
            vecs, tokens, took_ns = self.request(ctx, chunk, call_index=call_index, warmup=warmup, group=group)
            vectors.extend(vecs)
            tokens_total = known_sum(tokens_total, tokens)
            batches += 1
            # A server pads (or not) as it likes: padding is not measurable from here.
            ctx.emit(
                BatchTimed(t_ns=ctx.now(), phase_id=ctx.phase_id, call_index=call_index, batch_index=b, items=len(chunk),
                           tokens=tokens, padded_tokens=None, duration_ns=took_ns, warmup=warmup, group=group)
            )
        duration = time.perf_counter_ns() - start
        ctx.emit(
            EncodeTimed(t_ns=ctx.now(), phase_id=ctx.phase_id, call_index=call_index, label=label, items=len(texts),
                        tokens=tokens_total, words=sum(len(t.split()) for t in texts), duration_ns=duration, warmup=warmup,
                        group=group)
        )
        return EncodeOutcome(embeddings=np.asarray(vectors, dtype=np.float32), duration_ns=duration, tokens=tokens_total,
                             batches=batches)

    def request(
        self, ctx: RunContext | None, chunk: list[str], *, call_index: int = 0, warmup: bool = False, group: str = ""
    ) -> tuple[list[list[float]], int | None, int]:
        """One request, retried while --max-errors allows; each try is a RequestTimed event.
        Returns the vectors, the tokens the server reported, and the answered try's duration."""
        while True:
            outcome = self.try_request(chunk)
            if ctx is not None:
                ctx.emit(outcome.event(ctx, call_index, self._request_index, warmup, group))
            self._request_index += 1
            if not outcome.error_kind:
                return outcome.vectors or [], outcome.tokens, outcome.duration_ns
            self.errors += 1
            self.errors_by_kind[outcome.error_kind] = self.errors_by_kind.get(outcome.error_kind, 0) + 1
            if self.errors > self.spec.max_errors:
                raise ServerFault(f"request failed ({outcome.error_kind}): {outcome.error}" + (
                    f"; {self.errors} failed requests, more than --max-errors {self.spec.max_errors}" if self.spec.max_errors else ""))

    def payload(self, chunk: list[str]) -> tuple[str, dict[str, Any]]:
        if self.spec.api == "llama":
            return "/embedding", {"content": chunk, "embd_normalize": 2}
        body: dict[str, Any] = {"input": chunk, "encoding_format": "float"}
        body["model"] = self._model_name or "default"
        return "/v1/embeddings", body

    def try_request(self, chunk: list[str]) -> RequestOutcome:
        path, body = self.payload(chunk)
        data = orjson.dumps(body)
        client = self.client  # made before the clock starts: a new client's setup is not the request
        t0 = time.perf_counter_ns()
        try:
            r = client.post(path, content=data)
            raw = r.content
            received = time.perf_counter_ns() - t0
        except Exception as exc:
            return RequestOutcome(duration_ns=time.perf_counter_ns() - t0, items=len(chunk), sent=len(data), received=0,
                                  status=None, error_kind=_classify(exc), error=_reason(exc))
        try:
            if r.status_code >= 400:
                message = _error_message(raw)
                kind = "too large" if TOO_LARGE.search(message) else f"http {r.status_code}"
                text = TOO_LARGE_HINT if kind == "too large" else f"HTTP {r.status_code}: {message[:200]}"
                return RequestOutcome(duration_ns=time.perf_counter_ns() - t0, items=len(chunk), sent=len(data), received=len(raw),
                                      status=r.status_code, error_kind=kind, error=text)
            try:
                parsed = orjson.loads(raw)
            except ValueError:
                return RequestOutcome(duration_ns=time.perf_counter_ns() - t0, items=len(chunk), sent=len(data), received=len(raw),
                                      status=r.status_code, error_kind="bad body", error="the answer is not JSON")
            vectors, tokens = self.parse(parsed, len(chunk))
        except _Shape as exc:
            return RequestOutcome(duration_ns=time.perf_counter_ns() - t0, items=len(chunk), sent=len(data), received=len(raw),
                                  status=r.status_code, error_kind="bad shape", error=str(exc))
        return RequestOutcome(duration_ns=time.perf_counter_ns() - t0, items=len(chunk), sent=len(data), received=len(raw),
                              status=r.status_code, vectors=vectors, tokens=tokens, received_ns=received)

    def parse(self, parsed: Any, n: int) -> tuple[list[list[float]], int | None]:
        if self.spec.api == "openai":
            if not isinstance(parsed, dict) or not isinstance(parsed.get("data"), list):
                raise _Shape("the answer has no 'data' list (not an OpenAI embeddings response)")
            rows = sorted(parsed["data"], key=lambda d: d.get("index", 0) if isinstance(d, dict) else 0)
            vectors = [_vector(d.get("embedding") if isinstance(d, dict) else None) for d in rows]
            usage = parsed.get("usage") or {}
            tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        else:
            found = parsed if isinstance(parsed, list) else [parsed] if isinstance(parsed, dict) else None
            if found is None:
                raise _Shape("the answer is neither a list nor an object of embeddings")
            rows = sorted(found, key=lambda d: d.get("index", 0) if isinstance(d, dict) else 0)
            vectors = []
            for d in rows:
                emb = d.get("embedding") if isinstance(d, dict) else None
                if isinstance(emb, list) and emb and isinstance(emb[0], list):
                    if len(emb) != 1:
                        raise _Shape("the server returns one vector per token (pooling none): start it with --pooling mean (or cls, last)")
                    emb = emb[0]
                vectors.append(_vector(emb))
            tokens = None
        if len(vectors) != n:
            raise _Shape(f"{n} texts were sent, {len(vectors)} embeddings came back")
        return vectors, int(tokens) if isinstance(tokens, (int, float)) else None

    def token_lengths(self, texts: Sequence[str], prompt: str | None) -> list[int]:
        """llama.cpp's own tokenizer through /tokenize; nothing for other servers."""
        if self.spec.api != "llama" or len(texts) > 2000:
            return []
        out = []
        for t in texts:
            try:
                r = self.client.post("/tokenize", json={"content": (prompt or "") + t, "add_special": True})
                out.append(len(r.json()["tokens"]))
            except Exception:
                return []
        return out

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
        return np.asarray(a @ b.T)

    def finish(self, ctx: RunContext) -> None:
        """What the server counted while the run went on (its /metrics), and the request errors."""
        end = self._metrics()
        if self._metrics_start is not None and end is not None:
            delta = {k: end[k] - self._metrics_start.get(k, 0.0) for k in end if k.startswith("llamacpp:")}
            ctx.emit(Result(t_ns=ctx.now(), result=ServerMetrics(start=self._metrics_start, end=end, delta=delta)))
        ctx.emit(Result(t_ns=ctx.now(), result=RequestErrors(errors=self.errors, errors_by_kind=dict(self.errors_by_kind))))

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class _Shape(Exception):
    pass


@dataclass
class RequestOutcome:
    duration_ns: int
    items: int
    sent: int
    received: int
    status: int | None
    vectors: list[list[float]] | None = None
    tokens: int | None = None
    error_kind: str = ""
    error: str = ""
    received_ns: int | None = None

    def event(self, ctx: RunContext, call_index: int, request_index: int, warmup: bool, group: str = "") -> RequestTimed:
        return RequestTimed(
            t_ns=ctx.now(), phase_id=ctx.phase_id, call_index=call_index, request_index=request_index, items=self.items,
            duration_ns=self.duration_ns, status=self.status, bytes_sent=self.sent, bytes_received=self.received,
            tokens=self.tokens, received_ns=self.received_ns, error_kind=self.error_kind, error=self.error, warmup=warmup,
            group=group,
        )


def _vector(v: Any) -> list[float]:
    # The first few values are checked; converting all of them one by one would time the client.
    if not isinstance(v, list) or not v or not all(isinstance(x, (int, float)) for x in v[:8]):
        raise _Shape("an embedding is not a list of numbers")
    return v


def _error_message(raw: bytes) -> str:
    try:
        body = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace").strip()[:300]
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            return str(err.get("message") or err)
        if err:
            return str(err)
        return str(body.get("message") or body.get("detail") or body)
    return str(body)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or exc.__class__.__name__
    low = text.lower()
    if "name or service not known" in low or "nodename nor servname" in low or "temporary failure in name resolution" in low:
        return "the host name does not resolve (DNS)"
    if "connection refused" in low:
        return "connection refused"
    return text.splitlines()[0][:200]
