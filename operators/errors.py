"""Typed input errors: each becomes one line in the log and in ``report.json``, and a
non-zero exit code.

Raise these for problems with the *input* (what an orchestrator should show a user); a bug
in the code stays an ordinary exception and gets exit code 1 with its traceback in the log.
"""
from __future__ import annotations


class InputError(Exception):
    """Base class: the study cannot be processed. ``code`` is machine-readable."""

    code = "input_error"
    exit_code = 2

    def one_line(self) -> str:
        text = " ".join(str(self).split())
        return f"{self.code}: {text}"


class NoStudyError(InputError):
    code = "no_study"


class MultipleStudiesError(InputError):
    code = "multiple_studies"


class NoUsableSeriesError(InputError):
    code = "no_usable_mr_series"


class AmbiguousModalityError(InputError):
    code = "modality_ambiguous"


class InconsistentGeometryError(InputError):
    code = "inconsistent_geometry"


class UnreadablePixelDataError(InputError):
    code = "unreadable_pixel_data"


class UnsupportedTransferSyntaxError(InputError):
    code = "unsupported_transfer_syntax"


class OutputNotWritableError(InputError):
    code = "output_not_writable"
    exit_code = 3


class ModelFolderError(InputError):
    code = "model_folder_invalid"
    exit_code = 4
