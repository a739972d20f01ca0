"""Holoscan operator: :class:`LoadedStudy` -> :class:`ModalitySelection`."""
from __future__ import annotations

import logging
from pathlib import Path

from monai.deploy.core import Fragment, Operator, OperatorSpec

from operators.selection.modality_selector import SelectionRules, select_usable_modalities
from operators.study_model import Stage, Timings


class ModalitySelectorOperator(Operator):
    """Finds the FLAIR, T1, T1ce and T2 series of a study and says which are missing.

    Named inputs:
        study: :class:`operators.study_model.LoadedStudy`.
        timings: :class:`operators.study_model.Timings` so far.

    Named outputs:
        selection: :class:`operators.study_model.ModalitySelection` (one series per
        modality at most, availability map, per-series scores and reasons).
        timings: the timings received, with ``select`` added.

    The rules come from a site-editable JSON file (``app/modality_rules.json`` by default).
    A study with no usable MR series raises :class:`operators.errors.NoUsableSeriesError`.
    """

    def __init__(self, fragment: Fragment, *args, rules_path: Path | None = None, **kwargs) -> None:
        self._logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self.rules = SelectionRules.load(rules_path)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("study")
        spec.input("timings")
        spec.output("selection")
        spec.output("timings")

    def compute(self, op_input, op_output, context) -> None:
        study = op_input.receive("study")
        timings: Timings = op_input.receive("timings")
        selection = select_usable_modalities(study, self.rules)
        op_output.emit(selection, "selection")
        op_output.emit(timings.merged(Timings({Stage.SELECT: selection.duration_s})), "timings")
