"""Holoscan operator: model-grid volumes -> BraTS label map, through an inference engine."""
from __future__ import annotations

import logging
from pathlib import Path

from monai.deploy.core import Fragment, Operator, OperatorSpec

from engines.model.cascade import PostProcessing
from engines.runtimes.registry import ModelFolderInvalid, check_model_folder
from operators.errors import ModelFolderError
from operators.segmentation.segment import labels_image, segment
from operators.study_model import ModalitySelection, ModelInput, Timings


class SegmentationOperator(Operator):
    """Runs the BraTS 2017 cascade (WT -> TC -> EN, three views each) on the model grid.

    Named inputs:
        model_input: :class:`operators.study_model.ModelInput`.
        selection: :class:`operators.study_model.ModalitySelection` (what a refusal's report
        says was found and picked).
        timings: :class:`operators.study_model.Timings` so far.

    Named outputs:
        labels: the BraTS labels {0, 1, 2, 4} on the model grid (``sitkUInt8``, the grid's
        geometry).
        plan: :class:`engines.model.missing.strategies.SubsetPlan` with a sequence missing (the
        subset, the fills, the expected Dice per region, the regions the SEG may hold, the
        warnings), else ``None``.
        segmentation: :class:`operators.study_model.SegmentationRecord` (the engine's
        description, which channels were imputed, notes), for the report.
        timings: the timings received, with ``segment`` and its parts added.

    The engine comes from :func:`engines.runtimes.registry.choose_engine` (``auto``: the first
    that works here of TensorRT FP16 > PyTorch CUDA FP16 (compiled) > ONNX Runtime CUDA >
    PyTorch CUDA FP32 > OpenVINO folded BF16 > OpenVINO folded FP32 > OpenVINO > ONNX Runtime
    CPU > PyTorch CPU). Absent sequences are filled as the measured strategy table says for the
    subset found (:mod:`engines.model.missing`; the regions the SEG may hold: expected Dice >= 0.70).
    Sequences with which no region reaches that bar raise
    :class:`operators.errors.InsufficientSequencesError` (exit code 2, no segmentation written);
    ``write_unreliable_regions`` (research) writes every region and refuses only below
    :data:`engines.model.missing.strategies.REFUSE_DICE` everywhere.
    """

    def __init__(self, fragment: Fragment, *args, model_dir: Path, engine: str = "auto", seed: int = 0,
                 triton_server: str = "", triton_timeout_s: float = 300.0, rules: PostProcessing = PostProcessing(),
                 cache_dir: Path | None = None, write_unreliable_regions: bool = False, **kwargs):
        self._logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self.write_unreliable_regions = write_unreliable_regions
        self.model_dir = Path(model_dir)
        try:
            self.manifest = check_model_folder(self.model_dir)
        except ModelFolderInvalid as exc:
            raise ModelFolderError(str(exc)) from exc
        self.engine_name = engine
        self.seed = seed
        self.triton_server = triton_server
        self.triton_timeout_s = triton_timeout_s
        self.rules = rules
        self.cache_dir = cache_dir
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("model_input")
        spec.input("selection")
        spec.input("timings")
        spec.output("labels")
        spec.output("plan")
        spec.output("segmentation")
        spec.output("timings")

    def compute(self, op_input, op_output, context) -> None:
        model_input: ModelInput = op_input.receive("model_input")
        selection: ModalitySelection = op_input.receive("selection")
        timings: Timings = op_input.receive("timings")
        outcome = segment(model_input, self.model_dir, self.engine_name, self.seed, self._logger,
                          triton_server=self.triton_server, triton_timeout_s=self.triton_timeout_s,
                          rules=self.rules, cache_dir=self.cache_dir,
                          write_unreliable_regions=self.write_unreliable_regions, selection=selection)
        op_output.emit(labels_image(outcome, model_input.grid), "labels")
        op_output.emit(outcome.plan, "plan")
        op_output.emit(outcome.record, "segmentation")
        op_output.emit(timings.merged(outcome.timings), "timings")
