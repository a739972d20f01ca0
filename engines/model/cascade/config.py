"""The cascade's configuration: protocol constants, the three views, the nine networks per stage
and the post-processing size rules. Every other module of :mod:`engines.model.cascade` (and the
engines that size their inputs by the protocol) takes these values from here.

Axes: volumes are **(Z, Y, X)**; a network sees slabs ``(N, 4, D, H, W)`` where ``(D, H, W)``
is a permutation of ``(Z, Y, X)`` given by :data:`VIEW_AXES`.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from engines.model.modalities import CHANNEL_NAMES

#: Margin (voxels) of the brain box around the voxels > 0.
BRAIN_MARGIN = 5
#: Margin (voxels) of the box a TC or EN stage runs on, around the previous stage's mask.
BOX_MARGIN = 5
#: Output slices per slab.
OUT_SLICES = 11
#: Input context slices on each side of a slab's output slices.
CONTEXT = 4
#: Input slices per slab (19 = 11 + 2 * 4).
IN_SLICES = OUT_SLICES + 2 * CONTEXT
#: Slabs per network call; a short last batch is padded with noise slabs.
BATCH_SIZE = 5
#: The in-plane patch is the box's in-plane size rounded up to a multiple of this (at least the base patch).
INPLANE_MULTIPLE = 4
#: Whole-tumour components of at most this many voxels are dropped (the largest is always kept).
WT_COMPONENT_THRESHOLD = 2000
#: An enhancing-tumour label with fewer voxels than this (but more than 0) is dropped.
MIN_ET_VOXELS = 30
#: A stage's mask is its mean foreground probability above this (argmax of the averaged two-class
#: softmax, ties to background).
FOREGROUND_THRESHOLD = 0.5

#: View name -> permutation of (Z, Y, X) giving the network's (D, H, W):
#: axial (Z, Y, X), sagittal (X, Z, Y), coronal (Y, Z, X).
VIEW_AXES: dict[str, tuple[int, int, int]] = {
    "axial": (0, 1, 2),
    "sagittal": (2, 0, 1),
    "coronal": (1, 0, 2),
}
#: The views in the order a stage runs them (the order of their noise seeds).
VIEWS: tuple[str, ...] = ("axial", "sagittal", "coronal")


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
        missing-sequence strategy table sets it per subset of sequences.
    """

    wt_component_voxels: int = WT_COMPONENT_THRESHOLD
    min_enhancing_voxels: int = MIN_ET_VOXELS
    keep_core_outside_whole: bool = False


@dataclass(frozen=True)
class StageSpec:
    """One cascade stage.

    Attributes
    ----------
    name
        ``"wt"``, ``"tc"`` or ``"en"``.
    networks
        View -> network name (:data:`engines.model.weights.NETWORKS`).
    patch_hw
        View -> base in-plane patch ``(H, W)`` in that view's (D, H, W) order.
    """

    name: str
    networks: dict[str, str]
    patch_hw: dict[str, tuple[int, int]]


#: The authors' stages: networks and base in-plane patches per view.
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
#: The cascade's order; a stage's index here is part of its noise seed.
STAGE_ORDER: tuple[str, ...] = ("wt", "tc", "en")


def smoke_stages(patch: int = 48) -> dict[str, StageSpec]:
    """:data:`STAGES` with every base in-plane patch ``patch x patch``: **not the protocol**, only
    for smoke runs of code around the cascade on a CPU."""
    return {k: StageSpec(s.name, dict(s.networks), {v: (patch, patch) for v in VIEWS}) for k, s in STAGES.items()}


def stage_networks(stages: Mapping[str, StageSpec] = STAGES) -> list[str]:
    """Every network of ``stages``, in cascade order then view order (9 names)."""
    return [n for s in STAGE_ORDER for n in stages[s].networks.values()]


def protocol_shape(network: str) -> tuple[int, int, int, int, int]:
    """The batch the protocol feeds ``network`` at its base in-plane patch, ``(N, C, D, H, W)``
    = ``(5, 4, 19, H, W)``; ``H``, ``W`` grow with the box being segmented
    (:func:`engines.model.cascade.tiling.inplane_patch`). Raises ``ValueError`` for an unknown name."""
    for spec in STAGES.values():
        for view, net in spec.networks.items():
            if net == network:
                return (BATCH_SIZE, len(CHANNEL_NAMES), IN_SLICES, *spec.patch_hw[view])
    raise ValueError(f"unknown network {network!r}")
