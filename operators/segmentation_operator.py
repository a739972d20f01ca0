"""Holoscan operator: model-grid volumes -> BraTS label map, through an inference engine."""
from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path

from monai.deploy.core import Fragment, Operator, OperatorSpec

from engines.model.cascade import CascadePredictor, DegenerateInputError, PostProcessing, Preprocessed
from engines.model.missing.fills import StageInput, stage_inputs
from engines.model.missing.strategies import (
    StrategyTableError,
    SubsetPlan,
    load_fill_models,
    load_table,
    plan_for,
)
from engines.runtimes.registry import (
    EngineChoiceError,
    ModelFolderInvalid,
    RemoteAddressInvalid,
    check_model_folder,
    choose_engine,
)
from operators.errors import (
    DegenerateIntensityError,
    InferenceServerError,
    InsufficientSequencesError,
    ModelFolderError,
)
from operators.outputs.report import selection_section
from operators.study_model import MODALITIES, MODALITY_DISPLAY, ModelInput, SegmentationOutcome


class SegmentationOperator(Operator):
    """Runs the BraTS 2017 cascade (WT -> TC -> EN, three views each) on the model grid.

    Named input:
        model_input: :class:`operators.study_model.ModelInput`.

    Named output:
        segmentation: :class:`operators.study_model.SegmentationOutcome` (labels on the
        model grid, the engine's description, which channels were imputed and how).

    The engine comes from :func:`engines.runtimes.registry.choose_engine` (``auto``: the first
    that works here of TensorRT FP16 > PyTorch CUDA FP16 (compiled) > ONNX Runtime CUDA >
    PyTorch CUDA FP32 > OpenVINO folded BF16 > OpenVINO folded FP32 > OpenVINO > ONNX Runtime
    CPU > PyTorch CPU). Absent sequences are filled as the measured strategy table says for the
    subset found (:mod:`engines.model.missing`); the subset, the fills, the expected Dice per
    region, the regions the SEG may hold (expected Dice >= 0.70) and the warnings are in the
    outcome. Sequences with which no region reaches that bar raise
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
        spec.output("segmentation")

    def compute(self, op_input, op_output, context) -> None:
        model_input: ModelInput = op_input.receive("model_input")
        outcome = segment(model_input, self.model_dir, self.engine_name, self.seed, self._logger,
                          triton_server=self.triton_server, triton_timeout_s=self.triton_timeout_s,
                          rules=self.rules, cache_dir=self.cache_dir,
                          write_unreliable_regions=self.write_unreliable_regions)
        op_output.emit(outcome, "segmentation")


def segment(model_input: ModelInput, model_dir: Path, engine_name: str, seed: int, logger: logging.Logger,
            triton_server: str = "", triton_timeout_s: float = 300.0, rules: PostProcessing = PostProcessing(),
            cache_dir: Path | None = None, write_unreliable_regions: bool = False) -> SegmentationOutcome:
    """The work of :class:`SegmentationOperator`, callable without Holoscan.

    ``rules``: the post-processing size rules (``brats.thresholds``); ``cache_dir``: where
    engines that build or compile on the target GPU keep what they built (``engine_cache_dir``).

    ``triton_server`` set: the cascade's networks run on that Triton server (checked first:
    live, ready, same weights as ``model_dir``); any server problem raises
    :class:`operators.errors.InferenceServerError` (one line, exit code 5). The outcome's
    engine description says ``"inference": "remote"`` or ``"local"``.
    """
    from engines.runtimes.triton_engine import TritonError

    t0 = time.perf_counter()
    # may refuse: before any engine is built
    try:
        plan, fill = missing_sequence_plan(model_input.available, logger, write_unreliable_regions)
    except InsufficientSequencesError as exc:  # the failed report says what was found and picked
        found = dict(zip(MODALITIES, model_input.available))
        exc.report_sections.update(input=selection_section(model_input.selection), modalities={
            "used": [MODALITY_DISPLAY[m] for m, a in found.items() if a],
            "missing": [MODALITY_DISPLAY[m] for m, a in found.items() if not a]})
        raise
    try:
        engine, notes = choose_engine(engine_name, model_dir, triton_server, triton_timeout_s, cache_dir)
    except RemoteAddressInvalid as exc:
        raise InferenceServerError(str(exc)) from exc
    except EngineChoiceError as exc:  # model folder invalid, or no engine runs it here
        raise ModelFolderError(str(exc)) from exc
    remote = bool(triton_server)

    def progress(stage: str, fraction: float) -> None:
        logger.info("Segmentation: stage %s done (%d%%, %.0f s)", stage.upper(), round(100 * fraction), time.perf_counter() - t0)

    if plan is not None and plan.keep_core_outside_whole:
        rules = dataclasses.replace(rules, keep_core_outside_whole=True)
    try:
        predictor = CascadePredictor(engine, rules=rules)
        result = predictor.predict(model_input.volumes, model_input.available, seed=seed, fill=fill, progress=progress)
    except TritonError as exc:  # the cascade's prepare() checks the server first; or it failed mid-run
        raise InferenceServerError(str(exc)) from exc
    except DegenerateInputError as exc:  # the cascade's normalisation refuses degenerate channels
        raise DegenerateIntensityError(f"on the model grid: {exc}") from exc
    if remote:
        desc = result.engine
        versions = ", ".join(f"{n} v{'/'.join(m['versions'])}" for n, m in desc["models"].items())
        notes.append(f"remote inference: Triton {desc['server_version']} at {desc['server']} ({versions})")
        logger.info("Segmentation: %s", notes[-1])
    timings = {k: float(v) for k, v in result.timings.items()}
    timings["operator_total"] = time.perf_counter() - t0
    return SegmentationOutcome(
        model_input=model_input,
        labels=result.labels,
        engine={"inference": "remote" if remote else "local", "engine": engine.registry_name,
                "choice_reason": engine.choice_reason,
                "precision_choice": getattr(engine, "precision_choice", None), **result.engine},
        imputed_channels=list(result.imputed_channels),
        notes=notes + list(result.notes),
        timings=timings,
        missing_sequences=plan.as_report() if plan is not None else None,
    )


def missing_sequence_plan(
    available: tuple[bool, bool, bool, bool], logger: logging.Logger, write_unreliable_regions: bool = False
) -> tuple[SubsetPlan | None, Callable[[Preprocessed], dict[str, StageInput]] | None]:
    """The strategy table's plan for the sequences found and the fill it needs (``None, None``
    with all four). A missing or malformed table is a broken installation: ModelFolderError.
    Sequences the table refuses (:attr:`SubsetPlan.refusal`): InsufficientSequencesError."""
    if all(available):
        return None, None
    try:
        plan = plan_for(available, load_table(), write_unreliable_regions)
    except StrategyTableError as exc:
        raise ModelFolderError(str(exc)) from exc
    if plan.refusal:
        raise InsufficientSequencesError(plan.refusal)
    missing = [MODALITY_DISPLAY[m] for m, a in zip(MODALITIES, available) if not a]
    logger.warning("Missing sequences %s: sequences %s, WT stage fed %s, TC / EN stages fed %s%s (%s)", missing,
                   plan.subset, plan.fills["wt"], plan.fills["core"],
                   ", a core outside the whole tumour kept" if plan.keep_core_outside_whole else "",
                   "measured" if plan.measured else "not measured: zero fill")
    for line in plan.warnings:
        logger.warning("Missing sequences: %s", line)
    needs = set(plan.fills.values())
    references, synthesiser = load_fill_models() if needs & {"matched", "synthesis"} else (None, None)

    def fill(pre: Preprocessed) -> dict[str, StageInput]:
        return stage_inputs(pre.image, pre.brain_mask, pre.available, plan.fills, pre.seed, references, synthesiser)

    return plan, fill
