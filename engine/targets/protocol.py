"""What embprof says to an embedding server and how it reads the answer, as plain functions: the
request's payload and headers, the credentials, their redaction, and the classification of every
answer, shared by the synchronous client (HttpTarget) and the load generator's asynchronous one.

Four APIs: llama.cpp's native ``POST /embedding``, the OpenAI-compatible ``POST {prefix}/embeddings``
(served by llama.cpp, vLLM, TEI, infinity, Ollama, hosted APIs; under /v1 or any prefix), TEI's native
``POST /embed`` and Ollama's native ``POST /api/embed``; which one a URL serves is ``discover``'s. No client object lives here: each client sends, reads
the answer's bytes to a size limit, and hands status, headers and bytes to ``classify_answer``.

A server's answer is data from outside: it either becomes a float matrix of exactly one vector per
text sent (every vector as long as every other one of the run, every number finite) or a failure
of a named kind ("bad body", "bad shape", "http 429", "too large" …) with one short sentence. A
server's own message is kept to 200 characters.

The API key is read from an environment variable the user names and sent as a bearer token; it and
any credentials in the URL are never written anywhere: a server may quote them back in its messages,
so every text from the server or the connection goes through ``redact`` before it is kept.
"""

from __future__ import annotations

import base64
import json
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np
import orjson

from ..errors import UserError
from ..plan import ServerTarget
from ..text import one_line

__all__ = ["AnswerError", "BadBody", "BadShape", "Failure", "Redact", "Vectors", "Width", "api_key", "auth_header",
           "basic_auth", "classify_answer", "clip", "declared_length", "decode_answer", "embeddings_of", "header_tokens", "is_count",
           "model_id_of", "not_json", "oversize_message", "parse_answer", "props_of", "reason", "redact_secrets",
           "request_payload", "secrets", "server_message"]

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
# identity: a server that compresses its answer (cpp-httplib gzips when asked) would spend
# milliseconds on it for every request and the time would read as the model's.
BASE_HEADERS = {"Content-Type": "application/json", "Accept-Encoding": "identity"}

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


# -- the request -----------------------------------------------------------------------------------------
def request_payload(api: str, chunk: list[str], model: str | None, prefix: str = "/v1") -> tuple[str, dict[str, Any]]:
    """The path and JSON body of one embedding request for ``chunk``; ``model`` is the model's name for the
    APIs that take one (OpenAI's, Ollama's: the server's first model, or --server-model); ``prefix`` is where an
    OpenAI-compatible API sits below the URL ("/v1", or "" where the URL itself is its root)."""
    if api == "llama":
        return "/embedding", {"content": chunk, "embd_normalize": 2}
    if api == "tei":
        # TEI's own defaults (its vectors normalized, an over-long input refused rather than cut), said explicitly.
        return "/embed", {"inputs": chunk, "normalize": True, "truncate": False}
    if api == "ollama":
        return "/api/embed", {"model": model or "default", "input": chunk}
    return f"{prefix}/embeddings", {"input": chunk, "encoding_format": "float", "model": model or "default"}


# -- credentials -----------------------------------------------------------------------------------------
def api_key(spec: ServerTarget) -> str | None:
    """The API key from the variable --api-key-env names (None without the option); a UserError,
    naming the variable and never the key, for one that no HTTP header can carry as it is."""
    name = spec.api_key_env
    if name is None:
        return None
    key = os.environ.get(name, "")
    if not key:
        raise UserError(f"--api-key-env names {one_line(name)}, but that environment variable is not set")
    # An HTTP client would refuse these with a message that quotes the whole header, the key in it.
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


def auth_header(spec: ServerTarget) -> dict[str, str]:
    """The Authorization header the API key makes, or none without a key."""
    key = api_key(spec)
    return {} if key is None else {"Authorization": f"Bearer {key}"}


def basic_auth(spec: ServerTarget) -> tuple[str, str] | None:
    """The URL's user:password@ as basic auth, percent-decoded (a password may hold @ : / as %40 %3A
    %2F); None without them, or when an API key (a bearer token) is sent instead."""
    parts = urlsplit(spec.url)
    if parts.username is None or spec.api_key_env:
        return None
    return unquote(parts.username), unquote(parts.password or "")


def basic_auth_header(user_password: tuple[str, str]) -> str:
    """The Authorization value of basic auth as httpx writes it: base64 of the UTF-8 ``user:password``. The load
    client writes this header itself (aiohttp's own BasicAuth is deprecated and writes Latin-1), so both clients
    send the same bytes and ``secrets`` knows the token either sends."""
    return "Basic " + base64.b64encode(":".join(user_password).encode()).decode("ascii")


def secrets(spec: ServerTarget) -> list[str]:
    """Every text that would give away a credential: the API key and the Authorization value it
    makes, the URL's user and password as written and decoded, and the basic-auth token. Longest
    first, so that a whole header value goes before the key inside it."""
    found: set[str] = set()
    if spec.api_key_env:
        key = os.environ.get(spec.api_key_env, "")
        found.update((key, key.strip(), f"Bearer {key}"))
    parts = urlsplit(spec.url)
    for written in (parts.username, parts.password):
        if written:
            found.update((written, unquote(written)))
    if parts.username is not None:
        header = basic_auth_header((unquote(parts.username), unquote(parts.password or "")))
        found.update((header, header.removeprefix("Basic ")))
    return sorted((s for s in found if s), key=len, reverse=True)


def redact_secrets(spec: ServerTarget, text: str) -> str:
    """``text`` with every secret (see ``secrets``) replaced by ***: the one pass every message from the
    server or the connection goes through before it is kept, done before a message is cut short, so
    that no part of a secret survives at the cut either."""
    for secret in secrets(spec):
        text = text.replace(secret, REDACTED)
    return text


# -- reading answers -------------------------------------------------------------------------------------
# Pure functions of the answer, so that they can be tried on any input: each returns a well-formed
# result or raises an AnswerError, and nothing else.

_NUMBERS = frozenset({int, float})  # exact types: a JSON true/false (bool, an int subclass) is no number
_JSON_NAMES: dict[type, str] = {str: "strings", bool: "true/false", type(None): "nulls", list: "nested lists", dict: "objects"}


@dataclass(frozen=True, slots=True)
class Vectors:
    """An answer that is the embeddings asked for."""

    matrix: np.ndarray  # float32, one row per text sent
    tokens: int | None  # the prompt tokens the server reports; None when it reports none


@dataclass(frozen=True, slots=True)
class Failure:
    """An answer that is not: its kind ("http 503", "too large", "bad body", "bad shape" …) and one sentence."""

    kind: str
    message: str


class Width:
    """The length every vector of a run must have: fixed by the first answer, checked on each later one.

    A run's vectors are compared and stacked: one answer of another length would break all of them.
    The synchronous client is asked from many threads (the load workload's warm-up beside the rest),
    hence the lock; in an event loop it is never contended."""

    def __init__(self) -> None:
        self._dim: int | None = None
        self._lock = threading.Lock()

    def check(self, dim: int) -> None:
        """Accept a vector length, or raise BadShape when it is not the run's."""
        with self._lock:
            if self._dim is None:
                self._dim = dim
            known = self._dim
        if dim != known:
            raise BadShape(f"this answer's vectors have {dim} numbers, the server's earlier ones {known}")


def classify_answer(status: int, raw: bytes, n: int, api: str, *, reason_phrase: str = "", location: str = "",
                    path: str = "", width: Width | None = None, redact: Redact = _same) -> Vectors | Failure:
    """The one reading of a server's answer to ``n`` texts, whichever client sent them: its vectors, or
    the failure's kind and sentence (with whatever came from the server passed through ``redact``).

    ``raw`` is the body as read: all of a 2xx answer (to MAX_ANSWER_BYTES), the start of any other
    (MAX_ERROR_BYTES); ``reason_phrase`` and ``location`` are the status line's reason and the
    Location header. Redirects are not followed by either client: one is a failure that names where
    the server moved. ``path``: the URL path that answered (a 404 names it). ``width``, when given,
    holds the run's vector length."""
    if not 200 <= status < 300:
        return _error_answer(status, raw, reason_phrase, location, path, redact)
    try:
        matrix, tokens = embeddings_of(decode_answer(raw), n, api)
        if width is not None and n:
            width.check(int(matrix.shape[1]))
    except BadBody:
        # Its sentence quotes the answer's start, cut short: said again with the secrets out first.
        return Failure(BadBody.kind, not_json(raw, redact))
    except AnswerError as exc:
        return Failure(exc.kind, str(exc))
    return Vectors(matrix, tokens)


def _error_answer(status: int, raw: bytes, reason_phrase: str, location: str, path: str, redact: Redact) -> Failure:
    """A status outside 2xx: llama.cpp's "too large" (with what to do about it), a redirect (with where
    to), or the status with the server's own message; a 404 names the path that answered it (a URL
    with a path too many, or the other API's)."""
    message = server_message(raw, redact)
    if TOO_LARGE.search(message):
        return Failure("too large", TOO_LARGE_HINT)
    reason_text = clip(redact(reason_phrase), 60)
    said = f" ({reason_text})" if reason_text else ""
    head = f"{clip(redact(path), MESSAGE_CHARS)} answered {status}{said}" if status == 404 and path else f"HTTP {status}{said}"
    kind = f"http {status}"
    if 300 <= status < 400:
        # Redirects are not followed: an embedding server that moved is given by its new URL.
        return Failure(kind, f"{head}: redirects to '{clip(redact(location), MESSAGE_CHARS)}'; give that URL to --server")
    if not message:
        return Failure(kind, f"{head} with no message")
    # A message that only repeats the status's name adds nothing to it.
    return Failure(kind, head if message.lower() == reason_text.lower() else f"{head}: {message}")


def oversize_message(limit: int, declared: int | None = None) -> str:
    """Why an answer longer than what is read of one was refused (``declared``: its Content-Length)."""
    size = f"declares {declared / 2**20:,.0f} MiB" if declared is not None else "goes on"
    return f"the answer {size}, more than the {limit / 2**20:g} MiB read of one answer"


def declared_length(value: str | None) -> int | None:
    """A Content-Length header as a number of bytes; None when it is absent or not a plain number."""
    value = (value or "").strip()
    return int(value) if value.isascii() and value.isdigit() else None


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
    raise BadBody(not_json(raw))


def not_json(raw: bytes, redact: Redact = _same) -> str:
    """What an answer that is not JSON is instead, quoting its start (``redact``ed, then cut)."""
    # Far more than clip looks at: a secret that starts in the part shown is redacted whole.
    text = redact(raw[:4096].decode("utf-8", "replace")).strip()
    if not text:
        return "the answer is empty, not JSON"
    what = "HTML" if text.startswith("<") else "cut off or malformed" if text[0] in "[{" else "text"
    return f"the answer is {what}, not JSON: '{clip(text, 60)}'"


def embeddings_of(parsed: Any, n: int, api: str) -> tuple[np.ndarray, int | None]:
    """A decoded answer to ``n`` texts as an (n × dim) float32 matrix, every number finite, and the
    prompt tokens the server reports (None when it reports none); BadShape otherwise.

    openai: ``{"data": [{"index": i, "embedding": [...]}, ...], "usage": {"prompt_tokens": t}}``.
    llama: a list of ``{"index": i, "embedding": [[...]]}`` (or the older flat vector), or one such object.
    tei: a list of vectors, in the order sent. ollama: ``{"embeddings": [...], "prompt_eval_count": t}``.
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
    elif api in ("tei", "ollama"):
        # TEI's /embed: a list of vectors; Ollama's /api/embed: {"embeddings": [vectors], "prompt_eval_count": tokens}.
        if api == "ollama":
            if not isinstance(parsed, dict) or not isinstance(parsed.get("embeddings"), list):
                raise BadShape("the answer has no 'embeddings' list (not an Ollama /api/embed response)")
            count: Any = parsed.get("prompt_eval_count")
            tokens = int(count) if is_count(count) else None
            parsed = parsed["embeddings"]
        if not isinstance(parsed, list):
            raise BadShape(f"the answer is a JSON {_json_type(parsed)}, not a list of vectors (not a TEI /embed response)")
        items = [{"embedding": v} for v in parsed]
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
            raise BadShape(f"an 'index' is {clip(str(i), 24)}, outside 0 to {len(items) - 1}")
        if order[i] is not None:
            raise BadShape(f"the 'index' {i} comes twice in one answer")
        order[i] = pos
    return [pos for pos in order if pos is not None]


def _row(item: dict[str, Any], api: str) -> list[Any]:
    """An item's vector as a flat list of numbers (values still to be checked finite)."""
    if "embedding" not in item:
        raise BadShape("an item of the answer has no 'embedding'")
    emb: Any = item["embedding"]
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
    row: list[Any] = emb
    return row


def header_tokens(api: str, headers: Any) -> int | None:
    """The prompt tokens an answer's headers report: TEI's /embed says them only there (x-compute-tokens, the total
    over the inputs); None for any other API, or a value that is no count."""
    if api != "tei":
        return None
    value = str(headers.get("x-compute-tokens") or "").strip()
    return int(value) if value.isascii() and value.isdigit() else None


def _token_count(usage: Any) -> int | None:
    tokens: Any = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    return int(tokens) if is_count(tokens) else None


def is_count(value: Any) -> bool:
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


def props_of(parsed: Any) -> dict[str, Any]:
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


def server_message(raw: bytes, redact: Redact = _same) -> str:
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
    return clip(text, MESSAGE_CHARS)


def clip(text: str, limit: int) -> str:
    """Server text as one line (controls escaped, whitespace runs collapsed), cut to ``limit`` characters.

    Only the text's first ``limit`` × 8 characters are looked at: a text read to a size limit may end
    in part of a secret, which redaction cannot recognize, and a long run of whitespace must not bring
    that end into what is shown."""
    line = one_line(" ".join(text[: limit * 8].split()))
    return line if len(line) <= limit else line[: limit - 1] + "…"


def reason(exc: BaseException, redact: Redact = _same) -> str:
    """An exception's first line, for a message: ``redact``ed, then cut to MESSAGE_CHARS."""
    text = redact(str(exc)).strip() or exc.__class__.__name__
    low = text.lower()
    if "name or service not known" in low or "nodename nor servname" in low or "temporary failure in name resolution" in low:
        return "the host name does not resolve (DNS)"
    if "connection refused" in low:
        return "connection refused"
    return clip(text.splitlines()[0], MESSAGE_CHARS)
