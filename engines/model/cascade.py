"""Test-time protocol of the BraTS 2017 cascade (Wang et al.) on NumPy volumes.

=====================================================================================
AXIS CONVENTION (project-wide) -- READ THIS FIRST
=====================================================================================
Every volume here is in SimpleITK ``GetArrayFromImage`` order **(Z, Y, X)** =
(slices, rows, cols); BraTS grid 155 x 240 x 240, 1 mm isotropic, LPS-identity
direction. A multi-modal volume is **(4, Z, Y, X)** with channels in the order
**FLAIR, T1, T1ce, T2** (the order the networks were trained with).

The networks see slabs ``(N, 4, D, H, W)``. The three views are axis permutations of
(Z, Y, X), exactly as the original code did:

* axial:    (D, H, W) = (Z, Y, X)  -- no transpose
* sagittal: (D, H, W) = (X, Z, Y)  -- ``transpose(2, 0, 1)`` of (Z, Y, X)
* coronal:  (D, H, W) = (Y, Z, X)  -- ``transpose(1, 0, 2)`` of (Z, Y, X)

Check: the README's WT patches are axial [19,180,160] (H=Y, W=X), sagittal [19,160,180]
(H=Z, W=Y), coronal [19,160,160] (H=Z, W=X).
=====================================================================================

Pipeline (README "How the authors ran it at test time"), nnU-Net-like split:

1. :func:`preprocess` -- brain box (margin 5), per-modality z-score over voxels > 0,
   seeded N(0, 1) noise outside the brain, crop.
2. :func:`run_stage` -- one stage (WT, TC or EN): for each view, slabs of 11 output
   slices (+4 context slices on each side, 19 in), batch size 5, in-plane patch
   ``max(round_up(size, 4), base patch)`` centred, last slab clamped, last batch padded
   with noise slabs; softmax of the three views averaged.
3. :func:`segment_preprocessed` -- cascade WT -> TC -> EN with the box / component /
   closing rules, fusion and post-processing into BraTS labels {0, 1, 2, 4}.

Determinism
-----------
The original used unseeded ``np.random`` for every noise fill, so two runs differed
(the noise also enters the batch statistics). Here every noise fill draws from a
``numpy.random.Generator`` seeded from ``(seed, purpose...)``: the preprocessing uses
``default_rng([seed, 0])``, stage ``s`` view ``v`` uses ``default_rng([seed, 1, s, v])``.
Same input + same seed + same engine -> same labels.

Missing modalities
------------------
``available`` is a 4-bool mask. :func:`preprocess` leaves an absent channel **zero everywhere**
(the channel mean after z-scoring), with no noise, also in patch padding and in noise padding
slabs. The brain mask is the union of ``> 0`` over the *available* channels. What the stages
are then fed is the caller's choice, per stage group (``inputs`` / ``fill``: the WT stage, and
the TC and EN stages): zero (the published behaviour), or a fill of
:mod:`engines.model.missing.fills`. The result records ``available``, ``imputed_channels`` and
``fills`` so that nothing is silently invented.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage, special

from engines.model.missing.fills import StageInput
from engines.model.modalities import CHANNEL_NAMES
from engines.runtimes.base import InferenceEngine

log = logging.getLogger(__name__)

BRAIN_MARGIN = 5
BOX_MARGIN = 5
OUT_SLICES = 11  # output slices per slab
CONTEXT = 4  # input context slices on each side (19 = 11 + 2 * 4)
IN_SLICES = OUT_SLICES + 2 * CONTEXT
BATCH_SIZE = 5
INPLANE_MULTIPLE = 4
WT_COMPONENT_THRESHOLD = 2000  # voxels
MIN_ET_VOXELS = 30  # ET with fewer voxels (but > 0) is dropped, as the original did
#: 18-neighbourhood structuring element for closing and connected components.
STRUCT_18 = ndimage.generate_binary_structure(3, 2)

#: View name -> permutation of (Z, Y, X) giving the network's (D, H, W).
VIEW_AXES: dict[str, tuple[int, int, int]] = {
    "axial": (0, 1, 2),
    "sagittal": (2, 0, 1),
    "coronal": (1, 0, 2),
}
VIEWS = ("axial", "sagittal", "coronal")

Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]  # ((z0,z1),(y0,y1),(x0,x1)) half-open
ProgressFn = Callable[[str, float], None]


class DegenerateInputError(ValueError):
    """The volumes cannot be normalised as the networks were trained: no voxel above 0 in the
    available channels, or a channel with no intensity spread over the brain."""


@dataclass(frozen=True)
class PostProcessing:
    """The cascade's size rules (the app's ``brats.thresholds`` settings).

    Attributes
    ----------
    wt_component_voxels
        Whole-tumour components of at most this many voxels are dropped (the largest is always
        kept): for the box the TC stage runs on and in the final fusion.
    min_enhancing_voxels
        An enhancing-tumour label with fewer voxels than this (but more than 0) is dropped.
    keep_core_outside_whole
        ``False`` (the published rule): a tumour-core component less than half inside the whole
        tumour is dropped. ``True``: it is kept (and the whole tumour grows to contain it); the
        strategy table sets it for subsets where the WT stage under-segments without FLAIR
        (measured; never with all four sequences).
    """

    wt_component_voxels: int = WT_COMPONENT_THRESHOLD
    min_enhancing_voxels: int = MIN_ET_VOXELS
    keep_core_outside_whole: bool = False


@dataclass(frozen=True)
class StageSpec:
    """One cascade stage: its three networks and base in-plane patch per view ``(H, W)``."""

    name: str
    networks: dict[str, str]
    patch_hw: dict[str, tuple[int, int]]


STAGES: dict[str, StageSpec] = {
    "wt": StageSpec(
        "wt",
        {"axial": "wt32", "sagittal": "wt32sg", "coronal": "wt32cr"},
        {"axial": (180, 160), "sagittal": (160, 180), "coronal": (160, 160)},
    ),
    "tc": StageSpec(
        "tc",
        {"axial": "tc32", "sagittal": "tc32sg", "coronal": "tc32cr"},
        {v: (96, 96) for v in VIEWS},
    ),
    "en": StageSpec(
        "en",
        {"axial": "en32", "sagittal": "en32sg", "coronal": "en32cr"},
        {v: (96, 96) for v in VIEWS},
    ),
}
STAGE_ORDER = ("wt", "tc", "en")


def smoke_stages(patch: int = 48) -> dict[str, StageSpec]:
    """:data:`STAGES` with every base in-plane patch ``patch x patch``: **not the protocol** (the
    networks were run on 96-180), only for smoke runs of code around the cascade on a CPU, where
    the real WT batches (5 x 4 x 19 x 180 x 160) cost seconds each."""
    return {k: StageSpec(s.name, dict(s.networks), {v: (patch, patch) for v in VIEWS}) for k, s in STAGES.items()}


def protocol_shape(network: str) -> tuple[int, int, int, int, int]:
    """The batch the protocol feeds ``network`` at its base in-plane patch, ``(N, C, D, H, W)``
    = ``(5, 4, 19, H, W)``; ``H``, ``W`` grow with the brain box (:func:`inplane_patch`)."""
    for spec in STAGES.values():
        for view, net in spec.networks.items():
            if net == network:
                return (BATCH_SIZE, len(CHANNEL_NAMES), IN_SLICES, *spec.patch_hw[view])
    raise ValueError(f"unknown network {network!r}")


# ----------------------------------------------------------------------------- boxes


def bounding_box(mask: np.ndarray, margin: int = 0) -> Box:
    """Half-open bounding box of ``mask`` (Z, Y, X), grown by ``margin`` and clipped.

    Raises ``ValueError`` on an empty mask.
    """
    if not mask.any():
        raise ValueError("bounding box of an empty mask")
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        box.append((max(int(idx[0]) - margin, 0), min(int(idx[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(box)  # type: ignore[return-value]


def box_slices(box: Box) -> tuple[slice, slice, slice]:
    """``Box`` -> tuple of slices for indexing (Z, Y, X)."""
    return tuple(slice(a, b) for a, b in box)  # type: ignore[return-value]


def box_shape(box: Box) -> tuple[int, int, int]:
    return tuple(b - a for a, b in box)  # type: ignore[return-value]


def offset_box(inner: Box, outer: Box) -> Box:
    """Express ``inner`` (relative to ``outer``'s origin) in ``outer``'s parent frame."""
    return tuple((a + o0, b + o0) for (a, b), (o0, _) in zip(inner, outer))  # type: ignore[return-value]


# ----------------------------------------------------------------------------- preprocess


@dataclass
class Preprocessed:
    """Network-ready crop of one case.

    Attributes
    ----------
    image
        float32 ``(4, z, y, x)``: the brain box, z-scored per modality, noise outside the
        brain, absent channels zero.
    brain_mask
        bool ``(z, y, x)``: union of ``> 0`` over the available channels, in the box.
    brain_box
        Box of ``image`` in the full volume (Z, Y, X), half-open.
    full_shape
        ``(Z, Y, X)`` of the input volumes.
    available
        4 bools, FLAIR, T1, T1ce, T2.
    stats
        Per modality ``(mean, std)`` over voxels > 0 (``None`` when absent).
    seed
        The seed all noise derives from.
    """

    image: np.ndarray
    brain_mask: np.ndarray
    brain_box: Box
    full_shape: tuple[int, int, int]
    available: tuple[bool, bool, bool, bool]
    stats: list[tuple[float, float] | None]
    seed: int

    @property
    def imputed_channels(self) -> list[str]:
        """Names of the channels that were fed as zeros because they were absent."""
        return [m for m, a in zip(CHANNEL_NAMES, self.available) if not a]

    def crop(self, box: Box) -> Preprocessed:
        """Sub-box (relative to ``image``) as a new :class:`Preprocessed` (tests, tiling)."""
        sl = box_slices(box)
        return Preprocessed(
            image=np.ascontiguousarray(self.image[(slice(None), *sl)]),
            brain_mask=self.brain_mask[sl].copy(),
            brain_box=offset_box(box, self.brain_box),
            full_shape=self.full_shape,
            available=self.available,
            stats=self.stats,
            seed=self.seed,
        )


def preprocess(volumes: np.ndarray, available: Sequence[bool] = (True,) * 4, seed: int = 0) -> Preprocessed:
    """Crop to the brain, z-score each modality, fill the background with noise.

    Parameters
    ----------
    volumes
        ``(4, Z, Y, X)`` intensities (any real dtype), channels FLAIR, T1, T1ce, T2,
        skull-stripped so that background is exactly 0. Absent channels may hold anything
        (they are ignored).
    available
        4 bools; at least one must be true.
    seed
        Noise seed (``default_rng([seed, 0])``).

    Returns
    -------
    Preprocessed
        The crop; see the class. Per available modality: ``(v - mean) / std`` with mean and
        std over the voxels > 0 of the *whole* volume, and N(0, 1) noise where ``v == 0``
        inside the box (as the original did). Absent modality: zeros everywhere.
    """
    t0 = time.perf_counter()
    volumes = np.asarray(volumes)
    if volumes.ndim != 4 or volumes.shape[0] != 4:
        raise ValueError(f"volumes must be (4, Z, Y, X), got {volumes.shape}")
    avail = tuple(bool(a) for a in available)
    if len(avail) != 4 or not any(avail):
        raise ValueError(f"available must be 4 bools with at least one true, got {available}")

    brain = np.zeros(volumes.shape[1:], dtype=bool)
    for c in range(4):
        if avail[c]:
            brain |= volumes[c] > 0
    if not brain.any():
        raise DegenerateInputError("no voxel > 0 in the available channels: not a skull-stripped brain volume")
    box = bounding_box(brain, BRAIN_MARGIN)
    sl = box_slices(box)

    rng = np.random.default_rng([seed, 0])
    out = np.zeros((4, *box_shape(box)), dtype=np.float32)
    stats: list[tuple[float, float] | None] = []
    for c in range(4):
        if not avail[c]:
            stats.append(None)  # fed as zeros: the channel mean after z-scoring
            continue
        v = volumes[c].astype(np.float32)
        fg = v > 0
        mean = float(v[fg].mean())
        std = float(v[fg].std())
        if not std > 0:
            raise DegenerateInputError(f"{CHANNEL_NAMES[c]}: zero intensity spread over the brain")
        crop = v[sl]
        z = (crop - mean) / std
        noise = rng.standard_normal(crop.shape, dtype=np.float32)
        out[c] = np.where(crop > 0, z, noise)
        stats.append((mean, std))
    log.info("preprocess: box %s, available %s, %.2f s", box, avail, time.perf_counter() - t0)
    return Preprocessed(out, brain[sl].copy(), box, tuple(volumes.shape[1:]), avail, stats, seed)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- tiling


def slab_starts(depth: int, out_slices: int = OUT_SLICES) -> list[int]:
    """First *output* slice of each slab along D.

    The original tiled with centres ``5, 16, 27, ...`` (``range(5, D + 5, 11)``) and
    clamped the centre to ``D - 5``; output slices are ``centre - 5 .. centre + 5``. So the
    starts are ``min(11 k, D - 10)`` for ``k < ceil(D / 11)``. (The clamped last slab's last
    output slice falls one past the volume and is dropped: faithful to the original.)
    """
    half = out_slices // 2
    centres = [min(c, depth - half) for c in range(half, depth + half, out_slices)]
    return [c - half for c in centres]


def inplane_patch(size: int, base: int, multiple: int = INPLANE_MULTIPLE) -> int:
    """In-plane patch size: ``max(size rounded up to a multiple of 4, base)``."""
    return max(-(-size // multiple) * multiple, base)


def extract_patch(
    volume: np.ndarray,
    start: Sequence[int],
    shape: Sequence[int],
    rng: np.random.Generator,
    noise_channels: Sequence[bool],
) -> np.ndarray:
    """Patch ``(C, *shape)`` of ``volume`` ``(C, D, H, W)`` starting at ``start`` (may be < 0).

    Voxels outside the volume are N(0, 1) noise in ``noise_channels`` and 0 elsewhere
    (absent modalities).
    """
    c = volume.shape[0]
    patch = np.zeros((c, *shape), dtype=np.float32)
    for ch in range(c):
        if noise_channels[ch]:
            patch[ch] = rng.standard_normal(tuple(shape), dtype=np.float32)
    src, dst = [], []
    for s, n, size in zip(start, shape, volume.shape[1:]):
        a, b = max(s, 0), min(s + n, size)
        if b <= a:
            return patch
        src.append(slice(a, b))
        dst.append(slice(a - s, b - s))
    patch[(slice(None), *dst)] = volume[(slice(None), *src)]
    return patch


def softmax_foreground(logits: np.ndarray) -> np.ndarray:
    """Foreground probability of 2-class logits ``(N, 2, ...)`` -> ``(N, ...)``, stable."""
    # softmax([l0, l1])[1] == sigmoid(l1 - l0); expit does not overflow.
    return special.expit(logits[:, 1] - logits[:, 0]).astype(np.float32, copy=False)


def predict_view(
    engine: InferenceEngine,
    network: str,
    volume: np.ndarray,
    base_hw: tuple[int, int],
    rng: np.random.Generator,
    noise_channels: Sequence[bool],
    batch_size: int = BATCH_SIZE,
    network_seconds: list[float] | None = None,
) -> np.ndarray:
    """Foreground probability of one network over a whole (view-ordered) volume.

    ``network_seconds``, when given, receives the wall time of every ``engine.run`` call (the
    network alone, without patch extraction, noise and softmax).

    Parameters
    ----------
    volume
        float32 ``(4, D, H, W)`` in the *network's* view order.
    base_hw
        Base in-plane patch ``(H, W)``; grown to cover the volume (:func:`inplane_patch`).

    Returns
    -------
    numpy.ndarray
        float32 ``(D, H, W)`` softmax foreground probability. Where slabs overlap, the
        later slab wins (as the original's ``set_roi_to_volume``).
    """
    _, depth, h, w = volume.shape
    ph, pw = inplane_patch(h, base_hw[0]), inplane_patch(w, base_hw[1])
    # Centred in-plane: patch start = size // 2 - patch // 2 (<= 0: the volume sits inside).
    h0, w0 = h // 2 - ph // 2, w // 2 - pw // 2
    starts = slab_starts(depth)
    prob = np.zeros((depth, h, w), dtype=np.float32)
    for b0 in range(0, len(starts), batch_size):
        chunk = starts[b0 : b0 + batch_size]
        slabs = [
            extract_patch(volume, (s - CONTEXT, h0, w0), (IN_SLICES, ph, pw), rng, noise_channels)
            for s in chunk
        ]
        while len(slabs) < batch_size:
            # Noise slabs pad the last batch: they take part in the batch statistics.
            slabs.append(extract_patch(volume, (-10 * IN_SLICES, 0, 0), (IN_SLICES, ph, pw), rng, noise_channels))
        batch = np.stack(slabs)
        t_net = time.perf_counter()
        logits = engine.run(network, batch)
        if network_seconds is not None:
            network_seconds.append(time.perf_counter() - t_net)
        fg = softmax_foreground(logits)  # (N, 11, ph, pw)
        for s, p in zip(chunk, fg):
            d0, d1 = max(s, 0), min(s + OUT_SLICES, depth)  # s < 0 only when depth < 10
            prob[d0:d1] = p[d0 - s : d1 - s, -h0 : -h0 + h, -w0 : -w0 + w]
    return prob


def run_stage(
    engine: InferenceEngine,
    stage: str,
    image: np.ndarray,
    seed: int,
    noise_channels: Sequence[bool] = (True,) * 4,
    timings: dict[str, float] | None = None,
    stages: dict[str, StageSpec] | None = None,
) -> np.ndarray:
    """Mean of the three views' foreground softmax for one stage.

    Parameters
    ----------
    stage
        ``"wt"``, ``"tc"`` or ``"en"``.
    image
        float32 ``(4, z, y, x)`` crop, (Z, Y, X) order.
    seed
        Base seed; view ``v`` of stage ``s`` uses ``default_rng([seed, 1, s, v])``.

    Returns
    -------
    numpy.ndarray
        float32 ``(z, y, x)`` mean foreground probability; the mask is ``> 0.5``
        (argmax of the averaged two-class softmax, ties to background).
    """
    spec = (stages or STAGES)[stage]
    s_idx = STAGE_ORDER.index(stage)
    acc = np.zeros(image.shape[1:], dtype=np.float32)
    for v_idx, view in enumerate(VIEWS):
        t0 = time.perf_counter()
        perm = VIEW_AXES[view]
        # !! view transpose of (Z, Y, X); channel axis 0 stays first.
        vol = np.ascontiguousarray(image.transpose(0, *(a + 1 for a in perm)))
        rng = np.random.default_rng([seed, 1, s_idx, v_idx])
        calls: list[float] = []
        p = predict_view(engine, spec.networks[view], vol, spec.patch_hw[view], rng, noise_channels,
                         network_seconds=calls)  # fmt: skip
        acc += p.transpose(np.argsort(perm))  # back to (Z, Y, X)
        dt = time.perf_counter() - t0
        if timings is not None:
            timings[f"{stage}.{view}"] = dt
            timings["network"] = timings.get("network", 0.0) + sum(calls)
        log.info("stage %s view %s (%s): volume %s, %.1f s", stage, view, spec.networks[view], vol.shape[1:], dt)
    return acc / 3.0


# ----------------------------------------------------------------------------- post-processing


def largest_components(mask: np.ndarray, threshold: int | None = None) -> np.ndarray:
    """Connected-component filter (18-neighbourhood), as the original's ``get_largest_two_component``.

    * ``threshold`` given: keep every component with more than ``threshold`` voxels; if
      none qualifies, keep the largest (the original returned an empty mask, which then
      crashed its bounding box; deviation documented).
    * otherwise: keep the largest, plus the second largest when it is more than a tenth
      of the largest.
    """
    labels, n = ndimage.label(mask, structure=STRUCT_18)
    if n <= 1:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(sizes)[::-1]
    if threshold is not None:
        keep = [i for i in order if sizes[i] > threshold] or [order[0]]
    else:
        keep = [order[0]]
        if sizes[order[1]] * 10 > sizes[order[0]]:
            keep.append(order[1])
    return np.isin(labels, np.asarray(keep) + 1)


def remove_external_core(whole: np.ndarray, core: np.ndarray) -> np.ndarray:
    """Keep the components of ``core`` of which at least half lies inside ``whole``."""
    labels, n = ndimage.label(core, structure=STRUCT_18)
    if n == 0:
        return core.astype(bool)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    inside = np.bincount(labels.ravel(), weights=whole.ravel().astype(np.float64), minlength=n + 1)
    keep = np.flatnonzero(inside[1:] / np.maximum(sizes[1:], 1) >= 0.5) + 1
    return np.isin(labels, keep)


def close(mask: np.ndarray) -> np.ndarray:
    """Binary closing with the 18-neighbourhood structuring element, as if the array continued
    with background beyond its edges.

    !! ``scipy.ndimage.binary_closing`` alone erodes from the array border (its erosion takes
    the outside as background after a dilation that never reached it), so a mask touching the
    edge of a box -- a thin-slab study, a tumour at the top slice -- loses voxels there and a
    small one vanishes. One voxel of padding (the element's radius) makes the closing extensive
    (result >= mask) everywhere.
    """
    padded = np.pad(mask.astype(bool), 1)
    return ndimage.binary_closing(padded, structure=STRUCT_18)[1:-1, 1:-1, 1:-1]


def fuse_labels(wt: np.ndarray, tc: np.ndarray, en: np.ndarray, rules: PostProcessing = PostProcessing()) -> np.ndarray:
    """Fuse the three stage masks (same frame) into BraTS labels.

    Returns uint8 with 2 = edema (WT only), 1 = necrotic / non-enhancing core, 4 = enhancing.
    Rules (original ``test.py``, sizes from ``rules``): WT = closing(WT | TC | EN), components
    > 2000 voxels; core = closing((TC | EN) & WT), drop core outside WT (unless
    ``rules.keep_core_outside_whole``), largest two components; ET = EN & core, dropped when
    0 < size < 30.
    """
    whole_mask = largest_components(close(wt | tc | en), rules.wt_component_voxels)
    whole = wt & whole_mask
    core = close((tc | en) & whole_mask)
    if not rules.keep_core_outside_whole:
        core = remove_external_core(whole, core)
    if core.any():
        core = largest_components(core)
    whole = whole | core
    enh = core & en
    if 0 < enh.sum() < rules.min_enhancing_voxels:
        enh = np.zeros_like(enh)
    out = np.zeros(wt.shape, dtype=np.uint8)
    out[whole] = 2
    out[core] = 1
    out[enh] = 4
    return out


# ----------------------------------------------------------------------------- cascade


@dataclass
class CascadeResult:
    """Everything one cascade run produced.

    Attributes
    ----------
    labels
        uint8 ``(Z, Y, X)`` full-size BraTS labels {0, 1, 2, 4}.
    probabilities
        Stage -> float32 mean foreground probability in that stage's box.
    boxes
        ``"brain"``, ``"wt"`` (box the TC stage ran on), ``"tc"`` (box the EN stage ran on);
        half-open, full-volume (Z, Y, X) coordinates.
    timings
        Seconds per step (``preprocess``, ``wt.axial``, ..., ``postprocess``, ``total``);
        ``network``: the part of the views spent in ``engine.run`` (the networks alone).
    available, imputed_channels
        Modalities given / fed as zeros.
    engine
        ``engine.describe()``.
    seed
        Noise seed.
    fills
        What the absent channels were fed, per stage group: ``{"wt": ..., "core": ...}``
        (:mod:`engines.model.missing.fills`; ``"zero"`` when nothing was absent).
    stage_masks
        ``"wt"``, ``"tc"``, ``"en"``: bool stage masks before fusion, in the brain box
        (``boxes["brain"]``), for :func:`refuse` under other post-processing rules.
    """

    labels: np.ndarray
    probabilities: dict[str, np.ndarray]
    boxes: dict[str, Box]
    timings: dict[str, float]
    available: tuple[bool, bool, bool, bool]
    imputed_channels: list[str]
    engine: dict[str, Any]
    seed: int
    notes: list[str] = field(default_factory=list)
    fills: dict[str, str] = field(default_factory=lambda: {"wt": "zero", "core": "zero"})
    stage_masks: dict[str, np.ndarray] = field(default_factory=dict)


def refuse(result: CascadeResult, rules: PostProcessing) -> np.ndarray:
    """The labels of ``result`` fused again under ``rules`` (no network runs): uint8 ``(Z, Y, X)``."""
    m = result.stage_masks
    labels = np.zeros(result.labels.shape, dtype=np.uint8)
    labels[box_slices(result.boxes["brain"])] = fuse_labels(m["wt"], m["tc"], m["en"], rules)
    return labels


def segment_preprocessed(
    pre: Preprocessed, engine: InferenceEngine, progress: ProgressFn | None = None,
    rules: PostProcessing = PostProcessing(), stages: dict[str, StageSpec] | None = None,
    inputs: dict[str, StageInput] | None = None,
) -> CascadeResult:
    """Run the WT -> TC -> EN cascade on a :class:`Preprocessed` crop.

    ``progress(step, fraction)`` is called after each stage, if given; ``rules``: the size
    rules of the post-processing; ``stages``: networks and base patches per stage (default
    :data:`STAGES`, the authors'; smaller patches only for smoke runs, see
    :func:`smoke_stages`); ``inputs``: what the WT stage (``"wt"``) and the TC and EN stages
    (``"core"``) are fed, each the brain box with the absent channels filled
    (:func:`engines.model.missing.fills.stage_inputs`); default: ``pre.image`` (absent = 0).
    """
    t_all = time.perf_counter()
    timings: dict[str, float] = {}
    notes: list[str] = []
    engine.prepare([n for s in STAGE_ORDER for n in (stages or STAGES)[s].networks.values()])
    plain = StageInput(pre.image, pre.available, "zero")
    inputs = inputs or {"wt": plain, "core": plain}
    brain = pre.brain_mask
    for group, given in inputs.items():
        if given.image.shape != pre.image.shape:
            raise ValueError(f"stage input {group!r} is {given.image.shape}, the crop is {pre.image.shape}")

    # Stage 1: WT on the brain box.
    img, noise = inputs["wt"].image, inputs["wt"].noise_channels
    p_wt = run_stage(engine, "wt", img, pre.seed, noise, timings, stages)
    wt = (p_wt > 0.5) & brain
    if progress:
        progress("wt", 1 / 3)

    # Stage 2: TC on the box of the (closed, filtered) WT mask.
    if wt.any():
        wt_lc = largest_components(close(wt), rules.wt_component_voxels)
        box1 = bounding_box(wt_lc, BOX_MARGIN)
    else:
        notes.append("WT stage found nothing: TC runs on the brain box")
        box1 = bounding_box(brain, BOX_MARGIN)
    sl1 = box_slices(box1)
    img, noise = inputs["core"].image, inputs["core"].noise_channels
    img1, brain1 = np.ascontiguousarray(img[(slice(None), *sl1)]), brain[sl1]
    p_tc = run_stage(engine, "tc", img1, pre.seed, noise, timings, stages)
    tc = (p_tc > 0.5) & brain1
    if progress:
        progress("tc", 2 / 3)

    # Stage 3: EN on the box of the TC mask (whole TC box when TC is empty).
    if tc.any():
        box2 = bounding_box(largest_components(close(tc)), BOX_MARGIN)
    else:
        notes.append("TC stage found nothing: EN runs on the whole TC box")
        box2 = tuple((0, n) for n in tc.shape)  # type: ignore[assignment]
    sl2 = box_slices(box2)
    img2, brain2 = np.ascontiguousarray(img1[(slice(None), *sl2)]), brain1[sl2]
    p_en = run_stage(engine, "en", img2, pre.seed, noise, timings, stages)
    en2 = (p_en > 0.5) & brain2
    if progress:
        progress("en", 1.0)

    # Fusion, in the brain-box frame.
    t0 = time.perf_counter()
    tc_full = np.zeros_like(wt)
    tc_full[sl1] = tc
    en_full = np.zeros_like(wt)
    en_full[tuple(slice(a1 + a2, a1 + b2) for (a1, _), (a2, b2) in zip(box1, box2))] = en2
    fused = fuse_labels(wt, tc_full, en_full, rules)
    labels = np.zeros(pre.full_shape, dtype=np.uint8)
    labels[box_slices(pre.brain_box)] = fused
    timings["postprocess"] = time.perf_counter() - t0
    timings["cascade"] = time.perf_counter() - t_all
    log.info("cascade: %.1f s (%s)", timings["cascade"], {k: round(v, 1) for k, v in timings.items()})

    box1_full = offset_box(box1, pre.brain_box)
    return CascadeResult(
        labels=labels,
        probabilities={"wt": p_wt, "tc": p_tc, "en": p_en},
        boxes={"brain": pre.brain_box, "wt": box1_full, "tc": offset_box(box2, box1_full)},
        timings=timings,
        available=pre.available,
        imputed_channels=pre.imputed_channels,
        engine=engine.describe(),
        seed=pre.seed,
        notes=notes,
        fills={group: given.fill for group, given in inputs.items()},
        stage_masks={"wt": wt, "tc": tc_full, "en": en_full},
    )


def segment_brats_full(
    volumes: np.ndarray,
    available: Sequence[bool],
    engine: InferenceEngine,
    seed: int = 0,
    progress: ProgressFn | None = None,
    rules: PostProcessing = PostProcessing(),
    stages: dict[str, StageSpec] | None = None,
    fill: Callable[[Preprocessed], dict[str, StageInput]] | None = None,
) -> CascadeResult:
    """:func:`preprocess` + :func:`segment_preprocessed`; returns the full result object.

    ``fill(pre)``, when given, makes the stage inputs from the crop (absent channels filled,
    :mod:`engines.model.missing.fills`); its time is ``timings["fill"]``.
    """
    t0 = time.perf_counter()
    pre = preprocess(volumes, available, seed)
    t_pre = time.perf_counter() - t0
    inputs = None
    if fill is not None and pre.imputed_channels:
        t_fill = time.perf_counter()
        inputs = fill(pre)
        t_fill = time.perf_counter() - t_fill
    res = segment_preprocessed(pre, engine, progress, rules, stages, inputs)
    res.timings["preprocess"] = t_pre
    if inputs is not None:
        res.timings["fill"] = t_fill
    res.timings["total"] = time.perf_counter() - t0
    if pre.imputed_channels:
        by_group = {"zero": "zeros (the mean after z-scoring)", "copy": "a substitute sequence",
                    "matched": "a substitute sequence mapped to the absent one's intensities",
                    "synthesis": "the synthesis network's prediction"}  # fmt: skip
        for group, label in (("wt", "WT stage"), ("core", "TC / EN stages")):
            res.notes.append(f"absent modalities {', '.join(pre.imputed_channels)} fed to the {label} as "
                             f"{by_group[res.fills[group]]}")  # fmt: skip
    return res


def segment_brats(
    volumes: np.ndarray,
    available: Sequence[bool],
    engine: InferenceEngine,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> np.ndarray:
    """BraTS labels for one case.

    Parameters
    ----------
    volumes
        ``(4, Z, Y, X)`` (SimpleITK array order), FLAIR, T1, T1ce, T2, BraTS-style:
        co-registered, skull-stripped, 1 mm isotropic.
    available
        4 bools: which modalities are real (absent ones are fed as zeros).
    engine
        Any :class:`engines.runtimes.base.InferenceEngine`.
    seed
        Seed of every noise fill (deterministic).

    Returns
    -------
    numpy.ndarray
        uint8 ``(Z, Y, X)`` labels in {0, 1, 2, 4}. Use :func:`segment_brats_full` for
        probabilities, boxes, timings and the imputed-channel record.
    """
    return segment_brats_full(volumes, available, engine, seed, progress).labels
