"""Typed errors: each becomes one line in the log and in ``report.json``, and a non-zero exit code.

Every error the app reports this way is an :class:`AppError` of one :class:`ErrorKind`: the
input (the study), the output folder, the model folder or the inference server. The kinds are
siblings; :class:`ErrorKind` is the one place that says each kind's exit code and the error
code of a failure of that kind that says no more. Subclasses of a kind name the failure more
precisely with their own ``code``.

Raise these for problems an orchestrator should show a user; a bug in the code stays an
ordinary exception and gets exit code 1 with its traceback in the log.
"""
from __future__ import annotations

from enum import Enum
from typing import ClassVar


class ErrorKind(Enum):
    """What failed: each kind's error code and exit code (see :mod:`app.main`)."""

    INPUT = ("input_error", 2)
    OUTPUT = ("output_not_writable", 3)
    MODEL_FOLDER = ("model_folder_invalid", 4)
    INFERENCE_SERVER = ("inference_server_unavailable", 5)

    def __init__(self, code: str, exit_code: int) -> None:
        self.code = code
        self.exit_code = exit_code


class AppError(Exception):
    """Base class: the run cannot go on, for a reason of its :attr:`kind`. ``code`` is
    machine-readable (the kind's own unless a subclass names the failure more precisely)."""

    kind: ClassVar[ErrorKind]
    code: ClassVar[str]
    #: Sections for the failed ``report.json`` beside ``error`` (e.g. ``input``: what was found
    #: and picked), filled by the operator that knows them; empty when nothing is known yet.
    report_sections: dict

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__ and "code" not in cls.__dict__:
            cls.code = cls.kind.code

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.report_sections = {}

    @property
    def exit_code(self) -> int:
        return self.kind.exit_code

    def one_line(self) -> str:
        text = " ".join(str(self).split())
        if len(text) > 600:  # one line, bounded: DICOM text can be long
            text = text[:597] + "..."
        return f"{self.code}: {text}"


class InputError(AppError):
    """The study cannot be processed."""

    kind = ErrorKind.INPUT


class OutputNotWritableError(AppError):
    """The output folder cannot be written."""

    kind = ErrorKind.OUTPUT


class ModelFolderError(AppError):
    """The model folder (or the strategy table shipped with the app) is missing or invalid, or no
    engine runs the model here."""

    kind = ErrorKind.MODEL_FOLDER


class InferenceServerError(AppError):
    """Remote inference (``-t``) failed: the Triton server is down, does not answer within
    the timeout, lacks a model or serves other weights. No fallback to local inference."""

    kind = ErrorKind.INFERENCE_SERVER


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
