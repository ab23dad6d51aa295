"""Embedding servers as targets: llama.cpp's native `POST /embedding` and the OpenAI-compatible
`POST /v1/embeddings` (served by llama.cpp, vLLM, TEI, Infinity …), over one httpx client with
connection reuse and timeouts.

Every request is an event (RequestTimed): wall time from send to parsed response, bytes each way,
items, the tokens the server reports, the status, and for a failure its kind. Prompts are applied
client-side, as sentence-transformers applies them for a local model. What is sent, how an answer
is read and how secrets are kept out of every message is the server protocol's (protocol.py),
shared with the load generator's asynchronous client; this module is the synchronous client.
No answer is read past a size limit.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import orjson

from ..context import RunContext
from ..errors import PartialFailure, UserError
from ..events import BatchTimed, EncodeTimed, Note, RequestTimed, Result
from ..plan import EncodeMode, ServerTarget, strip_credentials
from ..results import RequestErrors, ServerMetrics, TargetFacts
from ..stats import known_sum
from . import protocol
from .base import Capabilities, EncodeOutcome, default_prompt_name, resolve_prompt_text
from .local import declared_prompts_of
from .protocol import (
    MODEL_ID_CHARS,
    BadBody,
    BadShape,
    Failure,
    Width,
    clip,
    decode_answer,
    embeddings_of,
    is_count,
    model_id_of,
    props_of,
    reason,
)

__all__ = ["HttpTarget", "RequestOutcome", "ServerFault", "find_listening_pid"]

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "0.0.0.0")


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

    if isinstance(exc, _Oversize):
        return BadBody.kind
    # Anything else that stops an answer arriving (refused, reset, closed mid-body) is the connection's.
    return "timeout" if isinstance(exc, (httpx.TimeoutException, _Deadline)) else "connection"


class _Oversize(Exception):
    """An answer longer than what is read of it."""

    def __init__(self, limit: int, declared: int | None = None) -> None:
        super().__init__(protocol.oversize_message(limit, declared))


class _Deadline(Exception):
    """The whole request took longer than --timeout (each read alone came in time: a trickling server)."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"the answer was still arriving after {timeout_s:g} s (--timeout)")


def _read_capped(response: Any, limit: int, t0_ns: int | None = None, timeout_s: float | None = None, *,
                 cut: bool = False) -> bytes:
    """The body of a streamed response, never more than ``limit`` bytes of it.

    Past the limit the answer is refused (_Oversize) or, with ``cut``, its start is kept and the
    rest left unread (the connection then closes). A declared length over the limit is refused
    before anything is read. httpx's timeout holds for each read, so a server that sends a byte
    now and then would never time out: with ``t0_ns`` and ``timeout_s`` the whole answer is bounded.
    """
    declared = protocol.declared_length(response.headers.get("content-length"))
    if not cut and declared is not None and declared > limit:
        raise _Oversize(limit, declared)
    deadline = t0_ns + int(timeout_s * 1e9) if t0_ns is not None and timeout_s is not None else None
    parts: list[bytes] = []
    size = 0
    for part in response.iter_bytes():
        size += len(part)
        if size > limit:
            if not cut:
                raise _Oversize(limit)
            parts.append(part[: len(part) - (size - limit)])
            break
        parts.append(part)
        if deadline is not None and time.perf_counter_ns() > deadline:
            raise _Deadline(timeout_s or 0.0)
    return b"".join(parts)


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
        self._width = Width()  # every vector of this run as long as the first answer's
        # Vectors of all zeros met by similarity(): their cosine is undefined, which the run notes.
        self._zero_vectors = 0

    # -- before the run ------------------------------------------------------------------------------
    def resolve(self) -> None:
        """Before the run: the URL answers (one sentence if not), and the local server's process is known."""
        protocol.api_key(self.spec)  # a key no header can carry is refused before anything is sent
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
        settings = self._props.get("default_generation_settings")
        n = settings.get("n_ctx") if isinstance(settings, dict) else None
        if not is_count(n):
            n = self._props.get("n_ctx")
        return int(n) if is_count(n) and n else None

    def redact(self, text: str) -> str:
        """``text`` with every credential of this server replaced by ***: the one pass every message from
        the server or the connection goes through before it leaves the target (or, for the load
        generator's records, before the load workload keeps them)."""
        return protocol.redact_secrets(self.spec, text)

    # -- the connection ---------------------------------------------------------------------------------
    def _new_client(self) -> Any:
        import httpx

        return httpx.Client(
            base_url=strip_credentials(self.base),
            headers={**protocol.BASE_HEADERS, **protocol.auth_header(self.spec)},
            auth=protocol.basic_auth(self.spec),
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

    def _get(self, path: str, limit: int = protocol.MAX_INFO_BYTES, **kwargs: Any) -> tuple[int, bytes]:
        """A GET's status and body, read to no more than ``limit`` bytes."""
        with self.client.stream("GET", path, **kwargs) as r:
            return r.status_code, _read_capped(r, limit)

    def _reach(self) -> None:
        """One sentence (a UserError) for every way the server can fail to be one, before anything is measured."""
        try:
            self._reach_once()
        except UserError as exc:
            raise UserError(self.redact(str(exc))) from None

    def _reach_once(self) -> None:
        import httpx

        llama = self.spec.api == "llama"
        where = "/health" if llama else "/v1/models"
        try:
            if llama:
                status, _ = self._get(where)
                if status == 503:
                    raise UserError(f"the server at {self.url} is still loading its model (/health says 503); try again")
                where = "/props"
                props_status, props = self._get(where)
                if props_status == 200:
                    self._props = props_of(decode_answer(props))
            else:
                status, models = self._get(where)
                # The list is read only for the name to send; a name given on the command line needs none.
                if status == 200 and self._model_name is None:
                    self._model_name = model_id_of(decode_answer(models))
            if status in (401, 403):
                raise UserError(f"the server at {self.url} refused the credentials (HTTP {status}); see --api-key-env")
        except httpx.ConnectError as exc:
            raise UserError(f"cannot connect to {self.url}: {reason(exc, self.redact)} (is the server running?)") from None
        except httpx.TimeoutException:
            raise UserError(f"{self.url} did not answer within {self.spec.timeout_s:g} s") from None
        except (UnicodeError, httpx.InvalidURL) as exc:  # a host name no resolver takes (IDNA: an empty or long label)
            raise UserError(f"cannot connect to {self.url}: its host name is not valid ({reason(exc, self.redact)})") from None
        except httpx.HTTPError as exc:  # closed without answering, a broken HTTP answer …
            raise UserError(f"the connection to {self.url} failed at {where}: {reason(exc, self.redact)}") from None
        except _Oversize as exc:
            raise UserError(f"{self.url}{where} answered with too much ({exc}): is it an embedding server?") from None
        except BadBody:
            raise UserError(f"{self.url}{where} answered with something that is not JSON: is it an embedding server?") from None
        except BadShape as exc:
            kind = "a llama.cpp" if llama else "an OpenAI-compatible"
            hint = "" if llama else " (--server-model NAME names the model without the list)"
            raise UserError(f"{self.url}{where} is not what an embedding server answers ({exc}): is it {kind} server?{hint}") from None

    def _metrics(self) -> dict[str, float] | None:
        """llama.cpp's own counters from /metrics (started with --metrics); None when it is off."""
        if self.spec.api != "llama":
            return None
        try:
            status, body = self._get("/metrics", timeout=5.0)
        except Exception:  # the counters are extra facts: a server that fails them fails nothing else
            return None
        if status != 200:
            return None
        out: dict[str, float] = {}
        for line in body.decode("utf-8", "replace").splitlines():
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
            # The server's own name for its model, which it could make anything.
            "model_name": self.redact(self._model_name or self._server_model_file() or self.url),
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
            # Only plain values are taken from /props: a server's nested value is no build name.
            facts["server_build"] = clip(self.redact(str(build)), MODEL_ID_CHARS) if isinstance(build, (str, int, float)) else None
            facts["server_model_file"] = self._server_model_file()
        return TargetFacts(**facts)

    def _server_model_file(self) -> str | None:
        path = self._props.get("model_path")
        return clip(self.redact(os.path.basename(path)), MODEL_ID_CHARS) if isinstance(path, str) and path else None

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
        vectors: list[np.ndarray] = []
        # Unknown until the server says: a server that reports no counts leaves the total unknown, not 0.
        tokens_total: int | None = 0
        batches = 0
        start = time.perf_counter_ns()
        for b, lo in enumerate(range(0, len(inputs), batch_size)):
            ctx.check_cancel()
            chunk = inputs[lo : lo + batch_size]
            vecs, tokens, took_ns = self.request(ctx, chunk, call_index=call_index, warmup=warmup, group=group)
            vectors.append(vecs)
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
        # Every answer's rows have the run's one length (parse checks it), so they stack.
        embeddings = np.concatenate(vectors) if vectors else np.asarray([], dtype=np.float32)
        return EncodeOutcome(embeddings=embeddings, duration_ns=duration, tokens=tokens_total, batches=batches)

    def request(
        self, ctx: RunContext | None, chunk: list[str], *, call_index: int = 0, warmup: bool = False, group: str = ""
    ) -> tuple[np.ndarray, int | None, int]:
        """One request, retried while --max-errors allows; each try is a RequestTimed event.
        Returns the vectors (one row per text), the tokens the server reported, and the answered try's duration."""
        while True:
            outcome = self.try_request(chunk)
            if ctx is not None:
                ctx.emit(outcome.event(ctx, call_index, self._request_index, warmup, group))
            self._request_index += 1
            if not outcome.error_kind and outcome.vectors is not None:
                return outcome.vectors, outcome.tokens, outcome.duration_ns
            self.errors += 1
            self.errors_by_kind[outcome.error_kind] = self.errors_by_kind.get(outcome.error_kind, 0) + 1
            if self.errors > self.spec.max_errors:
                raise ServerFault(f"request failed ({outcome.error_kind}): {outcome.error}" + (
                    f"; {self.errors} failed requests, more than --max-errors {self.spec.max_errors}" if self.spec.max_errors else ""))

    def payload(self, chunk: list[str]) -> tuple[str, dict[str, Any]]:
        """The path and body of one request for ``chunk`` (the load workload sends the same bodies)."""
        return protocol.request_payload(self.spec.api, chunk, self._model_name)

    def try_request(self, chunk: list[str]) -> RequestOutcome:
        """One request, never raising: the vectors, or the failure's kind and one sentence."""
        path, body = self.payload(chunk)
        data = orjson.dumps(body)
        client = self.client  # made before the clock starts: a new client's setup is not the request
        status: int | None = None
        raw = b""

        def failed(kind: str, message: str) -> RequestOutcome:
            # Every failure's sentence passes here: whatever part of it came from the server is redacted.
            return RequestOutcome(duration_ns=time.perf_counter_ns() - t0, items=len(chunk), sent=len(data), received=len(raw),
                                  status=status, error_kind=kind, error=self.redact(message))

        t0 = time.perf_counter_ns()
        try:
            with client.stream("POST", path, content=data) as r:
                status = r.status_code
                # Of an error answer only the start is read, and read to its limit without refusing it.
                if 200 <= status < 300:
                    raw = _read_capped(r, protocol.MAX_ANSWER_BYTES, t0, self.spec.timeout_s)
                else:
                    raw = _read_capped(r, protocol.MAX_ERROR_BYTES, t0, self.spec.timeout_s, cut=True)
                phrase, location = r.reason_phrase or "", r.headers.get("location", "")
            received = time.perf_counter_ns() - t0
        except Exception as exc:  # whatever stopped the answer arriving is this request's failure, not the run's crash
            return failed(_classify(exc), reason(exc, self.redact))
        answer = protocol.classify_answer(status, raw, len(chunk), self.spec.api, reason_phrase=phrase, location=location,
                                          width=self._width, redact=self.redact)
        if isinstance(answer, Failure):
            return failed(answer.kind, answer.message)
        return RequestOutcome(duration_ns=time.perf_counter_ns() - t0, items=len(chunk), sent=len(data), received=len(raw),
                              status=status, vectors=answer.matrix, tokens=answer.tokens, received_ns=received)

    def parse(self, parsed: Any, n: int) -> tuple[np.ndarray, int | None]:
        """A decoded answer as (n × dim float32 matrix, tokens reported), its dim the same as the run's
        earlier answers; a BadShape otherwise."""
        vectors, tokens = embeddings_of(parsed, n, self.spec.api)
        if n:
            self._width.check(int(vectors.shape[1]))
        return vectors, tokens

    def token_lengths(self, texts: Sequence[str], prompt: str | None) -> list[int]:
        """llama.cpp's own tokenizer through /tokenize; nothing for other servers."""
        if self.spec.api != "llama" or len(texts) > 2000:
            return []
        out = []
        for t in texts:
            try:
                with self.client.stream("POST", "/tokenize", json={"content": (prompt or "") + t, "add_special": True}) as r:
                    tokens = orjson.loads(_read_capped(r, protocol.MAX_INFO_BYTES))["tokens"]
            except Exception:  # token counts are extra facts: without them the run reports none
                return []
            if not isinstance(tokens, list):
                return []
            out.append(len(tokens))
        return out

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Cosine similarity of every row of ``a`` with every row of ``b``.

        A server may send a vector of all zeros, which has no direction: its cosine with anything is
        undefined. It scores 0, as sentence-transformers' cos_sim scores it for a local model (its
        normalization leaves a zero vector zero), and finish() notes how many there were. NaN would
        not do: it has no place in the snapshot's JSON.
        """
        # float64: the squares of float32's largest numbers and of its subnormals stay in range.
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        norm_a = np.linalg.norm(a, axis=1, keepdims=True)
        norm_b = np.linalg.norm(b, axis=1, keepdims=True)
        self._zero_vectors += int((norm_a == 0).sum() + (norm_b == 0).sum())
        with np.errstate(all="ignore"):  # a zero row is divided by 1 below: nothing should warn; if it did, not on stderr
            a = a / np.where(norm_a > 0, norm_a, 1.0)
            b = b / np.where(norm_b > 0, norm_b, 1.0)
            return np.asarray(a @ b.T)

    def finish(self, ctx: RunContext) -> None:
        """What the server counted while the run went on (its /metrics), and the request errors."""
        if self._zero_vectors:
            ctx.emit(Note(t_ns=ctx.now(), level="warning", text=(
                f"the server sent {self._zero_vectors} vector(s) of all zeros: a zero vector's cosine similarity is "
                "undefined, and its scores read 0 (as sentence-transformers scores it); its ranking means nothing")))
        end = self._metrics()
        if self._metrics_start is not None and end is not None:
            delta = {k: end[k] - self._metrics_start.get(k, 0.0) for k in end if k.startswith("llamacpp:")}
            ctx.emit(Result(t_ns=ctx.now(), result=ServerMetrics(start=self._metrics_start, end=end, delta=delta)))
        ctx.emit(Result(t_ns=ctx.now(), result=RequestErrors(errors=self.errors, errors_by_kind=dict(self.errors_by_kind))))

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


@dataclass
class RequestOutcome:
    duration_ns: int
    items: int
    sent: int
    received: int
    status: int | None
    vectors: np.ndarray | None = None  # float32, one row per text, when the request succeeded
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
