"""The ONNX Runtime and OpenVINO targets with the real bundled model, against sentence-transformers itself."""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

from embprof.engine.context import RunContext  # noqa: E402
from embprof.engine.errors import UserError  # noqa: E402
from embprof.engine.events import BatchTimed, EncodeTimed, Event, EventBus  # noqa: E402
from embprof.engine.plan import LocalTarget  # noqa: E402
from embprof.engine.targets import bundled_model_dir, onnx_graph  # noqa: E402
from embprof.engine.targets.onnx import OnnxTarget  # noqa: E402
from embprof.engine.targets.onnx_graph import GraphInfo, ensure_graph  # noqa: E402

pytestmark = pytest.mark.slow

TEXTS = [
    "hello",
    "a",
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France?",
    "Paris is the capital and most populous city of France.",
    "Embeddings map text to vectors so that similar meanings lie close together.",
    "ONNX Runtime and OpenVINO run exported graphs on the CPU.",
    "日本語のテキストも埋め込めます。",
    "Ça va? Très bien, merci beaucoup!",
    "¿Dónde está la biblioteca?",
    "Привет, как дела?",
    "🙂 emoji and symbols: $%&*()[]{}",
    "1234567890 3.14159 2.71828",
    "   leading and trailing spaces   ",
    "UPPER CASE TEXT SHOULD BE LOWERED BY THE TOKENIZER",
    "def main():\n    print('code snippet')\n",
    "https://example.com/some/path?query=string&x=1",
    "A long sentence " + "that keeps going and going " * 20,
    "word " * 300,  # past max_seq_length: truncated
    "Short.",
    "The mitochondria is the powerhouse of the cell.",
    "Photosynthesis converts light energy into chemical energy.",
    "The stock market fell sharply on Tuesday amid inflation fears.",
    "She sells sea shells by the sea shore.",
    "To be, or not to be, that is the question.",
    "Machine learning models can be quantized to int8 to save memory.",
    "The weather today is sunny with a chance of rain in the evening.",
    "Tokenization splits text into word pieces.",
    "A dog.",
    "Two dogs playing in the park with a red ball.",
    "Quantum computing uses qubits.",
    "The recipe calls for two cups of flour and one egg.",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.",
    "Hyphenated-words and under_scores and CamelCase",
    "newline\nseparated\nlines",
    "tab\tseparated\tvalues",
    "The end.",
    "Is this the real life? Is this just fantasy?",
    "Neural networks learn representations from data.",
    "x",
]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One private cache for the module: the export happens once, not once per test."""
    path = tmp_path_factory.mktemp("embprof-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMBPROF_CACHE_DIR", str(path))
        yield path


@pytest.fixture(scope="module")
def first_graph(cache_dir: Path) -> GraphInfo:
    return ensure_graph(LocalTarget(device="cpu", backend="onnx"))


@pytest.fixture(scope="module")
def reference() -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(bundled_model_dir(), device="cpu")


@pytest.fixture(scope="module")
def reference_embeddings(reference: Any) -> np.ndarray:
    return np.asarray(reference.encode(TEXTS))


def _context() -> tuple[RunContext, list[Event]]:
    seen: list[Event] = []
    bus = EventBus()
    bus.subscribe(seen.append)
    return RunContext(bus), seen


def _embed(spec: LocalTarget, texts: list[str] = TEXTS, batch_size: int = 8) -> tuple[OnnxTarget, np.ndarray]:
    ctx, _ = _context()
    target = OnnxTarget(spec)
    target.load(ctx)
    try:
        return target, target.encode(ctx, texts, batch_size=batch_size).embeddings
    finally:
        target.close()


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
@pytest.mark.parametrize("truncate_dim", [None, 128])
def test_float32_agrees_with_sentence_transformers(
    first_graph: GraphInfo, reference: Any, reference_embeddings: np.ndarray, backend: str, truncate_dim: int | None
) -> None:
    expected = reference_embeddings if truncate_dim is None else np.asarray(reference.encode(TEXTS, truncate_dim=truncate_dim))
    target, got = _embed(LocalTarget(device="cpu", backend=backend, truncate_dim=truncate_dim))
    assert got.shape == expected.shape
    cos = _cosines(got, expected)
    assert cos.min() >= 1 - 1e-4, f"worst text: {TEXTS[int(cos.argmin())]!r} cosine {cos.min()}"
    facts = target.describe()
    assert facts.backend == backend and facts.quantize == "none" and facts.quantize_mode is None
    assert facts.embedding_dim == (truncate_dim or 384) and facts.max_seq_length == 256
    assert facts.graph_file == first_graph.path and facts.disk_bytes == os.path.getsize(first_graph.path)
    # float32 initializers: four bytes each, nearly all of the file.
    assert facts.parameters and facts.weights_bytes == 4 * facts.parameters
    assert 0.95 * facts.disk_bytes < facts.weights_bytes <= facts.disk_bytes
    assert facts.similarity_fn == "cosine" and facts.device_resolved == "cpu"


def test_int8_is_close_but_not_equal(first_graph: GraphInfo, reference_embeddings: np.ndarray) -> None:
    means: dict[str, float] = {}
    cosines: dict[str, np.ndarray] = {}
    sizes: dict[str, int] = {}
    for mode in ("per-channel", "per-tensor"):
        target, got = _embed(LocalTarget(device="cpu", backend="onnx", quantize="int8", quantize_mode=mode))  # type: ignore[arg-type]
        facts = target.describe()
        assert facts.quantize == "int8" and facts.quantize_mode == mode
        assert facts.disk_bytes is not None
        sizes[mode] = facts.disk_bytes
        cosines[mode] = _cosines(got, reference_embeddings)
        means[mode] = float(cosines[mode].mean())
    message = f"mean cosine per-channel {means['per-channel']:.4f}, per-tensor {means['per-tensor']:.4f}"
    for mode in means:
        assert cosines[mode].max() < 1.0, message
        assert means[mode] > 0.9, message
    # Scales per output channel fit the weights more closely than one scale per tensor.
    assert means["per-channel"] > means["per-tensor"], message
    for size in sizes.values():
        assert size < first_graph.disk_bytes / 3  # int8 weights: about a quarter of float32


def test_openvino_int8_records_no_mode(first_graph: GraphInfo, reference_embeddings: np.ndarray) -> None:
    target, got = _embed(LocalTarget(device="cpu", backend="openvino", quantize="int8", quantize_mode="per-tensor"))
    facts = target.describe()
    # nncf's INT8_ASYM is per output channel whatever the plan says: no mode is claimed.
    assert facts.quantize == "int8" and facts.quantize_mode is None
    assert facts.graph_file is not None and facts.graph_file.endswith(".xml")
    cos = _cosines(got, reference_embeddings)
    assert cos.max() < 1.0 and cos.mean() > 0.95, f"mean cosine {cos.mean():.4f}"


def test_second_ensure_graph_is_cached(first_graph: GraphInfo) -> None:
    assert not first_graph.cached and first_graph.seconds > 0
    before = os.stat(first_graph.path).st_mtime_ns
    again = ensure_graph(LocalTarget(device="cpu", backend="onnx"))
    assert again.cached and again.seconds == 0.0
    assert again.path == first_graph.path and again.disk_bytes == first_graph.disk_bytes
    assert os.stat(again.path).st_mtime_ns == before
    # No temporary folders are left beside the artifacts.
    assert not [p for p in Path(first_graph.path).parent.parent.iterdir() if p.name.startswith(".tmp-")]


def test_a_failed_build_leaves_nothing(cache_dir: Path) -> None:
    final = cache_dir / "onnx" / "broken"

    def build(out: Path) -> None:
        (out / "model.onnx").write_bytes(b"half a graph")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        onnx_graph.build_atomically(final, build)
    assert not final.exists()
    assert not [p for p in final.parent.iterdir() if p.name.startswith(".tmp-broken")]


def test_encode_emits_batch_and_call_events(first_graph: GraphInfo) -> None:
    ctx, seen = _context()
    target = OnnxTarget(LocalTarget(device="cpu", backend="onnx"))
    target.load(ctx)
    phases = [getattr(e, "name", None) for e in seen if e.kind == "phase_started"]
    assert phases == ["import", "load"]  # cached: no export phase
    assert target.graph is not None and target.graph.cached
    seen.clear()
    out = target.encode(ctx, TEXTS, batch_size=16, label="probe", group="g")
    batches = [e for e in seen if isinstance(e, BatchTimed)]
    calls = [e for e in seen if isinstance(e, EncodeTimed)]
    assert len(batches) == 3 and [b.batch_index for b in batches] == [0, 1, 2]
    assert sum(b.items for b in batches) == len(TEXTS)
    assert len(calls) == 1
    call = calls[0]
    assert call.label == "probe" and call.group == "g" and call.items == len(TEXTS)
    assert call.tokens == sum(b.tokens or 0 for b in batches) == out.tokens
    assert out.batches == 3 and call.duration_ns >= sum(b.duration_ns for b in batches)
    assert all(b.call_index == call.call_index for b in batches)
    lengths = target.token_lengths(TEXTS, None)
    assert call.tokens == sum(min(n, 256) for n in lengths)
    sim = target.similarity(out.embeddings[:2], out.embeddings)
    assert sim.shape == (2, len(TEXTS)) and abs(float(sim[0, 0]) - 1.0) < 1e-5
    target.close()


def test_a_fresh_cache_exports_inside_an_export_phase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBPROF_CACHE_DIR", str(tmp_path))
    ctx, seen = _context()
    target = OnnxTarget(LocalTarget(device="cpu", backend="onnx"))
    target.load(ctx)
    phases = [getattr(e, "name", None) for e in seen if e.kind == "phase_started"]
    assert phases == ["export", "import", "load"]
    assert target.graph is not None and not target.graph.cached
    assert Path(target.graph.path).is_relative_to(tmp_path)
    target.close()


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> Any:
        return None if name == "onnxruntime" else real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(UserError, match=r"embprof\[backends\]"):
        OnnxTarget(LocalTarget(device="cpu", backend="onnx")).resolve()
    with pytest.raises(UserError, match=r"embprof\[backends\]"):
        ensure_graph(LocalTarget(device="cpu", backend="onnx"))


def test_query_prompt_like_sentence_transformers(cache_dir: Path, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    # A look-alike of the bundled model that declares prompts: the files are linked, not copied.
    source = Path(bundled_model_dir())
    folder = tmp_path / "minilm-with-prompts"
    folder.mkdir()
    for item in source.iterdir():
        if item.name != "config_sentence_transformers.json":
            (folder / item.name).symlink_to(item)
    config = json.loads((source / "config_sentence_transformers.json").read_text(encoding="utf-8"))
    config["prompts"] = {"query": "query: ", "document": "passage: "}
    (folder / "config_sentence_transformers.json").write_text(json.dumps(config), encoding="utf-8")

    ctx, _ = _context()
    target = OnnxTarget(LocalTarget(model=str(folder), device="cpu", backend="onnx"))
    target.load(ctx)
    texts = TEXTS[:10]
    got = target.encode(ctx, texts, mode="query", batch_size=4).embeddings
    assert target.last_prompt == "query: "
    assert target.describe().prompt_names == ("document", "query")
    expected = np.asarray(SentenceTransformer(str(folder), device="cpu").encode_query(texts))
    assert _cosines(got, expected).min() >= 1 - 1e-4
    with pytest.raises(UserError, match="unknown prompt name"):
        target.encode(ctx, texts, prompt_name="nope")
    target.close()
