"""Holoscan operator: selected series -> all of them on the model grid, and the reference series."""
from __future__ import annotations

import logging
from pathlib import Path

from monai.deploy.core import Fragment, Operator, OperatorSpec

from operators.spatial.methods import AUTO, BrainExtraction
from operators.spatial.model_input import register_and_resample
from operators.study_model import ModalitySelection, Timings


class RegistrationOperator(Operator):
    """Puts every selected series onto one grid, as the model was trained.

    Named inputs:
        selection: :class:`operators.study_model.ModalitySelection`.
        timings: :class:`operators.study_model.Timings` so far.

    Named outputs:
        model_input: :class:`operators.study_model.ModelInput` (``(4, Z, Y, X)`` volumes on the
        1 mm model grid, availability, the grid), for the segmentation.
        reference: :class:`operators.study_model.ReferenceSeries`, the series the SEG references.
        brain_mask: the brain mask applied to the volumes (``sitkUInt8`` on the model grid), or
        ``None`` when the study was already skull-stripped (the QA image draws its outline).
        registration: :class:`operators.study_model.RegistrationRecord` (the backend, one record
        per moving series, the brain extraction's record, the grid), for the report.
        timings: the timings received, with ``register_and_resample`` and its parts added.

    Parameters: ``model_dir`` (the model folder: HD-BET's exported graph), ``cache_dir`` (the
    engine cache: the CPU precision measured here), ``seed``, ``brain_extraction``,
    ``registration_backend``.

    The reference is T1ce when present, else T1, T2, FLAIR (:data:`operators.spatial.grid.REFERENCE_ORDER`).
    Every other series is rigidly registered to it (SimpleITK, Mattes mutual information,
    multi-resolution, fixed seed, identity start = the scanner's patient coordinates, the
    thicker-sliced image as the metric domain; see :func:`operators.spatial.registration.register_rigid`),
    then all are resampled (linear) onto the model grid: 1 mm isotropic, identity direction
    in LPS, covering the reference's field of view. Series are registered even when their
    headers claim the same frame of reference: patients move between sequences.

    When the study is not skull-stripped (decided from every series,
    :func:`operators.spatial.skull_stripped.assess_study`), a brain mask is computed on the
    model grid (HD-BET by default; :func:`operators.spatial.brain_masking.brain_mask_on_grid`)
    and applied to every channel (background exactly 0, as the model expects).
    """

    def __init__(self, fragment: Fragment, *args, seed: int = 0,
                 brain_extraction: BrainExtraction | str = BrainExtraction.HD_BET, registration_backend: str = AUTO,
                 model_dir: Path | None = None, cache_dir: Path | None = None, **kwargs) -> None:
        self._logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self.seed = seed
        self.model_dir = model_dir
        self.cache_dir = cache_dir
        self.brain_extraction = brain_extraction
        self.registration_backend = registration_backend
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("selection")
        spec.input("timings")
        spec.output("model_input")
        spec.output("reference")
        spec.output("brain_mask")
        spec.output("registration")
        spec.output("timings")

    def compute(self, op_input, op_output, context) -> None:
        selection: ModalitySelection = op_input.receive("selection")
        timings: Timings = op_input.receive("timings")
        done = register_and_resample(selection, self.seed, self._logger, self.brain_extraction,
                                     self.registration_backend, self.model_dir, self.cache_dir)
        op_output.emit(done.model_input, "model_input")
        op_output.emit(done.reference, "reference")
        op_output.emit(done.brain_mask, "brain_mask")
        op_output.emit(done.record, "registration")
        op_output.emit(timings.merged(done.timings), "timings")
