"""A run as data: the plan's checks, --print-plan, --plan FILE and `embprof rerun`, end to end."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import embprof_exe
from embprof.engine.errors import UserError
from embprof.engine.plan import (
    EncodePlan,
    LocalTarget,
    RunPlan,
    ServerTarget,
    SweepPlan,
    load_plan,
    plan_from_options,
)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"workload": "load"}, "the load workload drives a server"),
        ({"workload": "encode", "compare_model": "bundled"}, "--compare-model compares a server"),
        ({"workload": "encode", "vs": "bundled", "server": "http://127.0.0.1:9"}, "--vs compares two local models"),
        ({"workload": "sweep", "axis": ["device=cpu,cuda"], "server": "http://127.0.0.1:9"}, "a server cannot vary device"),
        ({"workload": "sweep", "axis": ["threads=1,2"], "server": "http://127.0.0.1:9"}, "a server cannot vary threads"),
        ({"workload": "sweep", "axis": ["batch=8"], "until_oom": True, "server": "http://127.0.0.1:9"}, "cannot run against a server"),
        ({"workload": "encode", "prompt": "x", "prompt_name": "query"}, "not both"),
        ({"workload": "encode", "batch_size": 0}, "--batch-size must be at least 1"),
        ({"workload": "sweep", "axis": ["batch=8,16"], "batch_size": 4}, "batch is both an axis and --batch-size"),
        ({"workload": "sweep", "axis": ["lines=8"], "ram_ceiling": 100.0}, "--ram-ceiling goes with --until-oom"),
        ({"workload": "sweep", "axis": ["lines=8"], "budget": float("nan")}, "--budget must be a positive number"),
        ({"workload": "load", "server": "http://127.0.0.1:9", "rate": float("inf")}, "--rate must be a positive number"),
        ({"workload": "mteb"}, "no task given"),
        ({"device": "foo"}, "unknown device 'foo'"),
        ({"server": "ftp://x"}, "http:// or https:// URL"),
        ({"sample_hz": 500.0}, "between 1 and 100 Hz"),
    ],
)
def test_every_cross_option_check_is_one_sentence(options: dict[str, object], message: str) -> None:
    with pytest.raises(UserError, match=message) as err:
        plan_from_options(options)
    assert "\n" not in str(err.value)


def test_a_plan_round_trips_and_never_carries_credentials(tmp_path: Path) -> None:
    plan = plan_from_options({"workload": "load", "server": "http://user:secret@127.0.0.1:8080", "api_key_env": "EMBED_KEY",
                              "requests": 10})
    text = plan.to_json()
    assert "secret" not in text and "user" not in text and "http://127.0.0.1:8080" in text
    f = tmp_path / "plan.json"
    f.write_text(text)
    again = load_plan(str(f))
    assert isinstance(again.target, ServerTarget) and again.workload == plan.workload
    # The defaults are filled into the plan itself, so running it again is the same run.
    assert json.loads(text)["workload"]["concurrency"] == 1


def test_a_bad_plan_file_is_one_sentence(tmp_path: Path) -> None:
    f = tmp_path / "plan.json"
    f.write_text(json.dumps({"workload": {"name": "encode", "repeats": "many"}}))
    with pytest.raises(UserError, match="plan field 'workload.encode.repeats'"):
        load_plan(str(f))
    f.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_plan(str(f))
    with pytest.raises(UserError, match="does not exist"):
        load_plan(str(tmp_path / "absent.json"))


def test_the_dashboard_form_and_the_command_line_make_the_same_plan() -> None:
    # Both hand their options, by the same names, to the one function that assembles a run.
    plan = plan_from_options({"workload": "sweep", "axis": ["lines=8,16"], "budget": 2.0, "sample_hz": 5.0})
    assert plan == RunPlan(target=LocalTarget(), workload=SweepPlan(axes={"lines": (8, 16)}, budget_s=2.0),
                           recording={"sample_hz": 5.0})  # type: ignore[arg-type]
    assert plan_from_options({}) == RunPlan(workload=EncodePlan())


@pytest.mark.slow
def test_print_plan_then_plan_file_then_rerun_on_the_bundled_model(cli_env: dict[str, str], tmp_path: Path) -> None:
    from cli_helpers import run_cli, snapshot_from

    printed = subprocess.run([embprof_exe(), "run", "encode", "--repeats", "2", "--batch-size", "8", "--sample-hz", "5",
                              "--print-plan"], env=cli_env, capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0, printed.stderr
    plan = RunPlan.model_validate_json(printed.stdout)
    assert isinstance(plan.workload, EncodePlan) and plan.workload.repeats == 2 and plan.recording.sample_hz == 5.0
    assert not list(Path(cli_env["EMBPROF_PROFILES_DIR"]).glob("*.json")) if Path(cli_env["EMBPROF_PROFILES_DIR"]).exists() else True
    f = tmp_path / "plan.json"
    f.write_text(printed.stdout)

    rc, out, err, _ = run_cli(["run", "--plan", str(f)], cli_env)
    assert rc == 0, err
    first_path, first = snapshot_from(out)
    assert first.plan == plan
    head = first.summary.headline
    assert head is not None and head.calls == 2 and head.batches == 2 * 5  # 34 lines in batches of 8

    rc, out, err, _ = run_cli(["rerun", str(first_path)], cli_env)
    assert rc == 0, err
    second_path, second = snapshot_from(out)
    assert second_path != first_path and second.plan == first.plan and second.run_id != first.run_id
    assert second.summary.headline is not None and second.summary.headline.calls == 2


@pytest.mark.slow
def test_a_sweep_a_server_cannot_run_is_refused_before_anything_starts(cli_env: dict[str, str]) -> None:
    proc = subprocess.run([embprof_exe(), "run", "sweep", "--server", "http://127.0.0.1:9", "--axis", "dtype=float32,bfloat16"],
                          env=cli_env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "embprof: error: a server cannot vary dtype: it computes as it was started; sweep lines or batch, or restart the server for "
        "each setting"]
    profiles = Path(cli_env["EMBPROF_PROFILES_DIR"])
    assert not profiles.exists() or not list(profiles.glob("*.json"))


@pytest.mark.slow
def test_the_dashboard_refuses_bad_options_and_no_terminal_with_one_sentence(cli_env: dict[str, str]) -> None:
    for args, expect in ((["--device", "foo"], "unknown device 'foo'"), ([], "the dashboard needs a terminal"),
                         (["--server", "ftp://x"], "http:// or https:// URL"), (["--workload", "sprint"], "unknown workload 'sprint'")):
        proc = subprocess.run([embprof_exe(), *args], env=cli_env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and expect in lines[0] and "Traceback" not in proc.stderr, (args, proc.stderr)
