"""`embprof matrix --ray`: the same matrix on a real Ray cluster, started here.

Everything runs inside a network namespace this test makes with only the loopback device
(`unshare -n`): the head node, its workers and the driver can reach nothing but 127.0.0.1, and the
socket table taken inside it at the end is checked for any other address.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import DATASETS, embprof_exe

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
PORT = 6399


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "a network namespace (unshare -n) needs root here"
    if not (shutil.which("unshare") and shutil.which("ip") and shutil.which("ss")):
        return "unshare, ip and ss (util-linux, iproute2) are needed for the loopback-only namespace"
    if not (BIN / "ray").exists():
        return "Ray is not installed in this environment (the test command installs embprof[ray])"
    if not (DATASETS / "sts16" / "test.jsonl").is_file():
        return f"the evaluation datasets are absent: {DATASETS}"
    return None


needs_cluster = pytest.mark.skipif(_why_not() is not None, reason=_why_not() or "")


def spec_file(tmp: Path) -> Path:
    """Four cells of the bundled model (two dtypes × two output precisions), small enough for two cores."""
    data = tmp / "data" / "sts16"
    data.mkdir(parents=True)
    rows = (DATASETS / "sts16" / "test.jsonl").read_text(encoding="utf-8").splitlines()[:120]
    (data / "test.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    lines = tmp / "lines.txt"
    lines.write_text("\n".join(f"a short line to encode, number {i}" for i in range(24)) + "\n", encoding="utf-8")
    spec = tmp / "spec.toml"
    spec.write_text(f'precision = ["float32", "binary"]\ndtype = ["float32", "bfloat16"]\ntasks = ["STS16"]\nloops = 2\n'
                    f'cost = "encode"\ncost_input = "{lines}"\ndata_dir = "{tmp / "data"}"\n', encoding="utf-8")
    return spec


def in_namespace(body: str, cwd: Path, timeout: float = 600, env: str = "RAY_AUTH_MODE=disabled",
                 start: str = "", gpus: int = 0) -> subprocess.CompletedProcess[str]:
    """``body`` run by bash in a fresh network namespace (only lo, brought up) and a PID namespace of its own
    (so that `ray stop` there stops this cluster and no other), with a Ray head node started on 127.0.0.1
    for it and stopped after it. Ray's files go to a short folder of their own (its socket paths must
    stay under the kernel's 107 characters); the workers' temporary files (a killed cell's folder
    among them) to one inside the test's. ``env``: more variables for the cluster and the driver;
    ``start``: more options for `ray start`; ``gpus``: the GPUs the node says it has (Ray takes the
    number as given: a node can offer one this machine lacks)."""
    ray_tmp = tempfile.mkdtemp(prefix="er", dir="/tmp")
    (cwd / "tmp").mkdir(exist_ok=True)
    script = f"""
set -e
ip link set lo up
export RAY_USAGE_STATS_ENABLED=0 HF_HUB_OFFLINE=1 PATH="{BIN}:$PATH" TMPDIR="{cwd / 'tmp'}" {env}
ray start --head --node-ip-address=127.0.0.1 --port={PORT} --num-cpus=2 --num-gpus={gpus} --include-dashboard=false \\
  --disable-usage-stats --temp-dir={ray_tmp} {start} > ray-start.log 2>&1
trap 'ss -tanH > sockets.txt; ray stop --force > /dev/null 2>&1' EXIT
{body}
"""
    try:
        return subprocess.run(["unshare", "-n", "-p", "-f", "--mount-proc", "bash", "-c", script], cwd=cwd, capture_output=True, text=True,
                              timeout=timeout)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def only_loopback(sockets: Path) -> None:
    for line in sockets.read_text(encoding="utf-8").splitlines():
        fields = line.split()
        for addr in fields[3:5]:
            host = addr.rsplit(":", 1)[0].strip("[]")
            assert host in ("127.0.0.1", "::1", "::ffff:127.0.0.1", "*", "0.0.0.0", "::"), line


def table(folder: Path) -> dict[str, dict[str, object]]:
    from embprof.engine.matrix import rows

    _, found = rows(folder)
    return {r.cell_id: r.model_dump() for r in found}


# Measured costs and where a cell ran: they differ between any two runs, local or not.
TIMED = {"import_s", "load_s", "p50_s", "p95_s", "items_per_s", "peak_rss_bytes", "load_rss_delta_bytes", "peak_gpu_bytes",
         "torch_reserved_bytes", "torch_allocated_bytes", "energy_j_per_1000", "snapshot", "order", "beside", "host"}


@needs_cluster
def test_a_matrix_on_ray_equals_the_local_one_but_for_timings_and_hosts(tmp_path: Path) -> None:
    spec = spec_file(tmp_path)
    exe = embprof_exe()
    # Then the same command again, on the same cluster: nothing is missing, nothing is submitted.
    run = in_namespace(f"{exe} matrix --spec {spec} -o local -q > local.out 2> local.err\n"
                       f"{exe} matrix --spec {spec} -o ray --ray 127.0.0.1:{PORT} > ray.out 2> ray.err\n"
                       f"{exe} matrix --spec {spec} -o ray --ray 127.0.0.1:{PORT} > again.out 2> again.err", tmp_path)
    err = (tmp_path / "ray.err").read_text() if (tmp_path / "ray.err").exists() else ""
    assert run.returncode == 0, run.stderr + err + (tmp_path / "ray-start.log").read_text()
    local, remote = table(tmp_path / "local"), table(tmp_path / "ray")
    assert sorted(local) == sorted(remote) and len(local) == 4
    for cid, row in local.items():
        other = remote[cid]
        assert other["status"] == row["status"] == "ok"
        for key, value in row.items():
            if key in TIMED:
                continue
            if isinstance(value, float):
                assert other[key] == pytest.approx(value, abs=1e-6), (cid, key)
            elif key == "scores":
                assert other[key].keys() == value.keys() and all(  # type: ignore[union-attr]
                    other[key][t] == pytest.approx(v, abs=1e-6) for t, v in value.items())  # type: ignore[index,union-attr]
            else:
                assert other[key] == value, (cid, key)
    # Each snapshot says where it ran; the local ones say nothing of Ray.
    from embprof.engine.snapshot import load

    for cid in remote:
        env = load(tmp_path / "ray" / "cells" / f"{cid}.json").environment
        ray = env["ray"]
        assert ray["host"] and ray["node_id"] and ray["worker_id"] and ray["attempt"] == 1 and ray["retried"] is False
        assert env["torch_threads"] == 1 == ray["cpus"]  # the CPUs asked for, not Ray's OMP_NUM_THREADS=1 by accident
        # Forked from its worker's warm parent, which imported once for the cells that worker ran.
        assert env["cell_start"]["warm"] is True and env["cell_start"]["parent_pid"] not in (env["pid"], ray["pid"])
        assert "ray" not in load(tmp_path / "local" / "cells" / f"{cid}.json").environment
    # The frontiers: over the same cells, each a true Pareto set of its own run's figures.
    from embprof.engine.frontier import frontiers

    for folder, rows_ in (("local", local), ("ray", remote)):
        from embprof.engine.matrix.row import MatrixRow

        parsed = [MatrixRow.model_validate(r) for r in rows_.values()]
        for f in frontiers(parsed):
            on = [r for r in parsed if r.cell_id in f.cells]
            for r in on:
                cost = getattr(r, f.axis)
                assert not any(getattr(o, f.axis) is not None and o.quality is not None and r.quality is not None
                               and getattr(o, f.axis) <= cost and o.quality >= r.quality
                               and (getattr(o, f.axis) < cost or o.quality > r.quality) for o in parsed), (folder, f.axis)
    out = (tmp_path / "ray.out").read_text()
    assert "matrix: ray" in out and "Frontier" in out
    assert err.count(" on ") >= 4 and "network_util" not in err  # each cell's start says where; Ray's chatter is not shown
    only_loopback(tmp_path / "sockets.txt")
    assert (tmp_path / "again.err").read_text().count("finished in an earlier run") == 4


@needs_cluster
def test_a_worker_killed_mid_cell_is_retried_once_and_a_cell_killed_twice_fails_alone(tmp_path: Path) -> None:
    """Two real kills of a cell's Ray worker (SIGKILL, as a lost node would end it): the first cell to run
    loses its worker on both attempts, and a later cell loses it once. Each cell's process is found by
    the cell id in its folder's name; its parent is the worker."""
    spec = spec_file(tmp_path)
    exe = embprof_exe()
    body = f"""
{exe} matrix --spec {spec} -o ray --ray 127.0.0.1:{PORT} > ray.out 2> ray.err &
MATRIX=$!
set +e
# A cold cell names its cell in its command line (its folder); a warm one, forked from the worker's warm parent, in its name.
cell_of() {{ case "$(tr '\\0' ' ' < /proc/$1/cmdline 2>/dev/null)" in *embprof-ray-*) tr '\\0' ' ' < /proc/$1/cmdline | sed -E 's/.*embprof-ray-([0-9a-f]+)-.*/\\1/';;
  *) cat /proc/$1/comm 2>/dev/null;; esac; }}
cells() {{ pgrep -f "^[^ ]+ -m embprof[.]engine[.]matrix[.]cellproc [^ ]*/embprof-ray-"; for w in $(pgrep -f "^[^ ]+ -c import sys; from embprof[.]engine[.]matrix[.]warmproc "); do pgrep -P $w; done; }}
find_cell() {{  # a running cell's process, of cell $1 or (with !) of any other cell, not pid $2
  for i in $(seq 1 900); do
    for p in $(cells); do
      c=$(cell_of $p); [ "$p" = "$2" ] && continue
      case "$c" in ""|*[!0-9a-f]*) continue;; esac  # gone (a zombie's command line is empty) or not a cell
      if [ "${{1#!}}" = "$1" ]; then [ "$c" = "$1" ] && {{ echo $p; return; }}; else [ "$c" != "${{1#!}}" ] && {{ echo $p; return; }}; fi
    done; sleep 0.2
  done
}}
worker_of() {{ w=$(ps -o ppid= -p $1 | tr -d ' '); case "$(tr '\\0' ' ' < /proc/$w/cmdline)" in *embprof.engine.matrix.warmproc*) w=$(ps -o ppid= -p $w | tr -d ' ');; esac; echo $w; }}
kill_worker() {{ sleep 1; kill -9 $(worker_of $1); }}
P=$(find_cell '!none' 0); TWICE=$(cell_of $P); echo $TWICE > twice.txt; kill_worker $P
P2=$(find_cell $TWICE $P); kill_worker $P2
P3=$(find_cell "!$TWICE" 0); cell_of $P3 > once.txt; kill_worker $P3
wait $MATRIX
echo $? > status.txt
"""
    run = in_namespace(body, tmp_path)
    err = (tmp_path / "ray.err").read_text()
    assert run.returncode == 0, run.stderr + err
    assert (tmp_path / "status.txt").read_text().strip() == "1", err  # one cell failed: the matrix says so
    twice, once = (tmp_path / "twice.txt").read_text().strip(), (tmp_path / "once.txt").read_text().strip()
    assert twice and once and twice != once, (twice, once)
    from embprof.engine.snapshot import load

    folder = tmp_path / "ray"
    rows_ = table(folder)
    assert rows_[twice]["status"] == "failed" and "died twice" in str(rows_[twice]["reason"]), rows_[twice]
    # The others went on: every other cell finished, the one killed once on its second attempt.
    assert all(r["status"] == "ok" for cid, r in rows_.items() if cid != twice), rows_
    attempts = {cid: load(folder / "cells" / f"{cid}.json").environment["ray"] for cid in rows_ if cid != twice}
    assert attempts[once]["attempt"] == 2 and attempts[once]["retried"] is True
    assert all(a["attempt"] == 1 and a["retried"] is False for cid, a in attempts.items() if cid != once)
    assert err.count("attempt 2: retried") == 2
    assert "Traceback" not in err
    only_loopback(tmp_path / "sockets.txt")


def test_without_ray_the_flag_is_one_sentence_naming_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from embprof.engine.errors import UserError
    from embprof.engine.matrix.ray import import_ray

    real = builtins.__import__

    def no_ray(name: str, *args: object, **kwargs: object) -> object:
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(UserError) as info:
        import_ray()
    assert str(info.value) == "--ray needs Ray, which is not installed here: pip install 'embprof[ray]'"


@needs_cluster
def test_no_cluster_at_the_address_is_one_sentence(tmp_path: Path) -> None:
    spec = spec_file(tmp_path)
    run = subprocess.run(["unshare", "-n", "bash", "-c", f"ip link set lo up; {embprof_exe()} matrix --spec {spec} -o m "
                          f"--ray 127.0.0.1:9"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    assert run.returncode == 2, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.startswith("embprof:")]
    assert lines and lines[-1].startswith("embprof: error: no Ray cluster at '127.0.0.1:9'"), run.stderr
    assert "Traceback" not in run.stderr


def test_a_cell_beside_other_work_is_flagged_from_what_it_recorded() -> None:
    from embprof.engine.matrix import beside_other_work

    assert beside_other_work({}) is None  # a snapshot from before this was recorded: nothing is claimed
    quiet = {"others_during_run": {"samples": 40, "cpu_percent_mean": 12.0, "cpu_percent_max": 80.0, "gpu_processes": [],
                                   "gpu_mib": None}}
    assert beside_other_work(quiet) is None
    busy = {"others_during_run": {"samples": 40, "cpu_percent_mean": 97.4, "cpu_percent_max": 130.0,
                                  "gpu_processes": [{"gpu": 0, "pid": 4242, "mib": 2048.0}], "gpu_mib": 2048.0}}
    assert beside_other_work(busy) == "other processes used 97% of a core on average; 1 other process held 2,048 MiB of GPU memory"


@pytest.mark.skipif(not (DATASETS / "sts16" / "test.jsonl").is_file(), reason=f"the evaluation datasets are absent: {DATASETS}")
def test_a_cell_run_beside_a_busy_process_says_so_in_the_report(tmp_path: Path) -> None:
    """A real busy loop beside a real cell: the cell's own samples see it, and the report lists the cell."""
    spec = spec_file(tmp_path)
    # The encode cost alone (no task): what the cell's own samples see of the loop is the point, not its scores.
    spec.write_text(spec.read_text().replace('precision = ["float32", "binary"]\ndtype = ["float32", "bfloat16"]\n', "")
                    .replace('tasks = ["STS16"]', "tasks = []"))
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        run = subprocess.run([embprof_exe(), "matrix", "--spec", str(spec), "-o", "m", "-q"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    finally:
        burner.kill()
        burner.wait()
    assert run.returncode == 0, run.stderr
    (row,) = table(tmp_path / "m").values()
    assert row["beside"] is not None and str(row["beside"]).startswith("other processes used"), row
    from embprof.engine.snapshot import load

    others = load(tmp_path / "m" / "cells" / f"{row['cell_id']}.json").environment["others_during_run"]
    assert others["samples"] > 0 and others["cpu_percent_mean"] > 50  # the loop takes a whole core of the two
    from embprof.engine.matrix import read_manifest
    from embprof.engine.frontier import frontiers
    from embprof.engine.matrix_report import matrix_tables
    from embprof.engine.matrix.row import MatrixRow

    rows_ = [MatrixRow.model_validate(r) for r in table(tmp_path / "m").values()]
    tables = {t.name: t for t in matrix_tables(rows_, frontiers(rows_), read_manifest(tmp_path / "m").dropped)}
    assert tables["beside-other-work"].rows[0][2] == row["beside"]


@needs_cluster
def test_ctrl_c_cancels_what_is_outstanding_and_keeps_what_finished(tmp_path: Path) -> None:
    spec = spec_file(tmp_path)
    exe = embprof_exe()
    # Job control on: a non-interactive shell starts a background command with SIGINT ignored.
    body = f"""
set -m
{exe} matrix --spec {spec} -o ray --ray 127.0.0.1:{PORT} > ray.out 2> ray.err &
MATRIX=$!
for i in $(seq 1 900); do grep -q "status ok" ray.err 2>/dev/null && break; sleep 0.2; done
kill -INT $MATRIX
set +e
wait $MATRIX
echo $? > status.txt
sleep 3
pgrep -f "^[^ ]+ (-m embprof[.]engine[.]matrix[.]cellproc |-c import sys; from embprof[.]engine[.]matrix[.]warmproc )" > left.txt
ls ray/cells | grep -E '^[0-9a-f]{{12}}[.]json$' | wc -l > done.txt
# The same command again, on the same cluster: it submits only the cells that have no finished snapshot.
{exe} matrix --spec {spec} -o ray --ray 127.0.0.1:{PORT} > again.out 2> again.err
echo $? > again.txt
true
"""
    run = in_namespace(body, tmp_path)
    assert run.returncode == 0, run.stderr
    err = (tmp_path / "ray.err").read_text()
    assert (tmp_path / "status.txt").read_text().strip() == "130", err
    assert "interrupted" in err and "the finished cells are kept" in err
    assert (tmp_path / "left.txt").read_text().strip() == "", "a cancelled cell's process outlived the matrix"
    done = int((tmp_path / "done.txt").read_text())
    assert 1 <= done < 4, err
    assert (tmp_path / "again.txt").read_text().strip() == "0", (tmp_path / "again.err").read_text()
    assert (tmp_path / "again.err").read_text().count("finished in an earlier run") == done
    assert all(r["status"] == "ok" for r in table(tmp_path / "ray").values())


PINNED = """
[[placements]]
name = "pinned"
resources = { "embprof-pin" = 1 }

[[placements]]
name = "nowhere"
resources = { "embprof-absent" = 1 }

[[placements]]
name = "h100"
accelerator_type = "H100"
"""


@needs_cluster
def test_pinned_cells_run_where_pinned_and_a_token_cluster_keeps_its_token(tmp_path: Path) -> None:
    """A cluster with token authentication and a custom resource on its node: the cell pinned to that
    resource runs there; the cells pinned to a resource or GPU type no node has fail at once (Ray would
    queue them for ever); a driver without the token is told so in one sentence; the token is in no
    file or output.

    The node also says it has one GPU, which this machine lacks: the CUDA cell is then a cell of the
    matrix (the cluster's GPUs decide, not the driver's machine), is given the GPU by Ray, and fails
    in its own process with its own reason."""
    token = "embprof-test-" + secrets.token_hex(16)
    spec = spec_file(tmp_path)
    # The files a cell reads, and the matrix's folder, named relative to where embprof runs (a folder the
    # cluster's workers do not run in): the driver names them from the root before they travel.
    text = spec.read_text().replace('precision = ["float32", "binary"]\ndtype = ["float32", "bfloat16"]\n', "")
    text = text.replace(str(tmp_path / "data"), "../data").replace(str(tmp_path / "lines.txt"), "../lines.txt")
    spec.write_text('devices = ["cpu", "cuda", "cuda:1"]\n' + text + PINNED)
    (tmp_path / "work").mkdir()
    exe = embprof_exe()
    body = f"""
set +e
cd work
(unset RAY_AUTH_TOKEN; {exe} matrix --spec ../spec.toml -o m --ray 127.0.0.1:{PORT} > ../notoken.out 2> ../notoken.err; echo $? > ../notoken.txt)
{exe} matrix --spec ../spec.toml -o m --ray 127.0.0.1:{PORT} --list-cells > ../list.out 2> ../list.err
{exe} matrix --spec ../spec.toml -o m --ray 127.0.0.1:{PORT} > ../ray.out 2> ../ray.err
echo $? > ../status.txt
cd ..
"""
    run = in_namespace(body, tmp_path, env=f"RAY_AUTH_MODE=token RAY_AUTH_TOKEN={token}", start="--resources='{\"embprof-pin\": 2}'",
                       gpus=1)
    err = (tmp_path / "ray.err").read_text()
    assert run.returncode == 0, run.stderr + err + (tmp_path / "ray-start.log").read_text()
    refused = (tmp_path / "notoken.err").read_text()
    assert (tmp_path / "notoken.txt").read_text().strip() == "2", refused
    assert refused.strip().splitlines()[-1].startswith("embprof: error: the Ray cluster at '127.0.0.1:6399' asks for a token"), refused
    assert "Traceback" not in refused
    assert (tmp_path / "status.txt").read_text().strip() == "1", err  # two cells could not run: the matrix says so
    folder = tmp_path / "work" / "m"
    listed = (tmp_path / "list.out").read_text()
    assert listed.count(" cuda @ ") == 3 and listed.count(" cuda:1 @ ") == 3, listed  # the cluster's GPU, not this machine's
    rows_ = {(r["device"], r["label"].rsplit(" @ ", 1)[1]): r for r in table(folder).values()}
    assert sorted(rows_) == [(d, p) for d in ("cpu", "cuda", "cuda:1") for p in ("h100", "nowhere", "pinned")]
    assert rows_["cuda:1", "pinned"]["status"] == "failed"
    assert str(rows_["cuda:1", "pinned"]["reason"]).startswith("cuda:1 names a GPU of one machine: on a Ray cluster give the device as cuda")
    assert rows_["cpu", "pinned"]["status"] == "ok" and rows_["cpu", "pinned"]["reference"] is True
    for device in ("cpu", "cuda"):
        assert rows_[device, "nowhere"]["status"] == "failed"
        assert rows_[device, "nowhere"]["reason"] == "no node of the Ray cluster has the resource 'embprof-absent' (1)"
        assert rows_[device, "h100"]["status"] == "failed"
        assert rows_[device, "h100"]["reason"] == "no node of the Ray cluster has a GPU of type H100"
    from embprof.engine.snapshot import load

    env = load(folder / "cells" / f"{rows_['cpu', 'pinned']['cell_id']}.json").environment
    assert env["ray"]["placement"] == "pinned" and env["ray"]["attempt"] == 1 and env["ray"]["gpu_ids"] == []
    cuda = rows_["cuda", "pinned"]
    assert cuda["status"] == "failed" and "cuda" in str(cuda["reason"]).lower(), cuda  # the cell's own sentence, from its process
    import json

    crash = json.loads((folder / "cells" / f"{cuda['cell_id']}.crash.json").read_text())
    assert crash["ray"]["gpu_ids"] == ["0"] and crash["ray"]["attempt"] == 1  # Ray gave it the node's GPU
    # The cell's MTEB results came back with its snapshot and are filed where a local matrix files them.
    results = list((folder / "results" / rows_["cpu", "pinned"]["cell_id"]).rglob("STS16.json"))
    assert len(results) == 1 and json.loads(results[0].read_text())["task_name"] == "STS16"
    # The token: in the cluster's and the driver's environment only, never written by embprof.
    for f in tmp_path.rglob("*"):
        if f.is_file() and f.name != "ray-start.log":
            assert token.encode() not in f.read_bytes(), f
    assert token not in run.stdout + run.stderr
    only_loopback(tmp_path / "sockets.txt")


def test_a_pinned_matrix_is_refused_without_a_cluster(tmp_path: Path) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_text('tasks = ["STS16"]\n' + PINNED)
    run = subprocess.run([embprof_exe(), "matrix", "--spec", str(spec), "-o", "m"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip() == ("embprof: error: the matrix pins cells to placements (pinned, nowhere, h100), which only a Ray "
                                  "cluster can honour: run it with --ray")
    assert not (tmp_path / "m" / "cells").exists() or not any((tmp_path / "m" / "cells").iterdir())
    listed = subprocess.run([embprof_exe(), "matrix", "--spec", str(spec), "-o", "m", "--list-cells"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert [line.split(" @ ")[1].split()[0] for line in listed.stdout.splitlines() if " @ " in line] == ["pinned", "nowhere", "h100"]


DASHBOARD = '''
import asyncio, functools, json, sys
from pathlib import Path

from textual.widgets import DataTable

from embprof.engine.matrix import load_spec, run_matrix
from embprof.tui.matrix_app import MatrixApp


async def main() -> None:
    spec, folder, address = load_spec(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    app = MatrixApp(spec, folder, runner=functools.partial(run_matrix, ray_address=address))
    seen: dict[str, list[str]] = {}
    async with app.run_test(size=(180, 50)) as pilot:
        for _ in range(3000):
            await pilot.pause(0.1)
            table = app.query_one("#matrix-table", DataTable)
            for key in table.rows:
                text = table.get_cell(key, "status").plain
                states = seen.setdefault(str(key.value), [])
                if not states or states[-1] != text:
                    states.append(text)
            if app.outcome is not None:
                break
        outcome = app.outcome
    json.dump({"outcome": outcome.kind if outcome else None, "message": outcome.message if outcome else None, "seen": seen,
               "exit": app.exit_code()}, sys.stdout)


asyncio.run(main())
'''


@needs_cluster
def test_the_dashboard_runs_a_matrix_on_the_cluster_and_shows_where_each_cell_runs(tmp_path: Path) -> None:
    """The Matrix view, driven by Textual's own pilot, on a real cluster: every cell is seen queued, then
    running on the node's host, then done; the table's cells are the snapshots saved."""
    spec = spec_file(tmp_path)
    spec.write_text(spec.read_text().replace('precision = ["float32", "binary"]\ndtype = ["float32", "bfloat16"]\n', ""))
    (tmp_path / "dashboard.py").write_text(DASHBOARD)
    run = in_namespace(f"{sys.executable} dashboard.py {spec} m 127.0.0.1:{PORT} > seen.json 2> dashboard.err", tmp_path)
    assert run.returncode == 0, run.stderr + (tmp_path / "dashboard.err").read_text()
    import json
    import socket

    result = json.loads((tmp_path / "seen.json").read_text())
    assert result["outcome"] == "done" and result["exit"] == 0, result
    rows_ = table(tmp_path / "m")
    assert sorted(result["seen"]) == sorted(rows_) and len(rows_) == 1
    host = socket.gethostname()
    for cid, states in result["seen"].items():
        assert any(s.startswith("queued") for s in states), states
        assert any(s.startswith(f"running on {host}") for s in states), states
        assert any(s.startswith(f"running on {host} · Encoding") for s in states), states  # the host stays beside each phase
        assert states[-1] == "ok" == rows_[cid]["status"], states
    only_loopback(tmp_path / "sockets.txt")


@needs_cluster
def test_a_cluster_lost_mid_matrix_is_one_sentence_and_keeps_the_finished_cells(tmp_path: Path) -> None:
    """The head node stopped (every Ray process of the namespace killed) once the first cell has finished:
    the driver says so in one sentence and exits 1, within a minute, and the finished cell's snapshot is whole."""
    spec = spec_file(tmp_path)
    exe = embprof_exe()
    body = f"""
set +e
{exe} matrix --spec {spec} -o ray --ray 127.0.0.1:{PORT} > ray.out 2> ray.err &
MATRIX=$!
for i in $(seq 1 900); do grep -q "status ok" ray.err 2>/dev/null && break; sleep 0.2; done
ray stop --force > /dev/null 2>&1
date +%s.%N > stopped.txt
wait $MATRIX
echo $? > status.txt
date +%s.%N > ended.txt
pgrep -f "^[^ ]+ (-m embprof[.]engine[.]matrix[.]cellproc |-c import sys; from embprof[.]engine[.]matrix[.]warmproc )" > left.txt
true
"""
    run = in_namespace(body, tmp_path)
    assert run.returncode == 0, run.stderr
    err = (tmp_path / "ray.err").read_text()
    assert (tmp_path / "status.txt").read_text().strip() == "1", err
    last = err.strip().splitlines()[-1]
    assert last.startswith("embprof: error: the Ray cluster stopped answering (") and last.endswith(
        "the finished cells are kept: run the same matrix again to go on"), err
    assert "Traceback" not in err
    waited = float((tmp_path / "ended.txt").read_text()) - float((tmp_path / "stopped.txt").read_text())
    assert (tmp_path / "left.txt").read_text().strip() == "", "a cell's process outlived its cluster"
    # The finished cell is whole: its snapshot loads, as the next run (the Ctrl-C test shows it) would read it.
    from embprof.engine.snapshot import load

    done = [cid for cid, r in table(tmp_path / "ray").items() if r["status"] == "ok"]
    assert len(done) >= 1, err
    assert all(load(tmp_path / "ray" / "cells" / f"{cid}.json").status == "complete" for cid in done)
    assert waited < 60, f"the driver took {waited:.1f} s to say the cluster was lost"


def test_compare_lists_where_each_cell_ran_on_the_cluster() -> None:
    """Two cells from different nodes (or one from a cluster, one from here) are compared with that said."""
    from test_report_typed import calls, snapshot, table

    from embprof.engine.compare import compare_tables

    a = snapshot(calls("", [10, 11, 12, 13], t0=10), run_id="a")
    b = snapshot(calls("", [10, 11, 12, 13], t0=10), run_id="b")
    ray = {"host": "gpu-7", "node_id": "f00dfeedbeef0123", "worker_id": "w", "pid": 1, "gpu_ids": ["3"], "attempt": 2, "retried": True,
           "cpus": None, "placement": "h100"}
    b = b.model_copy(update={"environment": {**b.environment, "ray": ray, "hostname": "gpu-7"}})
    rows = {r[0]: r for r in table(compare_tables([a, b], ["a", "b"]), "compare-environment").rows}
    assert rows["Ray"][1:] == ["not on Ray", "node f00dfeedbeef, GPU 3, placement h100 (attempt 2: retried)"]
    assert rows["host"][2] == "gpu-7"
