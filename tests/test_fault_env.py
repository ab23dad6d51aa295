"""Hostile environments for the real console script, on the bundled model, offline.

Fault classes covered:

* a full disk: a filled tmpfs (or, where none can be mounted, a file-size limit, RLIMIT_FSIZE) under the
  profiles folder of ``embprof run``, and under the ``-o`` file of ``export`` and ``compare``: status 3, one
  sentence naming the file and the reason, the run's snapshot kept in ``$TMPDIR/embprof-unsaved/``, no
  temporary file left, the files already there untouched;
* a full disk and a full temporary folder: status 3, the sentence says the snapshot could not be kept;
* read-only folders (a read-only tmpfs as root, who writes through permission bits; chmod otherwise): the
  profiles folder, mteb's results folder, the ``-o`` of export, compare and matrix: status 2 before any work
  (or 3 for a file written at the end), one sentence, no traceback;
* two writers at once: two runs saving into one profiles folder; two matrices on one folder (the second
  refused at once, naming the first); a lock holder killed with SIGKILL frees the folder;
* the umask: a new snapshot has the mode any new file would (0644 under 022, 0600 under 077).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_helpers import run_cli
from conftest import REPO, embprof_exe
from fault_helpers import Child, full_disk, readonly_folder, tiny_matrix_spec

# A snapshot already in the folder (a real one, from an earlier schema: it must load and stay byte for byte).
OLD_SNAPSHOT = REPO / "tests" / "fixtures" / "v1" / "v1-encode.json"
OLD_NAME = "20200101T000000Z-000000-encode-old.json"
RUN = ["run", "encode", "--repeats", "1", "-q"]


@pytest.fixture()
def env(cli_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """cli_env with a private temporary folder (where an unsaved snapshot goes, checked there; torch puts its own
    folders there too) and a private matplotlib folder, its font cache built afresh by the first chart."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    return dict(cli_env, TMPDIR=str(tmp), MPLCONFIGDIR=str(tmp_path / "matplotlib"))


def one_error_line(stderr: str) -> str:
    """The run's only stderr line (-q: no progress), an ``embprof: error:`` sentence, with no traceback."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("embprof: error: "), stderr[-3000:]
    return lines[0]


def with_old_snapshot(folder: Path) -> None:
    (folder / "profiles").mkdir()
    (folder / "profiles" / OLD_NAME).write_bytes(OLD_SNAPSHOT.read_bytes())


def load(path: Path) -> str:
    from embprof.engine.snapshot import load as load_snapshot

    return str(load_snapshot(path).status)


# -- a full disk ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_full_profiles_folder_keeps_the_snapshot_in_the_temporary_folder(tmp_path: Path, env: dict[str, str]) -> None:
    # A file-size limit (16 KiB: the snapshot is larger) where no tmpfs can be mounted; it fails the temporary
    # folder too, which the sentence then says instead.
    with full_disk(tmp_path / "full", with_old_snapshot, limit=16384) as disk:
        profiles = disk.folder / "profiles"
        proc = run_cli([*RUN, "--profiles-dir", str(profiles)], env, timeout=600, preexec=disk.preexec)
        assert proc.rc == 3, (proc.rc, proc.err[-3000:])
        line = one_error_line(proc.err)
        assert line.startswith(f"embprof: error: cannot write '{profiles}/") and f"({disk.reason})" in line, line
        assert "status: complete" in proc.out  # the run itself went well; its tables are printed
        if disk.tmpfs:
            m = re.search(r"the snapshot was saved to '([^']+)' instead", line)
            assert m, line
            kept = Path(m.group(1))
            assert kept.parent == Path(env["TMPDIR"]) / "embprof-unsaved", kept
            assert load(kept) == "complete"
            assert f"snapshot: {kept}" in proc.out
        else:
            assert "could not be kept elsewhere either" in line, line
        assert sorted(p.name for p in profiles.iterdir()) == [OLD_NAME]  # nothing new, not even a temporary file
        assert (profiles / OLD_NAME).read_bytes() == OLD_SNAPSHOT.read_bytes()


@pytest.mark.slow
def test_a_full_disk_and_a_full_temporary_folder_say_the_snapshot_is_lost(tmp_path: Path, env: dict[str, str]) -> None:
    """Every place a snapshot could go refuses it. A file-size limit does that; a full tmpfs as $TMPDIR does not,
    because Python's tempfile moves on from a $TMPDIR it cannot write to /tmp, /var/tmp and the working folder."""
    with full_disk(tmp_path / "full", with_old_snapshot, force_rlimit=True, limit=16384) as disk:
        profiles = disk.folder / "profiles"
        proc = run_cli([*RUN, "--profiles-dir", str(profiles)], env, timeout=600, preexec=disk.preexec)
        assert proc.rc == 3, (proc.rc, proc.err[-3000:])
        line = one_error_line(proc.err)
        unsaved = Path(env["TMPDIR"]) / "embprof-unsaved"
        assert line.startswith(f"embprof: error: cannot write '{profiles}/") and "(file too large)" in line, line
        assert "the snapshot could not be kept elsewhere either" in line and f"'{unsaved}/" in line, line
        assert "snapshot:" not in proc.out and "status: complete" in proc.out  # the figures are in the tables
        assert sorted(p.name for p in profiles.iterdir()) == [OLD_NAME]
        assert (profiles / OLD_NAME).read_bytes() == OLD_SNAPSHOT.read_bytes()
        assert not unsaved.exists() or list(unsaved.iterdir()) == []



@pytest.mark.parametrize("command, how", [
    ("export", "tmpfs"),
    ("export", "rlimit"),
    ("compare", "tmpfs"),
    # The limit is the whole process's: matplotlib's font cache (built on first use) fails to save as well,
    # and must not add a line of its own to the one that says what could not be written.
    ("compare", "rlimit"),
])
def test_export_and_compare_onto_a_full_disk(command: str, how: str, tmp_path: Path, env: dict[str, str]) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_bytes(OLD_SNAPSHOT.read_bytes())
    b.write_bytes(OLD_SNAPSHOT.read_bytes())

    def previous_output(folder: Path) -> None:
        (folder / "out.md").write_text("the previous report\n")

    # 1 KiB: the report (a few KiB) does not fit under the limit.
    with full_disk(tmp_path / "full", previous_output, force_rlimit=how == "rlimit", limit=1024) as disk:
        if how == "tmpfs" and not disk.tmpfs:
            pytest.skip("no tmpfs can be mounted here (the file-size limit case covers a full disk)")
        out = disk.folder / "out.md"
        # compare's Markdown has its charts written beside it (out-latency.svg …), before the report itself.
        args = ["export", str(a), "--format", "md", "-o", str(out)] if command == "export" else \
            ["compare", str(a), str(b), "--format", "md", "-o", str(out)]
        proc = run_cli(args, env, timeout=600, preexec=disk.preexec)
        assert proc.rc == 3, (proc.rc, proc.err[-3000:])
        line = one_error_line(proc.err)
        assert re.search(rf"cannot write '{re.escape(str(disk.folder))}/out(\.md|-[a-z]+\.svg)' \({disk.reason}\)", line), line
        assert out.read_text() == "the previous report\n"
        assert sorted(p.name for p in disk.folder.iterdir()) == (["filler", "out.md"] if disk.tmpfs else ["out.md"])


# -- read-only folders -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["run", "mteb", "export", "compare", "matrix"])
def test_read_only_folders_are_one_sentence(command: str, tmp_path: Path, env: dict[str, str]) -> None:
    a = tmp_path / "a.json"
    a.write_bytes(OLD_SNAPSHOT.read_bytes())
    data = tmp_path / "data"  # an existing folder for --data-dir: the results folder is checked next
    data.mkdir()
    with readonly_folder(tmp_path / "ro", with_old_snapshot) as ro:
        args = {
            "run": [*RUN, "--profiles-dir", str(ro / "profiles")],
            "mteb": ["mteb", "-t", "STS16", "--data-dir", str(data), "--results-dir", str(ro / "results"), "-q"],
            "export": ["export", str(a), "-o", str(ro / "out.md")],
            "compare": ["compare", str(a), str(OLD_SNAPSHOT), "-o", str(ro / "out.txt")],
            "matrix": ["matrix", "--spec", str(tiny_matrix_spec(tmp_path)), "-o", str(ro / "m"), "-q"],
        }[command]
        started = time.monotonic()
        proc = run_cli(args, env, timeout=600)
        took = time.monotonic() - started
        line = one_error_line(proc.err)
        # A folder embprof needs throughout is checked before any work (2); a file written at the end fails there (3).
        expected = 3 if command in ("export", "compare") else 2
        assert proc.rc == expected, (proc.rc, line)
        assert re.search(r"read-only file system|permission denied", line), line
        if expected == 2:
            assert "cannot be written" in line, line
            assert took < 120, f"refused only after {took:.0f} s: work was done first"
        assert sorted(p.name for p in ro.iterdir()) == ["profiles"]
        assert sorted(p.name for p in (ro / "profiles").iterdir()) == [OLD_NAME]


# -- two writers at once -------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_runs_save_into_one_profiles_folder_at_once(env: dict[str, str]) -> None:
    profiles = Path(env["EMBPROF_PROFILES_DIR"])
    runs = [Child([embprof_exe(), *RUN], env) for _ in range(2)]
    saved = []
    for child in runs:
        rc, out, err = child.finish(timeout=600)
        assert rc == 0, (rc, err[-3000:])
        m = re.search(r"^snapshot: (.+)$", out, re.M)
        assert m, out[-1000:]
        saved.append(Path(m.group(1)))
    assert saved[0] != saved[1]
    assert sorted(p.name for p in profiles.iterdir()) == sorted(p.name for p in saved)  # both, and nothing else
    assert [load(p) for p in saved] == ["complete", "complete"]


@pytest.mark.slow
def test_a_second_matrix_on_the_same_folder_is_refused_at_once(tmp_path: Path, env: dict[str, str]) -> None:
    from embprof.engine.matrix import rows

    folder = tmp_path / "m"
    args = [embprof_exe(), "matrix", "--spec", str(tiny_matrix_spec(tmp_path)), "-o", str(folder)]
    first = Child(args, env)
    first.err.wait_for(r"^\[1/1\] ", timeout=600)  # its cell has started: the folder is held
    # Paused (its cell runs on, unseen) while the second one tries: however fast the cell, the first still holds the
    # folder then, and cannot finish and let go of it before the second has been answered.
    first.send(signal.SIGSTOP)
    try:
        started = time.monotonic()
        second = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
        took = time.monotonic() - started
    finally:
        first.send(signal.SIGCONT)
    assert second.returncode == 2, (second.returncode, second.stderr[-3000:])
    line = one_error_line(second.stderr)
    assert f"matrix folder '{folder}' is in use by another embprof (process {first.pid})" in line, line
    assert took < 60, f"refused only after {took:.0f} s"
    rc, _out, err = first.finish(timeout=600)
    assert rc == 0, (rc, err[-3000:])
    assert [r.status for r in rows(folder)[1]] == ["ok"]
    # The lock went with the first: the same matrix again takes the folder, finds the cell done, runs nothing.
    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "finished in an earlier run" in again.stderr, (again.returncode, again.stderr[-3000:])


HOLDER = """
import sys
from pathlib import Path
from embprof.engine.files import folder_lock

with folder_lock(Path(sys.argv[1]), "matrix folder"):
    print("locked", flush=True)
    sys.stdin.read()  # held until killed
"""


def test_a_lock_holder_killed_with_sigkill_frees_the_folder(tmp_path: Path) -> None:
    from embprof.engine.errors import UserError
    from embprof.engine.files import folder_lock

    folder = tmp_path / "m"
    folder.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=rf"is in use by another embprof \(process {holder.pid}\)"):
            with folder_lock(folder, "matrix folder"):
                pass
        holder.send_signal(signal.SIGKILL)  # no clean-up runs: the kernel lets the lock go with the process
        assert holder.wait(60) == -signal.SIGKILL
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    with folder_lock(folder, "matrix folder"):
        pass


# -- the umask -------------------------------------------------------------------------------------------------------


def umask_of(mask: int) -> Callable[[], None]:
    def set_umask() -> None:
        os.umask(mask)

    return set_umask


@pytest.mark.slow
def test_a_new_snapshot_has_the_mode_the_umask_gives(tmp_path: Path, env: dict[str, str]) -> None:
    # Both runs side by side, each in its own folder: the mode must come from the process's umask, not a fixed 0600.
    runs = {}
    for mask, mode in ((0o022, 0o644), (0o077, 0o600)):
        folder = tmp_path / f"umask-{mask:03o}"
        runs[mask, mode] = Child([embprof_exe(), *RUN, "--profiles-dir", str(folder)], env, preexec=umask_of(mask))
    for (mask, mode), child in runs.items():
        rc, out, err = child.finish(timeout=600)
        assert rc == 0, (rc, err[-3000:])
        [snap] = (tmp_path / f"umask-{mask:03o}").glob("*.json")
        assert snap.stat().st_mode & 0o777 == mode, f"umask {mask:03o}: mode {snap.stat().st_mode & 0o777:03o}, not {mode:03o}"
