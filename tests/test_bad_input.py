"""Bad input: one sentence, exit 2, no traceback, nothing written, existing snapshots untouched."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cli_helpers import run_cli


def check_refused(args: list[str], env: dict[str, str], expect: str, after_progress: bool = False) -> None:
    """``after_progress``: the fault shows only once torch is imported, so progress lines come first;
    the error is still one sentence, and the last line."""
    profiles = Path(env["EMBPROF_PROFILES_DIR"])
    profiles.mkdir(parents=True, exist_ok=True)
    keeper = profiles / "existing.json"
    keeper.write_text('{"keep": true}')
    before = sorted(p.name for p in profiles.iterdir())
    rc, _, err, _ = run_cli(args, env, timeout=300)
    assert rc == 2, (rc, err)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 or after_progress, err
    assert "Traceback" not in err
    assert lines[-1].startswith("embprof: error: ") and expect in lines[-1], lines[-1]
    assert sorted(p.name for p in profiles.iterdir()) == before  # no partial file, nothing new
    assert keeper.read_text() == '{"keep": true}'


def test_missing_input_file(cli_env: dict[str, str], tmp_path: Path) -> None:
    check_refused(["run", "encode", "--input", str(tmp_path / "nope.txt")], cli_env, "does not exist")


def test_empty_input_file(cli_env: dict[str, str], tmp_path: Path) -> None:
    f = tmp_path / "empty.txt"
    f.write_text("\n  \n")
    check_refused(["run", "encode", "--input", str(f)], cli_env, "no lines to encode")


def test_undecodable_input_file(cli_env: dict[str, str], tmp_path: Path) -> None:
    f = tmp_path / "latin1.txt"
    f.write_bytes("caf\xe9\n".encode("latin-1"))
    check_refused(["run", "encode", "--input", str(f)], cli_env, "not UTF-8")


def test_missing_model_folder(cli_env: dict[str, str], tmp_path: Path) -> None:
    check_refused(["run", "encode", "--model", str(tmp_path / "no-model")], cli_env, "does not exist")


def test_folder_that_is_not_a_model(cli_env: dict[str, str], tmp_path: Path) -> None:
    check_refused(["run", "encode", "--model", str(tmp_path)], cli_env, "not a model folder")


def test_unknown_hub_model_offline(cli_env: dict[str, str]) -> None:
    check_refused(["run", "encode", "--model", "nobody-here/not-a-model"], cli_env, "nobody-here/not-a-model")


def test_unknown_workload(cli_env: dict[str, str]) -> None:
    rc, _, err, _ = run_cli(["run", "sprint"], cli_env)
    assert rc == 2 and "invalid choice" in err and "Traceback" not in err


def test_bad_sample_rate(cli_env: dict[str, str]) -> None:
    rc, _, err, _ = run_cli(["run", "encode", "--sample-hz", "500"], cli_env)
    assert rc == 2 and "between 1 and 100" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere; the read-only case is covered by a file in the way")
def test_unwritable_profiles_dir_readonly(cli_env: dict[str, str], tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    check_refused(["run", "encode", "--profiles-dir", str(ro / "sub")], cli_env, "cannot be written")


def test_unwritable_profiles_dir(cli_env: dict[str, str], tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    check_refused(["run", "encode", "--profiles-dir", str(blocker / "profiles")], cli_env, "cannot be written")


def test_corrupt_snapshot(cli_env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"tool": "embprof", "schema_version": 1, "run_id": 5}')
    check_refused(["show", str(bad)], cli_env, "damaged")
    bad.write_text("{not json")
    check_refused(["export", str(bad), "--format", "md"], cli_env, "not valid JSON")
    check_refused(["show", str(tmp_path / "missing.json")], cli_env, "does not exist")


@pytest.mark.slow
def test_unknown_prompt_name(cli_env: dict[str, str]) -> None:
    check_refused(["run", "encode", "--prompt-name", "nonsense"], cli_env, "unknown prompt name 'nonsense'")


def test_device_cuda_without_gpu(cli_env: dict[str, str]) -> None:
    import shutil

    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has a GPU")
    check_refused(["run", "encode", "--device", "cuda"], cli_env, "no CUDA device", after_progress=True)


def test_unknown_hub_model_with_the_hub_unreachable(cli_env: dict[str, str], tmp_path: Path) -> None:
    # Not offline by setting, but the Hub does not answer: one sentence at once, not minutes of retries.
    env = dict(cli_env, HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"))
    env.pop("HF_HUB_OFFLINE")
    check_refused(["run", "encode", "--model", "nobody-here/not-a-model"], env, "cannot be reached")
