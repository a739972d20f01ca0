"""Run the application with a clean failure contract.

Exit codes: 0 success; 2 bad input (one line in the log and in ``report.json``); 3 output
folder not writable; 4 model folder invalid; 5 remote inference failed (Triton server down,
timed out, or serving other weights; ``-t``); 6 the results were written but could not be
sent to the PACS (``BRATS_SEND_DIMSE``: the outputs stay); 1 unexpected error (traceback in
the log); 143 terminated by SIGTERM. Codes 2 to 5 are the kinds of
:class:`operators.errors.AppError` (:class:`operators.errors.ErrorKind` maps each kind to its
code). On any other failure nothing but ``report.json`` (``status: failed``) is left in the
output folder.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

from app import __version__, termination
from app.memory import limit_malloc_arenas
from app.termination import Terminated
from engines.runtimes.cpu_host import flush_denormals
from operators.errors import AppError
from operators.outputs.report import base_report
from operators.outputs.staging import REPORT_NAME, write_json_atomically

logger = logging.getLogger("app")
APP_NAME = "brats-seg-map"


def write_failure_report(output_dir: Path | None, code: str, message: str, earlier_outputs: Path | None = None,
                    sections: dict | None = None) -> None:
    if output_dir is None:
        return
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        report = base_report(APP_NAME, __version__)
        report.update(sections or {})
        report.update({"status": "failed", "error_code": code, "error": message})
        if earlier_outputs is not None:
            report["earlier_outputs_moved_to"] = earlier_outputs.name
        write_json_atomically(output_dir / REPORT_NAME, report)
    except OSError as exc:  # output not writable: the log line is all we can give
        logger.error("could not write the failure report: %s", str(exc))


def _fail(app, code: str, one_line: str, exit_code: int, sections: dict | None = None) -> int:
    """Log the one-line reason, drop everything the run staged or published, write the
    failed report (with ``sections``, what the run knew when it stopped); returns
    ``exit_code``. Further SIGTERMs during the clean-up are ignored."""
    termination.ignore()
    logger.error("%s", one_line)
    if app is not None:
        app.discard_outputs()
    write_failure_report(getattr(app, "output_dir", None), code, one_line, getattr(app, "earlier_outputs", None),
                    sections)
    return exit_code


def send_results(app) -> int:
    """C-STORE the published SEG and SR when the settings ask for it (``send.dimse``); record
    the outcome in ``report.json``'s ``send`` section. Returns the exit code: 0, or 6 when the
    send failed (one line in the log; the outputs stay as published)."""
    from operators.outputs.send import parse_destination, send_c_store
    from operators.outputs.staging import SEG_FILE, SR_FILE

    settings = getattr(app, "settings", None)
    if settings is None or not settings.send_dimse:
        return 0
    destination = parse_destination(settings.send_dimse)
    files = [settings.output_dir / SEG_FILE, settings.output_dir / SR_FILE]
    record: dict = {"destination": destination.text(), "files": [f.name for f in files], "protocol": "DIMSE C-STORE"}
    t0 = time.perf_counter()
    try:
        send_c_store(files, destination, timeout_s=settings.send_timeout_s)
        record.update(status="ok")
        logger.info("Sent %s to %s (%.1f s)", ", ".join(record["files"]), destination.text(), time.perf_counter() - t0)
        code = 0
    except Exception as exc:  # noqa: BLE001 - any failure to send: exit 6, outputs untouched
        one_line = " ".join(f"send_failed: {exc}".split())[:500]
        record.update(status="failed", error=one_line)
        logger.error("%s", one_line)
        code = 6
    record["seconds"] = round(time.perf_counter() - t0, 3)
    report_path = settings.output_dir / REPORT_NAME
    try:
        report = json.loads(report_path.read_text())
        report["send"] = record
        write_json_atomically(report_path, report)
    except (OSError, ValueError) as exc:
        logger.error("could not add the send record to %s: %s", report_path, str(exc))
    return code


def _output_dir_from_args(argv: Sequence[str]) -> Path | None:
    """The output folder as the SDK will resolve it (``-o/--output``, else
    ``HOLOSCAN_OUTPUT_PATH``); None when neither is given (the SDK's default applies)."""
    args = list(argv[1:])
    for i, arg in enumerate(args):
        if arg in ("-o", "--output") and i + 1 < len(args):
            return Path(args[i + 1])
        if arg.startswith("--output="):
            return Path(arg.split("=", 1)[1])
    env = os.environ.get("HOLOSCAN_OUTPUT_PATH")
    return Path(env) if env else None


def _run_graph(app, outcome: dict) -> None:
    try:
        app.run()
    except BaseException as exc:  # noqa: BLE001 - handed to the main thread
        outcome["error"] = exc


def main(argv: Sequence[str] | None = None) -> int:
    if argv is not None:
        sys.argv = list(argv)  # the SDK and Holoscan read their arguments from sys.argv
    termination.install()
    start = time.perf_counter()
    arenas = limit_malloc_arenas()  # before Holoscan, OpenVINO and ITK start their threads
    flush_denormals()  # every torch computation of the run (engines.runtimes.cpu_host)
    output_dir = _output_dir_from_args(sys.argv)
    if output_dir is not None:
        # Before Holoscan and the SDK are even imported (the SDK's argument parser would
        # fail on it with a traceback).
        from operators.outputs.staging import check_writable

        try:
            check_writable(output_dir)
        except AppError as exc:
            if not logging.getLogger().handlers:
                logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(levelname)s] (%(name)s) - %(message)s")
            logger.error("%s", exc.one_line())
            logger.info("Finished with exit code %d in %.1f s", exc.exit_code, time.perf_counter() - start)
            return exc.exit_code

    from app.app import BrainTumorSegApp  # heavy imports (Holoscan) after sys.path set-up

    app = None
    runner: threading.Thread | None = None
    exit_code = 0
    try:
        app = BrainTumorSegApp()
        if arenas is not None:
            logger.info("glibc malloc arenas capped at %d (see app/memory.py; MALLOC_ARENA_MAX overrides)", arenas)
        # The graph runs in a worker thread; the main thread stays in Python so that SIGTERM
        # is handled promptly (see app.termination).
        outcome: dict = {}
        runner = threading.Thread(target=_run_graph, args=(app, outcome), name="graph", daemon=True)
        runner.start()
        while runner.is_alive():
            runner.join(termination.POLL_S)
            termination.install()  # Holoscan replaces the handlers when the graph starts
        if "error" in outcome:
            raise outcome["error"]
        exit_code = send_results(app)
    except AppError as exc:  # one line; the exit code of its kind (operators.errors.ErrorKind)
        exit_code = _fail(app, exc.code, exc.one_line(), exc.exit_code, exc.report_sections)
    except (Terminated, KeyboardInterrupt) as exc:
        exit_code = _fail(app, "terminated", f"terminated: {exc or 'interrupted'}", termination.EXIT_CODE)
        if runner is not None:
            # The graph may be inside a long C++ call: do not wait for it, and do not let the
            # interpreter's shutdown meet Holoscan's threads. Outputs are discarded and the
            # staging is closed (nothing more can be published).
            logger.info("Finished with exit code %d in %.1f s", exit_code, time.perf_counter() - start)
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            os._exit(exit_code)
    except Exception as exc:  # noqa: BLE001 - last line of defence: report, never leave partial output
        logger.exception("unexpected error")
        one_line = " ".join(f"internal_error: {type(exc).__name__}: {exc}".split())[:500]
        exit_code = _fail(app, "internal_error", one_line, 1)
    logger.info("Finished with exit code %d in %.1f s", exit_code, time.perf_counter() - start)
    return exit_code
