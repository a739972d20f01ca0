"""Local server processes on loopback (Triton here, Orthanc in the tests): a free port, and a
clean stop."""
from __future__ import annotations

import socket
import subprocess


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (free when asked: another process may take it
    before the server binds it, so callers retry on an early exit)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """SIGTERM, wait up to ``timeout_s``, then SIGKILL; nothing if it has already exited."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
