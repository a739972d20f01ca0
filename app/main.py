"""Run the application with a clean failure contract.

Exit codes: 0 success; 2 bad input (one line in the log and in ``report.json``); 3 output
folder not writable; 4 model folder invalid; 1 unexpected error (traceback in the log);
143 terminated by SIGTERM. On any failure nothing but ``report.json`` (``status: failed``)
is left in the output folder.
"""
from __future__ import annotations

import logging
import signal
import sys
import time
from pathlib import Path
from typing import Sequence

from app import __version__
from operators.errors import InputError
from operators.output_staging import REPORT_NAME, write_json_atomically
from operators.report import base_report

logger = logging.getLogger("app")
APP_NAME = "brats-seg-map"


class Terminated(Exception):
    """SIGTERM / SIGINT arrived: stop, leave nothing partial."""


def _raise_terminated(signum, frame):  # noqa: ARG001
    raise Terminated(f"terminated by signal {signal.Signals(signum).name}")


def _failure_report(output_dir: Path | None, code: str, message: str) -> None:
    if output_dir is None:
        return
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        report = base_report(APP_NAME, __version__)
        report.update({"status": "failed", "error_code": code, "error": message})
        write_json_atomically(output_dir / REPORT_NAME, report)
    except OSError as exc:  # output not writable: the log line is all we can give
        logger.error("could not write the failure report: %s", exc)


def main(argv: Sequence[str] | None = None) -> int:
    from app.app import BrainTumorSegApp  # heavy imports (Holoscan) after sys.path set-up

    if argv is not None:
        sys.argv = list(argv)  # the SDK and Holoscan read their arguments from sys.argv
    signal.signal(signal.SIGTERM, _raise_terminated)
    start = time.perf_counter()
    app = BrainTumorSegApp()
    exit_code = 0
    try:
        app.run()
    except InputError as exc:
        logger.error("%s", exc.one_line())
        app.discard_outputs()
        _failure_report(app.output_dir, exc.code, exc.one_line())
        exit_code = exc.exit_code
    except (Terminated, KeyboardInterrupt) as exc:
        logger.error("run stopped: %s", exc or "interrupted")
        app.discard_outputs()
        _failure_report(app.output_dir, "terminated", f"terminated: {exc or 'interrupted'}")
        exit_code = 143
    except Exception as exc:  # noqa: BLE001 - last line of defence: report, never leave partial output
        logger.exception("unexpected error")
        app.discard_outputs()
        one_line = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
        _failure_report(app.output_dir, "internal_error", one_line)
        exit_code = 1
    logger.info("Finished with exit code %d in %.1f s", exit_code, time.perf_counter() - start)
    return exit_code
