"""Brain tumour segmentation MAP (MONAI Deploy): DICOM MR study in, DICOM-SEG out.

The application and its run's lifecycle: the operator graph (:mod:`app.app`, wiring only), the
entry point with its exit codes and failure report (:mod:`app.main`), SIGTERM handling
(:mod:`app.termination`), the settings (:mod:`app.settings`: ``app.yaml``, ``BRATS_*``), the
glibc arena cap (:mod:`app.memory`). May import :mod:`operators` and :mod:`engines`.
"""
from __future__ import annotations

import sys
from pathlib import Path

# The operators/ and engines/ packages sit beside app/ in the repository, and inside the
# app folder in a packaged MAP (python3 <app folder>). Make both layouts importable.
_APP_DIR = Path(__file__).resolve().parent
for _candidate in (_APP_DIR, _APP_DIR.parent):
    if (_candidate / "operators").is_dir() and str(_candidate) not in sys.path:
        sys.path.insert(0, str(_candidate))

__version__ = "0.1.0"
