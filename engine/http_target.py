"""Embedding servers as targets: llama.cpp's native `POST /embedding` and the OpenAI-compatible
`POST /v1/embeddings` (served by llama.cpp, vLLM, TEI, Infinity …), over one httpx client with
connection reuse and timeouts.

Every request is an event (RequestTimed): wall time from send to parsed response, bytes each way,
items, the tokens the server reports, the status, and for a failure its kind. Prompts are applied
client-side, as sentence-transformers applies them for a local model. The API key is read from an
environment variable the user names and sent as a bearer token; it and any credentials in the URL
are never written anywhere: a server may quote them back in its messages, so every text that comes
from the server or from the connection has them replaced by *** before it leaves this module.

A server's answer is data from outside: it either becomes a float matrix of exactly one vector per
text sent (every vector as long as every other one of the run, every number finite) or a failure
of a named kind ("bad body", "bad shape", "http 429", "timeout" …) with one short sentence. No
answer is read past a size limit, and a server's own message is kept to 200 characters.
"""

from __future__ import annotations

import base64
import json
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np
import orjson

from .context import RunContext
from .errors import PartialFailure, UserError
from .events import BatchTimed, EncodeTimed, Note, RequestTimed, Result
from .plan import ServerTarget, strip_credentials
from .results import RequestErrors, ServerMetrics, TargetFacts
from .stats import known_sum
from .targets import Capabilities, EncodeMode, EncodeOutcome, declared_prompts_of, default_prompt_name, resolve_prompt_text
from .text import one_line

__all__ = ["AnswerError", "BadBody", "BadShape", "HttpTarget", "ServerFault", "decode_answer", "embeddings_of", "model_id_of",
           "parse_answer", "strip_credentials"]

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "0.0.0.0")
TOO_LARGE = re.compile(r"too large to process|increase the physical batch size", re.I)
TOO_LARGE_HINT = (
    "an input is longer than the server's physical batch: restart llama-server with larger -b and -ub "
    "(-ub is the most tokens one input may have; e.g. -b 2048 -ub 2048), or send shorter texts"
)
# The most of one answer that is read: far above any real batch of vectors (1,024 texts of 4,096
# floats are about 85 MB of JSON), low enough that a server sending without end cannot take the
# machine's memory.
MAX_ANSWER_BYTES = 256 * 1024 * 1024
# Of an error answer only the start is read: its message is cut to MESSAGE_CHARS anyway.
MAX_ERROR_BYTES = 64 * 1024
# A server's model list, /props, /health, /metrics or /tokenize answer: a few kilobytes when real.
MAX_INFO_BYTES = 16 * 1024 * 1024
MESSAGE_CHARS = 200
MODEL_ID_CHARS = 512
# What stands in a message for a secret the server quoted back.
REDACTED = "***"
Redact = Callable[[str], str]


def _same(text: str) -> str:
    return text


class AnswerError(Exception):
    """A server's answer that cannot be used; ``kind`` names the class and ``str()`` is one sentence."""

    kind = "bad shape"


class BadBody(AnswerError):
    """The answer's bytes are not JSON (or more bytes than are read)."""

    kind = "bad body"


class BadShape(AnswerError):
    """The answer is JSON, but not the embeddings (or the model list) that were asked for."""

    kind = "bad shape"


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
        size = f"declares {declared / 2**20:,.0f} MiB" if declared is not None else "goes on"
        super().__init__(f"the answer {size}, more than the {limit / 2**20:g} MiB read of one answer")


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
    declared = response.headers.get("content-length", "").strip()
    if not cut and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise _Oversize(limit, int(declared))
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
        # The length every vector of this run must have: fixed by the first answer, checked on each
        # later one (the load workload asks from many threads, hence the lock).
        self._dim: int | None = None
        self._dim_lock = threading.Lock()
        # Vectors of all zeros met by similarity(): their cosine is undefined, which the run notes.
        self._zero_vectors = 0

    # -- before the run ------------------------------------------------------------------------------
    def resolve(self) -> None:
        """Before the run: the URL answers (one sentence if not), and the local server's process is known."""
        self._api_key()
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
        if not _is_count(n):
            n = self._props.get("n_ctx")
        return int(n) if _is_count(n) and n else None

    # -- credentials ------------------------------------------------------------------------------------
    def _api_key(self) -> str | None:
        """The API key from the variable --api-key-env names (None without the option); a UserError,
        naming the variable and never the key, for one that no HTTP header can carry as it is."""
        name = self.spec.api_key_env
        if name is None:
            return None
        key = os.environ.get(name, "")
        if not key:
            raise UserError(f"--api-key-env names {one_line(name)}, but that environment variable is not set")
        # httpx would refuse these with a message that quotes the whole header, the key in it.
        where = f"the API key in ${one_line(name)}"
        if any(c in "\r\n" for c in key):
            raise UserError(f"{where} holds a control character (a pasted line end?): set it without")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
            raise UserError(f"{where} holds a control character: set it without")
        if not key.isascii():
            raise UserError(f"{where} holds a character that is not ASCII, which an HTTP header cannot carry (a pasted quote?)")
        if key != key.strip():
            raise UserError(f"{where} begins or ends with a space: set it without")
        return key

    def _basic_auth(self) -> tuple[str, str] | None:
        """The URL's user:password@ as basic auth, percent-decoded (a password may hold @ : / as %40 %3A
        %2F); None without them, or when an API key (a bearer token) is sent instead."""
        parts = urlsplit(self.spec.url)
        if parts.username is None or self.spec.api_key_env:
            return None
        return unquote(parts.username), unquote(parts.password or "")

    def _secrets(self) -> list[str]:
        """Every text that would give away a credential: the API key and the Authorization value it
        makes, the URL's user and password as written and decoded, and the basic-auth token. Longest
        first, so that a whole header value goes before the key inside it."""
        found: set[str] = set()
        if self.spec.api_key_env:
            key = os.environ.get(self.spec.api_key_env, "")
            found.update((key, key.strip(), f"Bearer {key}"))
        parts = urlsplit(self.spec.url)
        for written in (parts.username, parts.password):
            if written:
                found.update((written, unquote(written)))
        if parts.username is not None:
            user, password = unquote(parts.username), unquote(parts.password or "")
            # As httpx writes basic auth: base64 of the UTF-8 user:password.
            token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
            found.update((token, f"Basic {token}"))
        return sorted((s for s in found if s), key=len, reverse=True)

    def _redact(self, text: str) -> str:
        """``text`` with every secret (see _secrets) replaced by ***: the one pass every message from the
        server or the connection goes through before it leaves the target, done before a message is
        cut short, so that no part of a secret survives at the cut either."""
        for secret in self._secrets():
            text = text.replace(secret, REDACTED)
        return text

    # -- the connection ---------------------------------------------------------------------------------
    def _new_client(self) -> Any:
        import httpx

        # identity: a server that compresses its answer (cpp-httplib gzips when asked) would spend
        # milliseconds on it for every request and the time would read as the model's.
        headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
        key = self._api_key()
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return httpx.Client(
            base_url=strip_credentials(self.base),
            headers=headers,
            auth=self._basic_auth(),
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

    def _get(self, path: str, limit: int = MAX_INFO_BYTES, **kwargs: Any) -> tuple[int, bytes]:
        """A GET's status and body, read to no more than ``limit`` bytes."""
        with self.client.stream("GET", path, **kwargs) as r:
            return r.status_code, _read_capped(r, limit)

    def _reach(self) -> None:
        """One sentence (a UserError) for every way the server can fail to be one, before anything is measured."""
        try:
            self._reach_once()
        except UserError as exc:
            raise UserError(self._redact(str(exc))) from None

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
                    self._props = _props_of(decode_answer(props))
            else:
                status, models = self._get(where)
                # The list is read only for the name to send; a name given on the command line needs none.
                if status == 200 and self._model_name is None:
                    self._model_name = model_id_of(decode_answer(models))
            if status in (401, 403):
                raise UserError(f"the server at {self.url} refused the credentials (HTTP {status}); see --api-key-env")
        except httpx.ConnectError as exc:
            raise UserError(f"cannot connect to {self.url}: {_reason(exc, self._redact)} (is the server running?)") from None
        except httpx.TimeoutException:
            raise UserError(f"{self.url} did not answer within {self.spec.timeout_s:g} s") from None
        except (UnicodeError, httpx.InvalidURL) as exc:  # a host name no resolver takes (IDNA: an empty or long label)
            raise UserError(f"cannot connect to {self.url}: its host name is not valid ({_reason(exc, self._redact)})") from None
        except httpx.HTTPError as exc:  # closed without answering, a broken HTTP answer …
            raise UserError(f"the connection to {self.url} failed at {where}: {_reason(exc, self._redact)}") from None
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
            "model_name": self._redact(self._model_name or self._server_model_file() or self.url),
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
            facts["server_build"] = _clip(self._redact(str(build)), MODEL_ID_CHARS) if isinstance(build, (str, int, float)) else None
            facts["server_model_file"] = self._server_model_file()
        return TargetFacts(**facts)

    def _server_model_file(self) -> str | None:
        path = self._props.get("model_path")
        return _clip(self._redact(os.path.basename(path)), MODEL_ID_CHARS) if isinstance(path, str) and path else None

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
        if self.spec.api == "llama":
            return "/embedding", {"content": chunk, "embd_normalize": 2}
        body: dict[str, Any] = {"input": chunk, "encoding_format": "float"}
        body["model"] = self._model_name or "default"
        return "/v1/embeddings", body

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
                                  status=status, error_kind=kind, error=self._redact(message))

        t0 = time.perf_counter_ns()
        try:
            with client.stream("POST", path, content=data) as r:
                status = r.status_code
                if not 200 <= r.status_code < 300:
                    raw = _read_capped(r, MAX_ERROR_BYTES, t0, self.spec.timeout_s, cut=True)
                    return self._http_error(r, raw, failed)
                raw = _read_capped(r, MAX_ANSWER_BYTES, t0, self.spec.timeout_s)
            received = time.perf_counter_ns() - t0
        except Exception as exc:  # whatever stopped the answer arriving is this request's failure, not the run's crash
            return failed(_classify(exc), _reason(exc, self._redact))
        try:
            vectors, tokens = self.parse(decode_answer(raw), len(chunk))
        except BadBody:
            # Its sentence quotes the answer's start, cut short: said again with the secrets out first.
            return failed(BadBody.kind, _not_json(raw, self._redact))
        except AnswerError as exc:
            return failed(exc.kind, str(exc))
        return RequestOutcome(duration_ns=time.perf_counter_ns() - t0, items=len(chunk), sent=len(data), received=len(raw),
                              status=status, vectors=vectors, tokens=tokens, received_ns=received)

    def _http_error(self, r: Any, raw: bytes, failed: Callable[[str, str], RequestOutcome]) -> RequestOutcome:
        message = _server_message(raw, self._redact)
        if TOO_LARGE.search(message):
            return failed("too large", TOO_LARGE_HINT)
        reason = _clip(self._redact(r.reason_phrase or ""), 60)
        head = f"HTTP {r.status_code}" + (f" ({reason})" if reason else "")
        if 300 <= r.status_code < 400:
            # Redirects are not followed: an embedding server that moved is given by its new URL.
            location = _clip(self._redact(r.headers.get("location", "")), MESSAGE_CHARS)
            return failed(f"http {r.status_code}", f"{head}: redirects to '{location}'; give that URL to --server")
        if not message:
            return failed(f"http {r.status_code}", f"{head} with no message")
        # A message that only repeats the status's name adds nothing to it.
        return failed(f"http {r.status_code}", head if message.lower() == reason.lower() else f"{head}: {message}")

    def parse(self, parsed: Any, n: int) -> tuple[np.ndarray, int | None]:
        """A decoded answer as (n × dim float32 matrix, tokens reported), its dim the same as the run's
        earlier answers; a BadShape otherwise."""
        vectors, tokens = embeddings_of(parsed, n, self.spec.api)
        if n:
            dim = int(vectors.shape[1])
            with self._dim_lock:
                if self._dim is None:
                    self._dim = dim
                known = self._dim
            # A run's vectors are compared and stacked: one answer of another length would break all of them.
            if dim != known:
                raise BadShape(f"this answer's vectors have {dim} numbers, the server's earlier ones {known}")
        return vectors, tokens

    def token_lengths(self, texts: Sequence[str], prompt: str | None) -> list[int]:
        """llama.cpp's own tokenizer through /tokenize; nothing for other servers."""
        if self.spec.api != "llama" or len(texts) > 2000:
            return []
        out = []
        for t in texts:
            try:
                with self.client.stream("POST", "/tokenize", json={"content": (prompt or "") + t, "add_special": True}) as r:
                    tokens = orjson.loads(_read_capped(r, MAX_INFO_BYTES))["tokens"]
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


# -- reading answers -------------------------------------------------------------------------------------
# Pure functions of the answer, so that they can be tried on any input: each returns a well-formed
# result or raises an AnswerError, and nothing else.

_NUMBERS = frozenset({int, float})  # exact types: a JSON true/false (bool, an int subclass) is no number
_JSON_NAMES: dict[type, str] = {str: "strings", bool: "true/false", type(None): "nulls", list: "nested lists", dict: "objects"}


def decode_answer(raw: bytes) -> Any:
    """An answer's bytes as JSON values; BadBody when they are not JSON."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    # Python's json reads what orjson refuses: NaN and Infinity literals (Python servers write them),
    # integers past 64 bits, UTF-16. Those answers are then judged by their values ("not finite"),
    # which says more than "not JSON".
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        pass
    raise BadBody(_not_json(raw))


def _not_json(raw: bytes, redact: Redact = _same) -> str:
    # Far more than _clip looks at: a secret that starts in the part shown is redacted whole.
    text = redact(raw[:4096].decode("utf-8", "replace")).strip()
    if not text:
        return "the answer is empty, not JSON"
    what = "HTML" if text.startswith("<") else "cut off or malformed" if text[0] in "[{" else "text"
    return f"the answer is {what}, not JSON: '{_clip(text, 60)}'"


def embeddings_of(parsed: Any, n: int, api: str) -> tuple[np.ndarray, int | None]:
    """A decoded answer to ``n`` texts as an (n × dim) float32 matrix, every number finite, and the
    prompt tokens the server reports (None when it reports none); BadShape otherwise.

    openai: ``{"data": [{"index": i, "embedding": [...]}, ...], "usage": {"prompt_tokens": t}}``.
    llama: a list of ``{"index": i, "embedding": [[...]]}`` (or the older flat vector), or one such object.
    Items are put in ``index`` order, as OpenAI's clients do; an answer without any index is taken in order.
    """
    tokens: int | None = None
    if api == "openai":
        if not isinstance(parsed, dict):
            raise BadShape(f"the answer is a JSON {_json_type(parsed)}, not an object (not an OpenAI embeddings response)")
        items = parsed.get("data")
        if not isinstance(items, list):
            raise BadShape("the answer has no 'data' list (not an OpenAI embeddings response)")
        tokens = _token_count(parsed.get("usage"))
    elif isinstance(parsed, list):
        items = parsed
    elif isinstance(parsed, dict):
        items = [parsed]
    else:
        raise BadShape(f"the answer is a JSON {_json_type(parsed)}, neither a list nor an object of embeddings")
    if len(items) != n:
        raise BadShape(f"{n} texts were sent, {len(items)} embeddings came back")
    for item in items:
        if not isinstance(item, dict):
            raise BadShape(f"an item of the answer is a JSON {_json_type(item)}, not an object")
    rows = [_row(items[i], api) for i in _index_order(items)]
    if not rows:
        return np.zeros((0, 0), dtype=np.float32), tokens
    lengths = {len(r) for r in rows}
    if len(lengths) > 1:
        raise BadShape(f"the vectors of one answer differ in length ({min(lengths)} to {max(lengths)} numbers)")
    if 0 in lengths:
        raise BadShape("an embedding is empty")
    try:
        with np.errstate(all="ignore"):  # a number past float32's range becomes inf, refused below
            matrix = np.array(rows, dtype=np.float32)
    except (ValueError, TypeError, OverflowError):  # an integer too large for any float
        raise BadShape("an embedding holds a number too large for a float") from None
    if matrix.ndim != 2 or not np.isfinite(matrix).all():
        raise BadShape("an embedding holds a number that is not finite (NaN, Infinity, or beyond float32)")
    return matrix, tokens


def _index_order(items: list[dict[str, Any]]) -> list[int]:
    """The positions of the items in their 'index' order: each index an integer, 0 … n-1 once each."""
    indexes = [item.get("index") for item in items]
    missing = sum(i is None for i in indexes)
    if missing == len(items):
        return list(range(len(items)))
    if missing:
        raise BadShape(f"{missing} of the answer's {len(items)} items have no 'index'")
    order: list[int | None] = [None] * len(items)
    for pos, i in enumerate(indexes):
        if type(i) is not int:
            raise BadShape(f"an 'index' is a JSON {_json_type(i)}, not an integer")
        if not 0 <= i < len(items):
            raise BadShape(f"an 'index' is {_clip(str(i), 24)}, outside 0 to {len(items) - 1}")
        if order[i] is not None:
            raise BadShape(f"the 'index' {i} comes twice in one answer")
        order[i] = pos
    return [pos for pos in order if pos is not None]


def _row(item: dict[str, Any], api: str) -> list[Any]:
    """An item's vector as a flat list of numbers (values still to be checked finite)."""
    if "embedding" not in item:
        raise BadShape("an item of the answer has no 'embedding'")
    emb = item["embedding"]
    if isinstance(emb, str):
        raise BadShape("an embedding is a string, not a list of numbers (embprof asks for encoding_format float)")
    if not isinstance(emb, list):
        raise BadShape(f"an embedding is a JSON {_json_type(emb)}, not a list of numbers")
    # llama.cpp nests the pooled vector in a list of one; with --pooling none, one vector per token.
    if api == "llama" and emb and all(isinstance(v, list) for v in emb):
        if len(emb) != 1:
            raise BadShape("the server returns one vector per token (pooling none): start it with --pooling mean (or cls, last)")
        emb = emb[0]
    kinds = set(map(type, emb))
    if not kinds <= _NUMBERS:
        bad = sorted({_JSON_NAMES.get(k, "non-numbers") for k in kinds - _NUMBERS})
        raise BadShape(f"an embedding holds {' and '.join(bad)} where numbers belong")
    return emb


def _token_count(usage: Any) -> int | None:
    tokens: Any = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    return int(tokens) if _is_count(tokens) else None


def _is_count(value: Any) -> bool:
    """A whole, non-negative, finite JSON number (not true/false)."""
    if type(value) is int:
        return value >= 0
    return type(value) is float and value >= 0 and value.is_integer()


def model_id_of(parsed: Any) -> str:
    """The first model's id in a decoded ``/v1/models`` answer; BadShape when there is none to use."""
    data = parsed.get("data") if isinstance(parsed, dict) else None
    if not isinstance(data, list):
        raise BadShape("its model list has no 'data' list")
    if not data:
        raise BadShape("its model list is empty")
    first = data[0]
    model = first.get("id") if isinstance(first, dict) else None
    if not isinstance(model, str) or not model.strip():
        raise BadShape("its first model has no 'id' text")
    if len(model) > MODEL_ID_CHARS:
        raise BadShape(f"its first model's id is {len(model):,} characters long")
    return model


def parse_answer(raw: bytes, n: int, api: str) -> tuple[np.ndarray, int | None]:
    """An answer's bytes to ``n`` texts as embeddings_of returns them; BadBody or BadShape otherwise."""
    return embeddings_of(decode_answer(raw), n, api)


def _props_of(parsed: Any) -> dict[str, Any]:
    """llama.cpp's /props: an object of facts; each is checked where it is used."""
    if not isinstance(parsed, dict):
        raise BadShape(f"/props is a JSON {_json_type(parsed)}, not an object")
    return parsed


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return "number"
    names: dict[type, str] = {str: "string", list: "list", dict: "object"}
    return names.get(type(value), type(value).__name__)


def _server_message(raw: bytes, redact: Redact = _same) -> str:
    """What an error answer says, as one line of at most MESSAGE_CHARS: its JSON message, or its text,
    passed through ``redact`` before it is cut."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    found: Any = None
    if isinstance(body, dict):
        err = body.get("error")
        found = err.get("message") if isinstance(err, dict) else err
        found = found or body.get("message") or body.get("detail")
    elif isinstance(body, str):
        found = body
    # Only a string is taken as is; anything else is shown as the answer's own text (no repr of
    # a server's nested values, which could be deep enough to fail).
    text = found if isinstance(found, str) else raw.decode("utf-8", "replace")
    # Whole, before any part is taken out of it below: a secret cut in two would no longer be found.
    text = redact(text)
    if body is None:  # not JSON, or JSON cut at the read limit: its message may still be there
        cut = re.search(r'"message"\s*:\s*"((?:[^"\\]|\\.)*)', text[:MAX_ERROR_BYTES])
        text = cut.group(1) if cut else text
    if text.lstrip().startswith("<"):  # an HTML page: its title, or its text without the tags
        # Only the page's start: the message is cut to MESSAGE_CHARS anyway, and these patterns
        # would take quadratic time over a long page of unclosed tags.
        head = text[:8192]
        title = re.search(r"<title[^>]*>(.*?)</title", head, re.I | re.S)
        text = title.group(1) if title else re.sub(r"<[^>]*>", " ", head)
    return _clip(text, MESSAGE_CHARS)


def _clip(text: str, limit: int) -> str:
    """Server text as one line (controls escaped, whitespace runs collapsed), cut to ``limit`` characters.

    Only the text's first ``limit`` × 8 characters are looked at: a text read to a size limit may end
    in part of a secret, which redaction cannot recognize, and a long run of whitespace must not bring
    that end into what is shown."""
    line = one_line(" ".join(text[: limit * 8].split()))
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _reason(exc: BaseException, redact: Redact = _same) -> str:
    """An exception's first line, for a message: ``redact``ed, then cut to MESSAGE_CHARS."""
    text = redact(str(exc)).strip() or exc.__class__.__name__
    low = text.lower()
    if "name or service not known" in low or "nodename nor servname" in low or "temporary failure in name resolution" in low:
        return "the host name does not resolve (DNS)"
    if "connection refused" in low:
        return "connection refused"
    return _clip(text.splitlines()[0], MESSAGE_CHARS)
