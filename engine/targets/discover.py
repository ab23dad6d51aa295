"""Which embedding API a URL serves, found by asking the server, never by guessing.

People serve embedding models with llama.cpp, text-embeddings-inference (TEI), infinity, vLLM, Ollama
and hosted OpenAI-compatible APIs; each answers its own routes, and an OpenAI-compatible one may sit
under ``/v1``, under no prefix at all (infinity's default) or under any prefix the URL already holds.
On connect, ``discover`` asks the routes that only one kind of server answers, in this order:

==================  ============================================  ===============================
route               answered by (the field that tells)            API then used
==================  ============================================  ===============================
``GET /health``     every server but Ollama: 503 is "loading"     (no API by itself)
``GET /props``      llama.cpp (``default_generation_settings``)   ``llama``: ``POST /embedding``
``GET /info``       TEI (``model_id`` and ``max_input_length``)   ``tei``: ``POST /embed``
``GET /api/version``  Ollama (``version``)                         ``ollama``: ``POST /api/embed``
``GET /v1/models``  OpenAI-compatible under ``/v1``               ``openai``: ``POST /v1/embeddings``
``GET /models``     OpenAI-compatible under the URL itself        ``openai``: ``POST /embeddings``
==================  ============================================  ===============================

The models list also says which OpenAI-compatible server it is where the server marks it: infinity's
entries carry queue ``stats`` and a ``backend``, vLLM's are ``owned_by`` ``vllm``, llama.cpp's
``llamacpp``. What was found, and from which answer, is said in one sentence (``Found.how``), kept in
the snapshot. When nothing answers as an embedding server, the sentence names every route tried
and what each answered.

The caller sends the GETs (``Get``): it owns the connection, its deadline and its credentials, and
turns a connection's failure into its own sentence. Everything here is a function of the answers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from ..errors import UserError
from .protocol import MESSAGE_CHARS, MODEL_ID_CHARS, BadShape, clip, decode_answer, model_id_of, props_of

__all__ = ["API_CHOICES", "Api", "Found", "Get", "discover", "embed_path"]

Api = Literal["llama", "openai", "tei", "ollama"]
# What --api takes: one of the APIs, or auto (ask the server).
API_CHOICES = ("auto", "llama", "openai", "tei", "ollama")
# One GET of a route below the URL: (status, body as read, the path that answered).
Get = Callable[[str], tuple[int, bytes, str]]
# An OpenAI-compatible API's places, most common first: under /v1, then under the URL itself (infinity's default,
# or a URL that already ends in /v1 or in a gateway's own prefix).
OPENAI_PREFIXES = ("/v1", "")


@dataclass(frozen=True)
class Found:
    """What a URL serves: the API, where its embeddings route is, which server it is where it says so, and how that
    was found (one sentence)."""

    api: Api
    prefix: str = ""  # an OpenAI-compatible API's path below the URL ("/v1" or "")
    software: str | None = None  # "llama.cpp", "text-embeddings-inference", "infinity", "vLLM", "Ollama"; None: not said
    how: str = ""
    model: str | None = None  # the first model the server lists (OpenAI's list, Ollama's tags)
    props: dict[str, Any] = field(default_factory=dict)  # llama.cpp's /props
    info: dict[str, Any] = field(default_factory=dict)  # TEI's /info


def embed_path(api: Api, prefix: str = "/v1") -> str:
    """The route an API's embeddings are asked at."""
    return {"llama": "/embedding", "tei": "/embed", "ollama": "/api/embed"}.get(api, f"{prefix}/embeddings")


def _json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _text(value: Any) -> str | None:
    return clip(value, MODEL_ID_CHARS) if isinstance(value, str) and value.strip() else None


class _Asked:
    """The routes asked so far and what each answered, for the sentence that says so."""

    def __init__(self, get: Get) -> None:
        self._get = get
        self.said: list[str] = []
        self.answered = ""  # the path that answered the last GET (with the URL's own path before it)

    def __call__(self, path: str) -> tuple[int, Any, bytes]:
        """A route's status, its body as JSON (None: not a 2xx answer of JSON) and its bytes."""
        status, raw, self.answered = self._get(path)
        parsed = _json(raw) if 200 <= status < 300 else None
        self.said.append(f"{path} {status}" + (" (not JSON)" if 200 <= status < 300 and parsed is None else ""))
        if status in (401, 403):
            raise _Refused(status)
        return status, parsed, raw


class _Refused(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _openai_software(parsed: Any) -> str | None:
    """Which server a models list comes from, where its entries say so."""
    data = parsed.get("data") if isinstance(parsed, dict) else None
    first = data[0] if isinstance(data, list) and data and isinstance(data[0], dict) else {}
    owner = first.get("owned_by")
    if owner == "infinity" or ("stats" in first and "backend" in first):
        return "infinity"
    return {"vllm": "vLLM", "llamacpp": "llama.cpp"}.get(owner) if isinstance(owner, str) else None


def _openai(ask: _Asked, url: str, model: str | None, how: str) -> Found | None:
    """An OpenAI-compatible API under /v1 or the URL itself, by its models list: the first place that answers 200 is
    where the API is (what it answers must then be a models list); any other status moves on to the next."""
    for prefix in OPENAI_PREFIXES:
        status, parsed, _ = ask(f"{prefix}/models")
        if status != 200:
            continue
        if parsed is None:
            if model is not None:  # the list is read only for the name to send, and the name is given
                return Found("openai", prefix, None, f"{how}{prefix}/models answers, with no list (--server-model names the "
                                                     f"model): OpenAI-compatible, POST {prefix}/embeddings", model)
            raise UserError(f"{url}{prefix}/models answered with something that is not JSON: is it an embedding server? "
                            "(--server-model NAME names the model without the list)")
        name = model
        if name is None:
            try:
                name = model_id_of(parsed)
            except BadShape as exc:
                raise UserError(f"{url}{prefix}/models is not what an embedding server answers ({exc}): is it an "
                                "OpenAI-compatible server? (--server-model NAME names the model without the list)") from None
        software = _openai_software(parsed)
        said = f"{prefix}/models lists its models" + (f" as {software}'s" if software else "")
        return Found("openai", prefix, software, f"{how}{said}: OpenAI-compatible, POST {prefix}/embeddings", name)
    return None


def discover(get: Get, url: str, requested: str, model: str | None = None) -> Found:
    """What the server at ``url`` serves, asked through ``get``; ``requested`` is --api (auto: find it), ``model``
    --server-model. A UserError of one sentence when the server is loading, refuses the credentials, or serves none
    of the APIs asked for (naming every route tried and its answer)."""
    ask = _Asked(get)
    try:
        return _discover(ask, url, requested, model)
    except _Refused as exc:
        raise UserError(f"the server at {url} refused the credentials (HTTP {exc.status}); see --api-key-env") from None


def _loading(url: str, route: str) -> UserError:
    return UserError(f"the server at {url} is still loading its model ({route} says 503); try again")


def _discover(ask: _Asked, url: str, requested: str, model: str | None) -> Found:
    if requested == "llama":
        return _llama(ask, url)
    if requested == "openai":
        found = _openai(ask, url, model, "--api openai: ")
        if found is not None:
            return found
        if model is not None:  # a hosted API may list no models: the name given is enough, at the usual place
            return Found("openai", "/v1", None, "--api openai with --server-model (no models list answered): POST /v1/embeddings", model)
        raise UserError(f"{url} answers no OpenAI-compatible models list (tried {', '.join(ask.said)}): give the URL the "
                        "API sits under (with or without /v1), or the model's name with --server-model")
    if requested == "tei":
        status, info, _ = ask("/info")
        if status != 200 or not isinstance(info, dict):
            raise UserError(f"{url}/info answered {status}: the server is not text-embeddings-inference, or the URL is not its "
                            "root (--api auto finds which API a server serves)")
        return Found("tei", software="text-embeddings-inference", how="--api tei: POST /embed", model=_text(info.get("model_id")),
                     info=info)
    if requested == "ollama":
        found = _ollama(ask, url, model, "--api ollama: ", required=True)
        assert found is not None  # required: a UserError otherwise
        return found
    return _auto(ask, url, model)


def _llama(ask: _Asked, url: str) -> Found:
    """llama.cpp's native API, as asked for: its health must answer, its /props (when it answers) must be an object."""
    status, _, _ = ask("/health")
    if status == 503:
        raise _loading(url, "/health")
    if status == 404:  # llama.cpp answers its health: a 404 is another server, or a URL with a path too many
        raise UserError(f"{clip(ask.answered, MESSAGE_CHARS)} answered 404 (Not Found): the server at {url} is not "
                        "llama.cpp's, or the URL is not its root (--api auto finds which API a server serves)")
    status, _, raw = ask("/props")
    props = props_of(decode_answer(raw)) if status == 200 else {}
    return Found("llama", software="llama.cpp", how="--api llama: POST /embedding", props=props)


def _ollama(ask: _Asked, url: str, model: str | None, how: str, *, required: bool) -> Found | None:
    status, version, _ = ask("/api/version")
    if status != 200 or not isinstance(version, dict) or not isinstance(version.get("version"), str):
        if required:
            raise UserError(f"{url}/api/version answered {status}: the server is not Ollama, or the URL is not "
                            "its root (--api auto finds which API a server serves)")
        return None
    name = model
    if name is None:
        tags_status, tags, _ = ask("/api/tags")
        models = tags.get("models") if tags_status == 200 and isinstance(tags, dict) else None
        first = models[0] if isinstance(models, list) and models and isinstance(models[0], dict) else {}
        name = _text(first.get("name") or first.get("model"))
        if name is None:
            raise UserError(f"the Ollama server at {url} lists no models (/api/tags): pull one, or name it with --server-model")
    return Found("ollama", software="Ollama", how=f"{how}/api/version answers Ollama's version: POST /api/embed", model=name)


def _auto(ask: _Asked, url: str, model: str | None) -> Found:
    health, _, _ = ask("/health")
    if health == 503:
        raise _loading(url, "/health")
    status, props, _ = ask("/props")
    if status == 200 and isinstance(props, dict) and ("default_generation_settings" in props or "build_info" in props):
        return Found("llama", software="llama.cpp", how="found: /props answers llama.cpp's settings: POST /embedding",
                     props=props)
    status, info, _ = ask("/info")
    if status == 200 and isinstance(info, dict) and "model_id" in info and "max_input_length" in info:
        return Found("tei", software="text-embeddings-inference", model=_text(info.get("model_id")), info=info,
                     how="found: /info answers text-embeddings-inference's model facts: POST /embed")
    found = _ollama(ask, url, model, "found: ", required=False)
    if found is not None:
        return found
    found = _openai(ask, url, model, "found: ")
    if found is not None:
        return found
    said = ", ".join(ask.said)
    raise UserError(clip(f"{url} serves no embedding API embprof knows (tried {said}): give the server's root URL, "
                         "or the API with --api", MESSAGE_CHARS * 2))
