"""The suite's warm launcher decides cold or warm by the environment a library reads at import."""

from __future__ import annotations

import os
import sys

import pytest

from warm_cli import WarmCli


@pytest.fixture(autouse=True)
def _not_forced_cold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMBPROF_TEST_COLD", raising=False)


def _launcher() -> WarmCli:
    env = {k: v for k, v in os.environ.items() if k != "RAY_CLIENT_MODE"}
    return WarmCli(env, sys.executable)


def test_rays_own_client_mode_switch_at_its_default_is_no_difference() -> None:
    warm = _launcher()
    env = {**warm.env, "RAY_CLIENT_MODE": "0"}
    assert warm.why_cold(["run", "encode"], env) is None


def test_rays_client_mode_switched_on_runs_cold() -> None:
    warm = _launcher()
    env = {**warm.env, "RAY_CLIENT_MODE": "1"}
    assert warm.why_cold(["run", "encode"], env) == "its environment differs from the warm parent's in RAY_CLIENT_MODE"


def test_call_time_variables_differ_freely_and_others_do_not() -> None:
    warm = _launcher()
    assert warm.why_cold(["run", "encode"], {**warm.env, "EMBPROF_PROFILES_DIR": "/x", "COLUMNS": "77"}) is None
    assert warm.why_cold(["run", "encode"], {**warm.env, "TOKENIZERS_PARALLELISM": "odd"}) == \
        "its environment differs from the warm parent's in TOKENIZERS_PARALLELISM"
    assert warm.why_cold(["run", "encode", "--server", "http://127.0.0.1:1"], warm.env) is not None
