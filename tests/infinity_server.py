"""A real infinity embedding server (PyPI ``infinity-emb``) for the tests, serving the bundled model folder.

infinity pins an older sentence-transformers than embprof's, so it cannot share the project's virtual
environment: it is installed into one of its own, in the cache outside the project, with torch held at
the project's version (a constraint, so pip takes the CPU build from this machine rather than another).
It runs offline with its defaults (``--url-prefix`` empty, token counts as characters), on 127.0.0.1.

    python tests/infinity_server.py --install-only      install (if not cached) and print the server's path
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

INFINITY = "0.0.78"  # pinned: its routes and defaults are this version's
TORCH = "2.13.0"  # the Makefile's pin (TORCH): any other would be a download of gigabytes


def cache_root() -> Path:
    base = os.environ.get("EMBPROF_TEST_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "embprof-test")
    return Path(base) / f"infinity-{INFINITY}"


def server_binary() -> Path:
    """infinity's console script, installed on first use (about two minutes); one installer at a time (a lock)."""
    root = cache_root()
    exe = root / "venv" / "bin" / "infinity_emb"
    done = root / "venv" / ".installed"
    if done.is_file():
        return exe
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second installer waits here, then finds the first one's work done
        if done.is_file():
            return exe
        log = root / "install.log"
        base = getattr(sys, "_base_executable", sys.executable)
        steps = [[base, "-m", "venv", "--clear", str(root / "venv")],
                 [str(root / "venv" / "bin" / "python"), "-m", "pip", "install", "--quiet", "-c", str(root / "constraints.txt"),
                  f"infinity-emb[server,torch]=={INFINITY}"]]
        (root / "constraints.txt").write_text(f"torch=={TORCH}\n")
        with log.open("wb") as fh:
            for step in steps:
                proc = subprocess.run(step, stdout=fh, stderr=subprocess.STDOUT)
                if proc.returncode != 0:
                    raise RuntimeError(f"installing infinity failed ({proc.returncode}); the end of {log}:\n"
                                       f"{log.read_text(errors='replace')[-3000:]}")
        done.touch()
    return exe


class InfinityServer:
    """A running infinity server on the bundled model folder; stopped on exit."""

    def __init__(self, model: Path, port: int, *extra: str) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = cache_root() / f"server-{port}.log"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"}
        args = [str(server_binary()), "v2", "--model-id", str(model), "--port", str(port), "--host", "127.0.0.1",
                "--engine", "torch", "--device", "cpu", *extra]
        self._log = self.log.open("wb")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.pid = self.proc.pid

    def wait_ready(self, timeout: float = 180.0) -> InfinityServer:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"infinity exited with {self.proc.returncode}: {self.log.read_text(errors='replace')[-2000:]}")
            try:
                if httpx.get(f"{self.url}/models", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"infinity did not become ready in {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> InfinityServer:
        return self.wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    print(server_binary())
