"""The cascade's preprocessing: brain box, per-sequence z-score, seeded noise outside the brain.

Input volumes are ``(4, Z, Y, X)`` (SimpleITK array order), channels FLAIR, T1, T1ce, T2,
skull-stripped so that the background is exactly 0. An absent channel is left **zero
everywhere** (the channel's mean after z-scoring), without noise.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engines.model.cascade.boxes import Box, bounding_box, box_shape, box_slices, offset_box
from engines.model.cascade.config import BRAIN_MARGIN
from engines.model.modalities import CHANNEL_NAMES

log = logging.getLogger(__name__)


class DegenerateInputError(ValueError):
    """The volumes cannot be normalised as the networks were trained: no voxel above 0 in the
    available channels, or a channel with no intensity spread over the brain."""


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
        """The sub-box ``box`` (relative to ``image``) as a new :class:`Preprocessed` whose
        ``brain_box`` is that sub-box in the full volume."""
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
        Noise seed: the noise is drawn from ``default_rng([seed, 0])``, channel by channel.

    Returns
    -------
    Preprocessed
        The brain box (the union of ``> 0`` over the available channels, grown by
        :data:`~engines.model.cascade.config.BRAIN_MARGIN`). Per available modality:
        ``(v - mean) / std`` with mean and std over the voxels > 0 of the *whole* volume, and
        N(0, 1) noise where ``v == 0`` inside the box. Absent modality: zeros everywhere.

    Raises
    ------
    ValueError
        ``volumes`` not ``(4, Z, Y, X)``, or ``available`` not 4 bools with one true.
    DegenerateInputError
        No voxel > 0 in the available channels, or an available channel with zero spread.
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
