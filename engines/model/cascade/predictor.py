"""The cascade predictor: WT -> TC -> EN, three views each, on one inference engine.

:class:`CascadePredictor` orchestrates; the mechanics are in its sibling modules
(:mod:`.preprocessing`, :mod:`.tiling`, :mod:`.fusion`) and the configuration in :mod:`.config`.

1. :func:`~engines.model.cascade.preprocessing.preprocess`: brain box, z-score, noise outside
   the brain (absent channels zero); then, if the caller gives one, a fill of the absent channels
   per stage group (:mod:`engines.model.missing.fills`: ``"wt"`` for the WT stage, ``"core"`` for
   the TC and EN stages).
2. Each stage: for each view, slabs of 11 output slices (+4 context slices each side), batches
   of 5, in-plane patch ``max(round_up(size, 4), base patch)`` centred; the mean of the three
   views' foreground softmax, thresholded at 0.5 inside the brain. WT runs on the brain box, TC
   on the box of the closed, component-filtered WT mask (the brain box when WT is empty), EN on
   the box of the TC mask (the whole TC box when TC is empty); margins 5 voxels.
3. Fusion of the three masks into BraTS labels {0, 1, 2, 4}
   (:func:`~engines.model.cascade.fusion.fuse_labels`), pasted into the full volume.

Determinism: every noise fill draws from a ``numpy.random.Generator`` seeded from the run's
seed: the preprocessing ``default_rng([seed, 0])``, stage ``s`` (index in
:data:`~engines.model.cascade.config.STAGE_ORDER`) view ``v`` (index in
:data:`~engines.model.cascade.config.VIEWS`) ``default_rng([seed, 1, s, v])``. Same input, seed,
stages, rules and engine give the same labels.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from engines.model.cascade.boxes import Box, bounding_box, box_slices, offset_box, whole_box
from engines.model.cascade.config import BOX_MARGIN, STAGE_ORDER, STAGES, VIEWS, PostProcessing, StageSpec, stage_networks
from engines.model.cascade.fusion import close, fuse_labels, largest_components, stage_mask
from engines.model.cascade.preprocessing import Preprocessed, preprocess
from engines.model.cascade.tiling import SlabTiling, from_view, softmax_foreground, to_view
from engines.model.missing.fills import StageInput
from engines.runtimes.base import InferenceEngine

log = logging.getLogger(__name__)

#: ``progress(stage, fraction)``: called after each stage with the fraction of the cascade done.
ProgressFn = Callable[[str, float], None]
#: ``fill(pre)``: the stage inputs ``{"wt": ..., "core": ...}`` with the absent channels filled.
FillFn = Callable[[Preprocessed], dict[str, StageInput]]

#: How each fill is described in the result's notes.
FILL_DESCRIPTIONS: dict[str, str] = {
    "zero": "zeros (the mean after z-scoring)",
    "copy": "a substitute sequence",
    "matched": "a substitute sequence mapped to the absent one's intensities",
    "synthesis": "the synthesis network's prediction",
}


@dataclass(frozen=True)
class ViewPrediction:
    """One network over one view-ordered volume.

    Attributes
    ----------
    probability
        float32 ``(D, H, W)`` foreground probability, in the view's order.
    network_seconds
        Wall time spent in ``engine.run`` (the network alone).
    """

    probability: np.ndarray
    network_seconds: float


@dataclass(frozen=True)
class StagePrediction:
    """One stage (three views) over one crop.

    Attributes
    ----------
    probability
        float32 ``(z, y, x)``: the mean of the three views' foreground probability.
    view_seconds
        View -> wall time of that view (transposes, tiling, networks).
    network_seconds
        View -> the part of it spent in ``engine.run``.
    """

    probability: np.ndarray
    view_seconds: dict[str, float]
    network_seconds: dict[str, float]


@dataclass
class CascadeResult:
    """Everything one cascade run produced.

    Attributes
    ----------
    labels
        uint8 ``(Z, Y, X)`` full-size BraTS labels {0, 1, 2, 4}.
    probabilities
        Stage -> float32 mean foreground probability ``(z, y, x)`` in that stage's box.
    stage_boxes
        Stage -> the box it ran on, half-open, full-volume (Z, Y, X) coordinates: ``"wt"`` the
        brain box, ``"tc"`` the box of the WT mask, ``"en"`` the box of the TC mask.
    timings
        Seconds per step (``preprocess``, ``fill`` when a fill ran, ``wt.axial``, ...,
        ``postprocess``, ``cascade``, ``total``); ``network``: the part of the views spent in
        ``engine.run`` (the networks alone).
    available, imputed_channels
        Modalities given / absent (fed as :attr:`fills` says).
    engine
        ``engine.describe()``.
    seed
        Noise seed.
    notes
        Lines for the report: empty stages, what absent channels were fed.
    fills
        What the absent channels were fed, per stage group: ``{"wt": ..., "core": ...}``
        (:mod:`engines.model.missing.fills`; ``"zero"`` when nothing was absent).
    """

    labels: np.ndarray
    probabilities: dict[str, np.ndarray]
    stage_boxes: dict[str, Box]
    timings: dict[str, float]
    available: tuple[bool, bool, bool, bool]
    imputed_channels: list[str]
    engine: dict[str, Any]
    seed: int
    notes: list[str] = field(default_factory=list)
    fills: dict[str, str] = field(default_factory=lambda: {"wt": "zero", "core": "zero"})


class CascadePredictor:
    """The BraTS 2017 cascade on one inference engine.

    Parameters
    ----------
    engine
        Any :class:`engines.runtimes.base.InferenceEngine`; prepared for the stages' networks at
        the start of every run.
    stages
        Networks and base in-plane patches per stage (default :data:`~.config.STAGES`, the
        authors'; :func:`~.config.smoke_stages` only for smoke runs).
    rules
        The post-processing size rules.
    inplane_bucket
        In-plane patch bucket (voxels; :func:`~engines.model.cascade.tiling.inplane_patch`):
        ``"engine"`` (default) the engine's own :attr:`~engines.runtimes.base.InferenceEngine.inplane_bucket`
        (``None`` on the CPU engines: exact patches), else this value (``None``: exact patches).
    """

    def __init__(
        self,
        engine: InferenceEngine,
        stages: Mapping[str, StageSpec] | None = None,
        rules: PostProcessing = PostProcessing(),
        inplane_bucket: int | None | Literal["engine"] = "engine",
    ) -> None:
        self.engine = engine
        self.stages: Mapping[str, StageSpec] = stages or STAGES
        self.rules = rules
        self.inplane_bucket: int | None = (
            getattr(engine, "inplane_bucket", None) if inplane_bucket == "engine" else inplane_bucket
        )

    def predict(
        self,
        volumes: np.ndarray,
        available: Sequence[bool],
        seed: int = 0,
        fill: FillFn | None = None,
        progress: ProgressFn | None = None,
    ) -> CascadeResult:
        """BraTS labels (and the rest of :class:`CascadeResult`) for one case.

        Parameters
        ----------
        volumes
            ``(4, Z, Y, X)`` (SimpleITK array order), FLAIR, T1, T1ce, T2, BraTS-style:
            co-registered, skull-stripped (background exactly 0), 1 mm isotropic.
        available
            4 bools: which modalities are real; at least one.
        seed
            Seed of every noise fill.
        fill
            Called with the preprocessed crop when a channel is absent: the stage inputs with
            the absent channels filled; without it they are fed as zeros.
        progress
            Called after each stage.

        Raises
        ------
        ValueError, DegenerateInputError
            As :func:`~engines.model.cascade.preprocessing.preprocess`; ``ValueError`` also when
            a fill's image is not the crop's shape.
        """
        t0 = time.perf_counter()
        pre = preprocess(volumes, available, seed)
        t_pre = time.perf_counter() - t0
        inputs = None
        if fill is not None and pre.imputed_channels:
            t_fill = time.perf_counter()
            inputs = fill(pre)
            t_fill = time.perf_counter() - t_fill
        res = self.predict_preprocessed(pre, inputs, progress)
        res.timings["preprocess"] = t_pre
        if inputs is not None:
            res.timings["fill"] = t_fill
        res.timings["total"] = time.perf_counter() - t0
        if pre.imputed_channels:
            for group, label in (("wt", "WT stage"), ("core", "TC / EN stages")):
                res.notes.append(f"absent modalities {', '.join(pre.imputed_channels)} fed to the {label} as "
                                 f"{FILL_DESCRIPTIONS[res.fills[group]]}")
        return res

    def predict_preprocessed(
        self,
        pre: Preprocessed,
        inputs: Mapping[str, StageInput] | None = None,
        progress: ProgressFn | None = None,
    ) -> CascadeResult:
        """The cascade on a preprocessed crop.

        ``inputs``: what the WT stage (``"wt"``) and the TC and EN stages (``"core"``) are fed,
        each of ``pre.image``'s shape (:func:`engines.model.missing.fills.stage_inputs`); default:
        ``pre.image`` for both (absent channels zero). The result has no ``preprocess``,
        ``fill`` or ``total`` timing. Raises ``ValueError`` when an input's shape differs.
        """
        t_all = time.perf_counter()
        timings: dict[str, float] = {}
        notes: list[str] = []
        self.engine.prepare(stage_networks(self.stages))
        plain = StageInput(pre.image, pre.available, "zero")
        inputs = dict(inputs) if inputs else {"wt": plain, "core": plain}
        for group, given in inputs.items():
            if given.image.shape != pre.image.shape:
                raise ValueError(f"stage input {group!r} is {given.image.shape}, the crop is {pre.image.shape}")
        brain = pre.brain_mask

        # WT on the brain box.
        wt_pred = self.predict_stage("wt", inputs["wt"].image, pre.seed, inputs["wt"].noise_channels)
        _record_times(timings, "wt", wt_pred)
        wt = stage_mask(wt_pred.probability, brain)
        if progress:
            progress("wt", 1 / 3)

        # TC on the box of the closed, filtered WT mask.
        if wt.any():
            tc_box = bounding_box(largest_components(close(wt), self.rules.wt_component_voxels), BOX_MARGIN)
        else:
            notes.append("WT stage found nothing: TC runs on the brain box")
            tc_box = bounding_box(brain, BOX_MARGIN)
        tc_sl = box_slices(tc_box)
        core_image, core_noise = inputs["core"].image, inputs["core"].noise_channels
        tc_image, tc_brain = np.ascontiguousarray(core_image[(slice(None), *tc_sl)]), brain[tc_sl]
        tc_pred = self.predict_stage("tc", tc_image, pre.seed, core_noise)
        _record_times(timings, "tc", tc_pred)
        tc = stage_mask(tc_pred.probability, tc_brain)
        if progress:
            progress("tc", 2 / 3)

        # EN on the box of the TC mask (the whole TC box when TC is empty).
        if tc.any():
            en_box_in_tc = bounding_box(largest_components(close(tc)), BOX_MARGIN)
        else:
            notes.append("TC stage found nothing: EN runs on the whole TC box")
            en_box_in_tc = whole_box(tc.shape)
        en_sl = box_slices(en_box_in_tc)
        en_pred = self.predict_stage("en", np.ascontiguousarray(tc_image[(slice(None), *en_sl)]), pre.seed, core_noise)
        _record_times(timings, "en", en_pred)
        en = stage_mask(en_pred.probability, tc_brain[en_sl])
        if progress:
            progress("en", 1.0)

        # Fusion, in the brain-box frame.
        t0 = time.perf_counter()
        tc_full = np.zeros_like(wt)
        tc_full[tc_sl] = tc
        en_full = np.zeros_like(wt)
        en_full[box_slices(offset_box(en_box_in_tc, tc_box))] = en
        labels = np.zeros(pre.full_shape, dtype=np.uint8)
        labels[box_slices(pre.brain_box)] = fuse_labels(wt, tc_full, en_full, self.rules)
        timings["postprocess"] = time.perf_counter() - t0
        timings["cascade"] = time.perf_counter() - t_all
        log.info("cascade: %.1f s (%s)", timings["cascade"], {k: round(v, 1) for k, v in timings.items()})

        tc_box_full = offset_box(tc_box, pre.brain_box)
        return CascadeResult(
            labels=labels,
            probabilities={"wt": wt_pred.probability, "tc": tc_pred.probability, "en": en_pred.probability},
            stage_boxes={"wt": pre.brain_box, "tc": tc_box_full, "en": offset_box(en_box_in_tc, tc_box_full)},
            timings=timings,
            available=pre.available,
            imputed_channels=pre.imputed_channels,
            # the bucket only where there is one: a CPU engine's description is what it always was
            engine={**self.engine.describe(), **({"inplane_bucket": self.inplane_bucket} if self.inplane_bucket else {})},
            seed=pre.seed,
            notes=notes,
            fills={group: given.fill for group, given in inputs.items()},
        )

    def predict_stage(
        self, stage: str, image: np.ndarray, seed: int, noise_channels: Sequence[bool] = (True,) * 4
    ) -> StagePrediction:
        """The mean of the three views' foreground softmax for one stage.

        Parameters
        ----------
        stage
            ``"wt"``, ``"tc"`` or ``"en"``.
        image
            float32 ``(4, z, y, x)`` crop, (Z, Y, X) order.
        seed
            Base seed; view ``v`` of stage ``s`` draws its noise from ``default_rng([seed, 1, s, v])``.
        noise_channels
            Channels padded with N(0, 1) noise outside the crop (the others with zeros).
        """
        spec = self.stages[stage]
        s_idx = STAGE_ORDER.index(stage)
        acc = np.zeros(image.shape[1:], dtype=np.float32)
        view_seconds: dict[str, float] = {}
        network_seconds: dict[str, float] = {}
        for v_idx, view in enumerate(VIEWS):
            t0 = time.perf_counter()
            volume = to_view(image, view)
            rng = np.random.default_rng([seed, 1, s_idx, v_idx])
            pred = self.predict_view(spec.networks[view], volume, spec.patch_hw[view], rng, noise_channels)
            acc += from_view(pred.probability, view)
            view_seconds[view] = time.perf_counter() - t0
            network_seconds[view] = pred.network_seconds
            log.info("stage %s view %s (%s): volume %s, %.1f s", stage, view, spec.networks[view], volume.shape[1:],
                     view_seconds[view])
        return StagePrediction(acc / 3.0, view_seconds, network_seconds)

    def predict_view(
        self,
        network: str,
        volume: np.ndarray,
        base_hw: tuple[int, int],
        rng: np.random.Generator,
        noise_channels: Sequence[bool],
    ) -> ViewPrediction:
        """Foreground probability of one network over a whole view-ordered volume.

        Parameters
        ----------
        network
            The network's name.
        volume
            float32 ``(4, D, H, W)`` in the network's view order.
        base_hw
            Base in-plane patch ``(H, W)``, grown to cover the volume
            (:func:`~engines.model.cascade.tiling.inplane_patch`, in buckets when the predictor has one).
        rng
            Source of every noise voxel of the view's batches.
        noise_channels
            Channels padded with N(0, 1) noise (the others with zeros).

        Returns
        -------
        ViewPrediction
            float32 ``(D, H, W)``; where slabs overlap, the later slab wins.
        """
        tiling = SlabTiling.of(volume.shape[1:], base_hw, self.inplane_bucket)
        prob = np.zeros(tiling.shape, dtype=np.float32)
        network_seconds = 0.0
        for starts, batch in tiling.batches(volume, rng, noise_channels):
            t_net = time.perf_counter()
            logits = self.engine.run(network, batch)
            network_seconds += time.perf_counter() - t_net
            for start, foreground in zip(starts, softmax_foreground(logits)):  # (N, 11, h, w)
                d_slice, values = tiling.output(start, foreground)
                prob[d_slice] = values
        return ViewPrediction(prob, network_seconds)


def _record_times(timings: dict[str, float], stage: str, pred: StagePrediction) -> None:
    """Add a stage's view times (``"<stage>.<view>"``) and network time (``"network"``) to ``timings``."""
    for view, seconds in pred.view_seconds.items():
        timings[f"{stage}.{view}"] = seconds
        timings["network"] = timings.get("network", 0.0) + pred.network_seconds[view]


def segment_brats_full(
    volumes: np.ndarray,
    available: Sequence[bool],
    engine: InferenceEngine,
    seed: int = 0,
    progress: ProgressFn | None = None,
    rules: PostProcessing = PostProcessing(),
    stages: Mapping[str, StageSpec] | None = None,
    fill: FillFn | None = None,
) -> CascadeResult:
    """``CascadePredictor(engine, stages, rules).predict(volumes, available, seed, fill, progress)``."""
    return CascadePredictor(engine, stages, rules).predict(volumes, available, seed, fill, progress)


def segment_brats(
    volumes: np.ndarray,
    available: Sequence[bool],
    engine: InferenceEngine,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> np.ndarray:
    """uint8 ``(Z, Y, X)`` BraTS labels {0, 1, 2, 4} of one case under the published rules, absent
    modalities fed as zeros (:meth:`CascadePredictor.predict` for the rest of the result)."""
    return CascadePredictor(engine).predict(volumes, available, seed, progress=progress).labels
