"""Start a real Triton Inference Server on loopback from ``.venv-triton`` (tests, CPU benchmark).

The PyPI package ``nvidia-pytriton`` ships the ``tritonserver`` binary, its Python backend
(``backends/python/libtriton_python.so``) and one Python-backend stub per Python version
(``python_backend_stubs/3.X/triton_python_backend_stub``) in its wheel.
``bash scripts/bootstrap_triton.sh`` installs it into ``<repo>/.venv-triton`` (numpy < 2,
ONNX Runtime pinned as in ``requirements.txt``). This module runs that binary directly
(not PyTriton's ``Triton``/``bind`` wrapper):

* the stub matching ``.venv-triton``'s Python is put in place next to the Python backend;
* ``LD_LIBRARY_PATH`` = the libpython folder of ``.venv-triton``'s base interpreter (so the
  stub embeds the same Python as the venv) + the wheel's bundled libraries;
* ``PYTHONPATH`` = ``.venv-triton``'s site-packages (numpy, onnxruntime for ``model.py``).

Usage::

    python -m benchmarks.triton_server --repository triton-repo [--http-port 8000] [--grpc-port 8001]

serves until Ctrl-C (a local stand-in for the NGC container, see the README), or in code::

    with run_triton(repo) as server:
        ...  # server.http_url == "127.0.0.1:<port>", server.grpc_url

Start-up waits for ``GET /v2/health/ready``; shutdown sends SIGTERM and waits (SIGKILL after
a timeout). Ports are free ports on 127.0.0.1 unless given.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from benchmarks.local_process import free_port, stop

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VENV = REPO_ROOT / ".venv-triton"
BOOTSTRAP = "bash scripts/bootstrap_triton.sh"


class TritonNotInstalledError(RuntimeError):
    """``.venv-triton`` (nvidia-pytriton's ``tritonserver``) is missing."""


class TritonStartupError(RuntimeError):
    """The server exited or did not become ready in time (message holds its log tail)."""


@dataclass(frozen=True)
class TritonInstall:
    """Paths of the Triton server inside a virtual environment holding ``nvidia-pytriton``."""

    venv: Path
    site_packages: Path
    python_version: str  # "3.11"
    python_libdir: Path  # libpython of the venv's base interpreter

    @property
    def root(self) -> Path:
        return self.site_packages / "pytriton" / "tritonserver"

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def backends(self) -> Path:
        return self.root / "backends"

    @property
    def libs(self) -> Path:
        return self.site_packages / "nvidia_pytriton.libs"

    @property
    def stub(self) -> Path:
        return self.root / "python_backend_stubs" / self.python_version / "triton_python_backend_stub"

    def environment(self) -> dict[str, str]:
        """Environment for ``tritonserver`` and its Python-backend stubs."""
        env = dict(os.environ)
        ld = [str(self.python_libdir), str(self.libs)]
        if env.get("LD_LIBRARY_PATH"):
            ld.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = ":".join(ld)
        # The stub embeds Python with program name "python3" and ignores PYTHONPATH: Python
        # finds "python3" on PATH, and with the venv's bin first it reads the venv's
        # pyvenv.cfg, so the stub's sys.path is the venv's (numpy < 2, onnxruntime) and not
        # the base interpreter's site-packages (which may hold numpy 2: outputs then arrive
        # empty). PYTHONPATH is also honoured by the generated model.py.
        env["PATH"] = f"{self.venv / 'bin'}:{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(self.venv)
        env["PYTHONPATH"] = str(self.site_packages)
        env["PYTHONNOUSERSITE"] = "1"
        env.pop("PYTHONHOME", None)
        return env

    def version(self) -> str:
        """nvidia-pytriton version (from its dist-info)."""
        found = sorted(self.site_packages.glob("nvidia_pytriton-*.dist-info"))
        return found[0].name.removesuffix(".dist-info").split("-")[1] if found else "unknown"


def find_triton(venv: Path | None = None) -> TritonInstall:
    """Locate ``tritonserver`` in ``venv`` (default ``<repo>/.venv-triton`` or ``$BRATS_TRITON_VENV``)
    and put the matching Python-backend stub in place (idempotent).

    Raises
    ------
    TritonNotInstalledError
        With the command that installs it.
    """
    venv = Path(venv or os.environ.get("BRATS_TRITON_VENV") or DEFAULT_VENV)
    cfg = venv / "pyvenv.cfg"
    sites = sorted(venv.glob("lib/python3.*/site-packages"))
    if not cfg.is_file() or not sites:
        raise TritonNotInstalledError(f"no Triton environment at {venv}; install it with `{BOOTSTRAP}`")
    values = dict(line.split(" = ", 1) for line in cfg.read_text().splitlines() if " = " in line)
    version = ".".join(values.get("version", "").split(".")[:2]) or sites[0].parent.name.removeprefix("python")
    base_bin = Path(values.get("home", "/usr/bin"))
    libdir = base_bin.parent / "lib"
    install = TritonInstall(venv, sites[0], version, libdir)
    if not install.binary.is_file():
        raise TritonNotInstalledError(f"{install.binary} missing (nvidia-pytriton not installed?); run `{BOOTSTRAP}`")
    if not install.stub.is_file():
        raise TritonNotInstalledError(f"no Python-backend stub for Python {version} in nvidia-pytriton ({install.stub})")
    target = install.backends / "python" / "triton_python_backend_stub"
    if not target.is_file() or target.stat().st_size != install.stub.stat().st_size:
        shutil.copy2(install.stub, target)
    return install


@dataclass
class TritonServer:
    """A running ``tritonserver``.

    Attributes
    ----------
    host, http_port, grpc_port
        Loopback address and ports.
    repository
        The model repository served.
    log_path
        Its stdout / stderr.
    process
        The server process.
    startup_s
        Seconds from launch until ``/v2/health/ready`` answered 200.
    """

    host: str
    http_port: int
    grpc_port: int
    repository: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    startup_s: float = 0.0

    @property
    def http_url(self) -> str:
        """``host:port`` of the HTTP/REST endpoint (what ``-t`` takes)."""
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """``grpc://host:port`` of the gRPC endpoint."""
        return f"grpc://{self.host}:{self.grpc_port}"

    def log_tail(self, n_chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n_chars:] if self.log_path.exists() else ""

    def get_json(self, path: str, timeout_s: float = 10.0) -> object:
        import json

        with urllib.request.urlopen(f"http://{self.http_url}{path}", timeout=timeout_s) as resp:
            return json.loads(resp.read())


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{url}/v2/health/ready", timeout=2.0) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, OSError):
        return False


@contextmanager
def run_triton(
    repository: Path,
    http_port: int | None = None,
    grpc_port: int | None = None,
    startup_timeout_s: float = 180.0,
    venv: Path | None = None,
    log_path: Path | None = None,
    extra_args: list[str] | None = None,
) -> Iterator[TritonServer]:
    """Start ``tritonserver`` on 127.0.0.1 serving ``repository``; stop it on exit.

    Parameters
    ----------
    repository
        Model repository (:func:`engines.serving.triton_repository.generate`).
    http_port, grpc_port
        Ports (default: free ones).
    startup_timeout_s
        How long to wait for readiness (every model loaded).
    venv
        The Triton environment (default :func:`find_triton`'s).
    log_path
        Server log file (default: a temporary file, deleted on exit).
    extra_args
        More ``tritonserver`` options.

    Yields
    ------
    TritonServer
        The ready server.

    Raises
    ------
    TritonNotInstalledError, TritonStartupError
    """
    install = find_triton(venv)
    tmp = None
    if log_path is None:
        tmp = Path(tempfile.mkdtemp(prefix="triton-"))
        log_path = tmp / "tritonserver.log"
    http_port = http_port or free_port()
    grpc_port = grpc_port or free_port()
    while grpc_port == http_port:
        grpc_port = free_port()
    cmd = [
        str(install.binary),
        f"--model-repository={Path(repository).resolve()}",
        f"--backend-directory={install.backends}",
        "--http-address=127.0.0.1", f"--http-port={http_port}",
        "--grpc-address=127.0.0.1", f"--grpc-port={grpc_port}",
        "--allow-metrics=false", "--allow-gpu-metrics=false",
        "--strict-readiness=true", "--exit-on-error=true", "--disable-auto-complete-config",
        "--exit-timeout-secs=10",
        *(extra_args or []),
    ]
    log = open(log_path, "ab")  # noqa: SIM115 - closed right after the launch
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=install.environment(), start_new_session=True,
                            cwd=log_path.parent)
    log.close()
    server = TritonServer("127.0.0.1", http_port, grpc_port, Path(repository), Path(log_path), proc)
    try:
        while not _ready(server.http_url):
            if proc.poll() is not None:
                raise TritonStartupError(
                    f"tritonserver exited with code {proc.returncode} during start-up. Log tail:\n{server.log_tail()}"
                )
            if time.monotonic() - t0 > startup_timeout_s:
                raise TritonStartupError(
                    f"tritonserver not ready within {startup_timeout_s:.0f} s ({server.http_url}). "
                    f"Log tail:\n{server.log_tail()}"
                )
            time.sleep(0.25)
        server.startup_s = time.monotonic() - t0
        yield server
    finally:
        stop(proc)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Serve a repository until interrupted."""
    p = argparse.ArgumentParser(description="Serve a Triton model repository with .venv-triton's tritonserver")
    p.add_argument("--repository", type=Path, required=True)
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    a = p.parse_args(argv)
    with run_triton(a.repository, a.http_port, a.grpc_port, log_path=Path("tritonserver.log").resolve()) as server:
        print(f"Triton ready in {server.startup_s:.1f} s: -t {server.http_url} (HTTP) or -t {server.grpc_url}; "
              "log tritonserver.log; Ctrl-C stops it", flush=True)
        try:
            while server.process.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
