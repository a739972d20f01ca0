"""DICOM validation with David Clunie's ``dciodvfy`` (Debian package ``dicom3tools``).

Helper module for tests (not collected by pytest: its name does not start with ``test_``).

``dciodvfy`` checks a file against the IOD of its SOP class (Information Object Definition:
required modules/attributes, value representations, enumerated values, code sequences) and
prints its findings to stderr, one per line:

* ``Error - <message>``     a violation of the standard;
* ``Warning - <message>``   dubious but legal (e.g. retired person-name form, deprecated
  coding scheme designator, attributes not in the IOD);
* some findings are prefixed with the tag, e.g.
  ``(0x0043,0x1080) LO Coil ID Data  - Warning - Explicit value representation ...``;
* a line with the IOD name (e.g. ``Segmentation``) and other informational lines;
* ``Abort - <message>`` if the file cannot be read at all.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

__all__ = ["DciodvfyError", "DciodvfyMissingError", "dciodvfy_path", "run_dciodvfy"]

#: A finding: "Error - ..." / "Warning - ..." at the start of a line or after " - ".
_FINDING = re.compile(r"(?:^|\s-\s)(Error|Warning)\s-\s")
_ABORT = re.compile(r"(?:^|\s-\s)Abort\s-\s")


class DciodvfyMissingError(RuntimeError):
    """``dciodvfy`` is not installed."""


class DciodvfyError(RuntimeError):
    """``dciodvfy`` could not validate the file (it aborted, or crashed)."""


def dciodvfy_path() -> str:
    """Path of the ``dciodvfy`` executable.

    Raises
    ------
    DciodvfyMissingError
        If it is not on ``PATH``; the message names the Debian package to install.
    """
    exe = shutil.which("dciodvfy")
    if exe is None:
        raise DciodvfyMissingError(
            "dciodvfy not found on PATH. Install it with `apt-get install -y dicom3tools` "
            "(Debian/Ubuntu package dicom3tools); the project's bootstrap script does this."
        )
    return exe


def run_dciodvfy(path: str | Path, timeout_s: float = 120.0) -> tuple[list[str], list[str]]:
    """Validate one DICOM file with ``dciodvfy``.

    Parameters
    ----------
    path : str or Path
        DICOM Part 10 file.
    timeout_s : float
        Time limit for the validator.

    Returns
    -------
    errors : list of str
        Lines reporting an ``Error``, verbatim (stripped).
    warnings : list of str
        Lines reporting a ``Warning``, verbatim (stripped).

    Raises
    ------
    DciodvfyMissingError
        If ``dciodvfy`` is not installed.
    FileNotFoundError
        If ``path`` does not exist.
    DciodvfyError
        If ``dciodvfy`` aborted (unreadable file) or was killed by a signal.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such DICOM file: {p}")
    proc = subprocess.run(
        [dciodvfy_path(), str(p)],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout_s,
        check=False,
    )
    lines = [ln.strip() for ln in (proc.stdout + "\n" + proc.stderr).splitlines() if ln.strip()]
    aborts = [ln for ln in lines if _ABORT.search(ln)]
    if aborts or proc.returncode < 0:
        raise DciodvfyError(
            f"dciodvfy could not validate {p} (exit {proc.returncode}): "
            + ("; ".join(aborts) or "\n".join(lines[-5:]))
        )
    errors: list[str] = []
    warnings: list[str] = []
    for ln in lines:
        m = _FINDING.search(ln)
        if m is None:
            continue
        (errors if m.group(1) == "Error" else warnings).append(ln)
    # dciodvfy exits 1 when it found errors; an error exit without a parsed error line
    # means the output format changed -- do not report "0 errors" in that case.
    if proc.returncode != 0 and not errors:
        raise DciodvfyError(
            f"dciodvfy exited {proc.returncode} for {p} but no 'Error -' line was parsed:\n"
            + "\n".join(lines[-20:])
        )
    return errors, warnings
