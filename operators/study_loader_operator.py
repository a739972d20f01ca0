"""Holoscan operator: DICOM input folder -> :class:`~operators.study_model.LoadedStudy`."""
from __future__ import annotations

import logging
from pathlib import Path

from monai.deploy.core import ConditionType, Fragment, Operator, OperatorSpec

from operators.dicom.study_loader import load_study
from operators.study_model import Stage, Timings


class StudyLoaderOperator(Operator):
    """Loads every DICOM image series of one study from a folder.

    Named input:
        input_folder: optional ``Path``; when absent, the folder given at construction is used.

    Named outputs:
        study: :class:`operators.study_model.LoadedStudy` (series with their pydicom datasets;
        ignored files with reasons).
        timings: :class:`operators.study_model.Timings`, the run's first stage: ``load``.

    Non-DICOM, empty and non-image files (SEG, SR, PR, ...) and duplicated instances are
    ignored with a log line; more than one study in the folder is refused
    (:class:`operators.errors.MultipleStudiesError`).
    """

    def __init__(self, fragment: Fragment, *args, input_folder: Path, **kwargs) -> None:
        self._logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self.input_folder = Path(input_folder)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("input_folder").condition(ConditionType.NONE)  # optional
        spec.output("study")
        spec.output("timings")

    def compute(self, op_input, op_output, context) -> None:
        folder = None
        try:
            folder = op_input.receive("input_folder")
        except Exception:  # noqa: BLE001 - optional port with no upstream
            folder = None
        folder = Path(folder) if folder else self.input_folder
        study = load_study(folder)
        op_output.emit(study, "study")
        op_output.emit(Timings({Stage.LOAD: study.duration_s}), "timings")
