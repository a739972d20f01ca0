"""Atomic file writes: a reader sees the old file or the whole new one, never a part.

The one helper for every file the project writes that someone else reads while it may be
written (report.json, the DICOM-SEG, cached engines): a temporary file in the same folder,
flushed and ``fsync``-ed, renamed over the target with :func:`os.replace`, the folder
``fsync``-ed so that the rename survives a crash (best effort). On any failure the temporary
file is removed and the target is untouched.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomically(path: Path, write: Callable[[BinaryIO], None], mode: int = 0o644) -> Path:
    """Write ``path`` through ``write(handle)`` (an open binary file), atomically.

    ``mode``: final permissions (``mkstemp`` creates 0600; outputs are for other users: the
    PACS, the orchestrator). Creates the parent folder. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename durable too (not every file system allows fsync on a folder)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def write_bytes_atomically(path: Path, data: bytes, mode: int = 0o644) -> Path:
    """:func:`write_atomically` of ``data``."""
    return write_atomically(path, lambda handle: handle.write(data), mode)
