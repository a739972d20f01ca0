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
    #: Sections for the failed ``report.json`` beside ``error`` (e.g. ``input``: what was found
    #: and picked), filled by the operator that knows them; empty when nothing is known yet.
    report_sections: dict

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.report_sections = {}

    def one_line(self) -> str:
        text = " ".join(str(self).split())
        if len(text) > 600:  # one line, bounded: DICOM text can be long
            text = text[:597] + "..."
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


class CorruptDicomFileError(InputError):
    """A file that is DICOM (``DICM`` preamble) but cannot be parsed: an incomplete transfer.
    Refused rather than skipped: a silently dropped instance would be a missing slice."""

    code = "corrupt_dicom_file"


class DegenerateIntensityError(InputError):
    """A series whose intensities cannot be normalised: constant, no positive voxel,
    non-finite (NaN / inf) or implausibly large values."""

    code = "degenerate_intensities"


class NoBrainFoundError(InputError):
    """Brain extraction found no brain in a study judged not skull-stripped (HD-BET on a few
    slices, an image that is not a head): nothing to segment."""

    code = "no_brain_found"


class InsufficientSequencesError(InputError):
    """The sequences found are too few for a segmentation worth showing: the strategy table
    expects every region's Dice below :data:`engines.model.missing.strategies.REFUSE_DICE`."""

    code = "insufficient_sequences"


class UnsupportedInputError(InputError):
    """A valid input the application does not handle (documented limitation)."""

    code = "unsupported_input"


class OutputNotWritableError(InputError):
    code = "output_not_writable"
    exit_code = 3


class InferenceServerError(InputError):
    """Remote inference (``-t``) failed: the Triton server is down, does not answer within
    the timeout, lacks a model or serves other weights. No fallback to local inference."""

    code = "inference_server_unavailable"
    exit_code = 5


class ModelFolderError(InputError):
    code = "model_folder_invalid"
    exit_code = 4
