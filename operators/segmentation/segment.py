"""The segmentation stage's work without Holoscan: the model-grid volumes -> BraTS labels, the
missing-sequence plan and the record (:class:`operators.segmentation_operator.SegmentationOperator` runs it).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from engines.model.cascade import CascadePredictor, DegenerateInputError, PostProcessing, Preprocessed
from engines.model.missing.fills import StageInput, stage_inputs
from engines.model.missing.strategies import (
    StrategyTableError,
    SubsetPlan,
    load_fill_models,
    load_table,
    plan_for,
)
from engines.model.vocabulary import Fill, StageGroup
from engines.runtimes.registry import (
    EngineChoiceError,
    RemoteAddressInvalid,
    choose_engine,
)
from operators.errors import (
    DegenerateIntensityError,
    InferenceServerError,
    InsufficientSequencesError,
    ModelFolderError,
)
from operators.outputs.report import selection_section
from operators.study_model import (
    MODALITIES,
    MODALITY_DISPLAY,
    ModalitySelection,
    ModelInput,
    SegmentationRecord,
    Stage,
    Timings,
)


@dataclass(frozen=True)
class SegmentationOutcome:
    """What :func:`segment` gives, for the output ports of :class:`operators.segmentation_operator.SegmentationOperator`."""

    labels: np.ndarray
    """uint8 ``(Z, Y, X)`` BraTS labels {0, 1, 2, 4} on the model grid."""
    plan: SubsetPlan | None
    record: SegmentationRecord
    timings: Timings
    """``segment`` (its steps as its detail: the cascade's and ``operator_total``) and its parts."""


def segment(model_input: ModelInput, model_dir: Path, engine_name: str, seed: int, logger: logging.Logger,
            triton_server: str = "", triton_timeout_s: float = 300.0, rules: PostProcessing = PostProcessing(),
            cache_dir: Path | None = None, write_unreliable_regions: bool = False,
            selection: ModalitySelection | None = None,
            engines: dict[tuple[str, ...], tuple[Any, list[str]]] | None = None) -> SegmentationOutcome:
    """The work of :class:`operators.segmentation_operator.SegmentationOperator`, callable without Holoscan.

    ``rules``: the post-processing size rules (``brats.thresholds``); ``cache_dir``: where
    engines that build or compile on the target GPU keep what they built (``engine_cache_dir``);
    ``selection``: what a refusal's report says was found and picked; ``engines``: the engines
    earlier calls of this process created, by their settings (the caller keeps it between
    studies: :mod:`app.direct`), reused with their notes; ``None``: a new engine every call.

    ``triton_server`` set: the cascade's networks run on that Triton server (checked first:
    live, ready, same weights as ``model_dir``); any server problem raises
    :class:`operators.errors.InferenceServerError` (one line, exit code 5). The record's
    engine description says ``"inference": "remote"`` or ``"local"``.
    """
    from engines.runtimes.triton_engine import TritonError

    t0 = time.perf_counter()
    # may refuse: before any engine is built
    try:
        plan, fill = missing_sequence_plan(model_input.available, logger, write_unreliable_regions)
    except InsufficientSequencesError as exc:  # the failed report says what was found and picked
        found = dict(zip(MODALITIES, model_input.available))
        if selection is not None:
            exc.report_sections.update(input=selection_section(selection))
        exc.report_sections.update(modalities={
            "used": [MODALITY_DISPLAY[m] for m, a in found.items() if a],
            "missing": [MODALITY_DISPLAY[m] for m, a in found.items() if not a]})
        raise
    engine_key = (engine_name, str(model_dir), triton_server, str(triton_timeout_s), str(cache_dir))
    try:
        if engines is not None and engine_key in engines:
            engine, notes = engines[engine_key][0], list(engines[engine_key][1])
        else:
            engine, notes = choose_engine(engine_name, model_dir, triton_server, triton_timeout_s, cache_dir)
            if engines is not None:
                engines[engine_key] = (engine, list(notes))
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
    steps = Timings(result.timings)  # the cascade's steps, then this stage's total
    network = float(result.timings.get("network", 0.0))  # inside engine.run only
    total = time.perf_counter() - t0
    steps.add("operator_total", total)
    clock = Timings()
    clock.add(Stage.NETWORK, network)
    clock.add(Stage.CASCADE_OTHER, max(total - network, 0.0))
    clock.add(Stage.SEGMENT, total, detail=steps)
    record = SegmentationRecord(
        engine={"inference": "remote" if remote else "local", "engine": engine.registry_name,
                "choice_reason": engine.choice_reason,
                "precision_choice": getattr(engine, "precision_choice", None), **result.engine},
        imputed_channels=list(result.imputed_channels),
        notes=notes + list(result.notes),
    )
    return SegmentationOutcome(labels=result.labels, plan=plan, record=record, timings=clock)


def labels_image(outcome: SegmentationOutcome, grid: sitk.Image) -> sitk.Image:
    """The outcome's labels as a ``sitkUInt8`` image with ``grid``'s geometry (the model grid)."""
    labels = sitk.GetImageFromArray(np.ascontiguousarray(outcome.labels, dtype=np.uint8))
    labels.CopyInformation(grid)
    return labels


def missing_sequence_plan(
    available: tuple[bool, bool, bool, bool], logger: logging.Logger, write_unreliable_regions: bool = False
) -> tuple[SubsetPlan | None, Callable[[Preprocessed], dict[StageGroup, StageInput]] | None]:
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
    logger.warning("Missing sequences %s: sequences %s, WT stage fed %s, TC / EN stages fed %s%s (%s)", plan.missing,
                   plan.subset, plan.fills[StageGroup.WT], plan.fills[StageGroup.CORE],
                   ", a core outside the whole tumour kept" if plan.keep_core_outside_whole else "",
                   "measured" if plan.measured else "not measured: zero fill")
    for line in plan.warnings:
        logger.warning("Missing sequences: %s", line)
    needs = set(plan.fills.values())
    references, synthesiser = load_fill_models() if needs & {Fill.MATCHED, Fill.SYNTHESIS} else (None, None)

    def fill(pre: Preprocessed) -> dict[StageGroup, StageInput]:
        return stage_inputs(pre.image, pre.brain_mask, pre.available, plan.fills, pre.seed, references, synthesiser)

    return plan, fill
