"""SIGTERM / SIGINT -> :class:`Terminated` in the main thread, so that a stopped run cleans
up like any failed one (no SEG, no staging folder, a failed ``report.json``, exit 143).

Why this is not just ``signal.signal``: Holoscan installs its own SIGINT / SIGTERM
handlers when the graph starts; they interrupt the executor and, if it has not stopped
within 3 s (our operators run long C++ calls: registration, inference), force ``exit(1)``,
leaving the staging folder and no report. And Holoscan runs the operators in a worker
thread while the thread that called ``run()`` waits in C++, where a Python handler never
runs. So ``app.main`` runs the graph in a worker thread and keeps the main thread in a
Python loop that re-installs these handlers every :data:`POLL_S` seconds (after Holoscan
replaced them); the handler then runs within that time, whatever the graph is doing.
"""
from __future__ import annotations

import logging
import signal
import threading

logger = logging.getLogger(__name__)

EXIT_CODE = 143  # 128 + SIGTERM, what a shell reports for a process ended by SIGTERM
POLL_S = 0.2


class Terminated(Exception):
    """SIGTERM / SIGINT arrived: stop, leave nothing partial."""


def _raise_terminated(signum, frame):  # noqa: ARG001
    raise Terminated(f"terminated by signal {signal.Signals(signum).name}")


def install() -> bool:
    """Route SIGTERM and SIGINT to :class:`Terminated` (again: Holoscan may have replaced the
    handlers behind Python's back). False when not in the main thread, where Python does
    not allow it."""
    if threading.current_thread() is not threading.main_thread():
        return False
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _raise_terminated)
    return True


def ignore() -> None:
    """Ignore further SIGTERM / SIGINT (while cleaning up after the first)."""
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_IGN)
