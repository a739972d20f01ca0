"""Atomic outputs: nothing partial is ever visible in the output folder.

Every file a run produces is first written into a hidden staging folder *inside* the output
folder (same file system, so the final ``os.replace`` is an atomic rename). Only when the
whole run succeeded are the files moved to their final names; ``report.json`` is written
last. A failed or interrupted run removes the staging folder and leaves only a
``report.json`` whose ``status`` is ``"failed"`` with a one-line reason.

Outputs of an *earlier* run in the same folder are never mixed with this run's, and never
deleted: before any work, they are moved into ``earlier-run-<UTC time>/`` (see
:func:`set_aside_earlier_outputs`), so the top of the output folder always holds one run's
outputs, consistent with its ``report.json`` (a failed re-run does not leave the earlier
run's SEG next to a ``failed`` report).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any, Callable

from engines.atomic_write import write_atomically

logger = logging.getLogger(__name__)

REPORT_NAME = "report.json"
SEG_FILE = "segmentation.dcm"
#: The tumour volumes as a DICOM SR (TID 1500), referencing the SEG's segments.
SR_FILE = "volumes_sr.dcm"
OVERLAY_FILE = "overlay.png"
#: Everything a run publishes at the top of the output folder.
RUN_OUTPUT_NAMES = (SEG_FILE, SR_FILE, OVERLAY_FILE, REPORT_NAME)
STAGING_PREFIX = ".staging-"
EARLIER_RUN_PREFIX = "earlier-run-"


def write_json_atomically(path: Path, data: Any) -> Path:
    """Write ``data`` as JSON to ``path`` atomically (:func:`engines.atomic_write.write_atomically`)."""
    text = json.dumps(data, indent=2, ensure_ascii=False, default=_json_default) + "\n"
    return write_atomically(path, lambda handle: handle.write(text.encode("utf-8")))


def _json_default(value: Any) -> Any:
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(value, Path):
        return str(value)
    return str(value)


def check_writable(folder: Path) -> None:
    """Create ``folder`` if needed and prove it is writable, before any work is done.

    Raises
    ------
    operators.errors.OutputNotWritableError
    """
    from operators.errors import OutputNotWritableError

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputNotWritableError(f"output folder {folder} is not writable ({exc.strerror or exc})") from exc


class StagingClosedError(RuntimeError):
    """The run was stopped (outputs discarded): nothing may be published any more."""


class OutputStaging:
    """A hidden staging folder inside the output folder; ``publish()`` moves its files out.

    ``publish`` and ``discard`` exclude each other (a lock): a run stopped by SIGTERM while
    the graph thread publishes either finds everything published *and* the ``ok`` report
    written (then removes both) or nothing published; after ``discard`` nothing can be
    published.
    """

    def __init__(self, output_dir: Path) -> None:
        self.output_dir = Path(output_dir)
        self.staging_dir = self.output_dir / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
        self.staging_dir.mkdir(parents=True, exist_ok=False)
        self.published: list[Path] = []
        self.closed = False
        self._lock = threading.RLock()

    def path(self, name: str) -> Path:
        """Where to write the output ``name`` (a plain file name, never a path from DICOM text)."""
        if Path(name).name != name or name.startswith("."):
            raise ValueError(f"output names must be plain file names, got {name!r}")
        return self.staging_dir / name

    def publish(self, then: Callable[[list[Path]], Any] | None = None) -> list[Path]:
        """Move every staged file to the output folder (atomic renames), drop staging, then
        call ``then(published)`` (e.g. write ``report.json``), all under the lock."""
        with self._lock:
            if self.closed:
                raise StagingClosedError("the run was stopped; its outputs were discarded")
            for staged in sorted(self.staging_dir.iterdir()):
                final = self.output_dir / staged.name
                self.published.append(final)  # before the rename: discard() must see it
                os.replace(staged, final)
            self.staging_dir.rmdir()
            if then is not None:
                then(list(self.published))
            return self.published

    def discard(self) -> None:
        """Drop the staging folder *and* any file this run already published (a failure
        during or after :meth:`publish` must not leave a SEG without an ``ok`` report).
        Afterwards :meth:`publish` refuses."""
        with self._lock:
            self.closed = True
            shutil.rmtree(self.staging_dir, ignore_errors=True)
            for published in self.published:
                try:
                    published.unlink(missing_ok=True)
                except OSError as exc:  # pragma: no cover - nothing better to do than say so
                    logger.error("could not remove %s of the failed run: %s", published.name, str(exc))
            self.published.clear()


def publish_with_report(staging: OutputStaging, report: dict) -> list[Path]:
    """Publish everything staged, then write ``report.json`` (``status: "ok"``, the published
    files listed) last, under the staging lock. Returns the published files."""

    def write_report(published: list[Path]) -> None:
        report["status"] = "ok"
        report["outputs"] = sorted(p.name for p in published) + [REPORT_NAME]
        write_json_atomically(staging.output_dir / REPORT_NAME, report)

    return staging.publish(then=write_report)


def remove_stale_staging(output_dir: Path) -> None:
    """Remove staging folders left by a killed earlier run (never touches other files)."""
    for stale in Path(output_dir).glob(f"{STAGING_PREFIX}*"):
        if stale.is_dir():
            logger.warning("Removing staging folder of an interrupted run: %s", stale.name)
            shutil.rmtree(stale, ignore_errors=True)


def set_aside_earlier_outputs(output_dir: Path) -> Path | None:
    """Move the outputs of an earlier run (:data:`RUN_OUTPUT_NAMES`) out of the way.

    They go, unchanged, into ``earlier-run-<UTC time of the newest one>/`` inside
    ``output_dir`` (``-2``, ``-3``, ... appended if that exists). Other files are not
    touched. Returns the folder, or None when there was nothing to move.
    """
    import time

    output_dir = Path(output_dir)
    earlier = [output_dir / name for name in RUN_OUTPUT_NAMES if (output_dir / name).is_file()]
    if not earlier:
        return None
    newest = max(path.stat().st_mtime for path in earlier)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(newest))
    target = output_dir / f"{EARLIER_RUN_PREFIX}{stamp}"
    suffix = 1
    while target.exists():
        suffix += 1
        target = output_dir / f"{EARLIER_RUN_PREFIX}{stamp}-{suffix}"
    target.mkdir()
    for path in earlier:
        os.replace(path, target / path.name)
    logger.warning(
        "The output folder held an earlier run's outputs (%s): moved to %s/",
        ", ".join(path.name for path in earlier), target.name,
    )
    return target
