"""Candidate fills for absent channels of a preprocessed crop.

Every fill works on :class:`engines.model.cascade.Preprocessed` -- the brain box, z-scored per
available sequence, **(4, z, y, x)** in channel order FLAIR, T1, T1ce, T2 -- and returns the
image the cascade stage is fed plus which channels carry N(0, 1) noise in the patch padding
(a filled channel is treated like a real one; a zero-filled channel stays zero everywhere).

Fills (names as in the strategy table):

``zero``
    The absent channel is 0 everywhere: the brain's mean after z-scoring (the published
    method's behaviour when a sequence is missing, and this project's until measured otherwise).
``copy``
    Substitution: inside the brain, the z-scored channel of the closest available sequence by
    contrast (:data:`SUBSTITUTES`); outside it, fresh seeded noise as for a real channel.
``matched``
    ``copy`` followed by quantile matching inside the brain: the substitute's z-scores are
    mapped monotonically onto the absent sequence's typical z-score distribution
    (``references``: quantiles measured on the training cases, :func:`reference_quantiles`).
``synthesis``
    The absent channels predicted from the available ones by the synthesis network
    (:mod:`engines.model.missing.synthesis`), re-standardised to mean 0 / SD 1 over the brain.

Determinism: the outside-brain noise of a filled channel ``c`` comes from
``default_rng([seed, 2, c])``; the synthesis network runs in PyTorch on the CPU in float32.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from engines.model.modalities import CHANNEL_NAMES
from engines.model.vocabulary import Fill, StageGroup

FILLS: tuple[Fill, ...] = tuple(Fill)
"""Fill names, in the order the measurement tries them."""

#: Absent channel -> available channels to substitute, closest contrast first (channel order
#: FLAIR 0, T1 1, T1ce 2, T2 3). FLAIR and T2 are both T2-weighted; T1 and T1ce share T1
#: weighting (T1ce adds the contrast uptake).
SUBSTITUTES: dict[int, tuple[int, ...]] = {
    0: (3, 2, 1),  # FLAIR <- T2, T1ce, T1
    1: (2, 0, 3),  # T1 <- T1ce, FLAIR, T2
    2: (1, 0, 3),  # T1ce <- T1, FLAIR, T2
    3: (0, 2, 1),  # T2 <- FLAIR, T1ce, T1
}
#: Quantile levels of the intensity references (0 .. 1, 201 points).
QUANTILE_LEVELS = np.linspace(0.0, 1.0, 201)


@dataclass(frozen=True)
class StageInput:
    """What one cascade stage group is fed.

    Attributes
    ----------
    image
        float32 ``(4, z, y, x)``, the brain box of :class:`engines.model.cascade.Preprocessed`.
    noise_channels
        4 bools: channels padded with N(0, 1) noise outside the volume.
    fill
        The fill's name (``"zero"`` when nothing was absent).
    """

    image: np.ndarray
    noise_channels: tuple[bool, bool, bool, bool]
    fill: Fill


def substitute_for(channel: int, available: Sequence[bool]) -> int:
    """The available channel that stands in for absent ``channel`` (:data:`SUBSTITUTES`)."""
    for c in SUBSTITUTES[channel]:
        if available[c]:
            return c
    raise ValueError(f"no available channel to substitute {CHANNEL_NAMES[channel]}")


def brain_quantiles(channel_image: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Quantiles (:data:`QUANTILE_LEVELS`) of a z-scored channel over the brain, float64 (201,)."""
    return np.quantile(channel_image[brain].astype(np.float64), QUANTILE_LEVELS)


def reference_quantiles(per_case: Sequence[Sequence[np.ndarray]]) -> list[list[float]]:
    """Typical z-score distribution per channel: the mean over cases of :func:`brain_quantiles`.

    ``per_case[i][c]``: quantiles of channel ``c`` in case ``i``. Returns 4 lists of 201 floats.
    """
    stacked = np.asarray(per_case, dtype=np.float64)  # (cases, 4, 201)
    return [[float(v) for v in row] for row in stacked.mean(axis=0)]


def quantile_map(values: np.ndarray, target_quantiles: Sequence[float]) -> np.ndarray:
    """Map ``values`` monotonically so that their distribution follows ``target_quantiles``.

    Each value's rank among ``values`` (interpolated between its own quantiles at
    :data:`QUANTILE_LEVELS`) is read off the target distribution. Ties keep one value.
    """
    src = np.quantile(values.astype(np.float64), QUANTILE_LEVELS)
    # np.interp needs increasing abscissae: a flat stretch (many equal values) gets a tiny slope.
    src = src + np.arange(src.size) * 1e-9
    return np.interp(values, src, np.asarray(target_quantiles, dtype=np.float64)).astype(np.float32)


def _outside_noise(image: np.ndarray, brain: np.ndarray, channel: int, seed: int) -> None:
    """Fresh seeded N(0, 1) noise outside the brain of ``image[channel]`` (in place)."""
    rng = np.random.default_rng([seed, 2, channel])
    noise = rng.standard_normal(brain.shape, dtype=np.float32)
    image[channel][~brain] = noise[~brain]


def _standardise(values: np.ndarray) -> np.ndarray:
    """Mean 0, SD 1 (a constant maps to 0)."""
    sd = float(values.std())
    return ((values - values.mean()) / sd if sd > 0 else values - values.mean()).astype(np.float32)


def fill_image(
    image: np.ndarray,
    brain: np.ndarray,
    available: Sequence[bool],
    fill: Fill | str,
    seed: int,
    references: Sequence[Sequence[float]] | None = None,
    synthesiser: Any = None,
) -> StageInput:
    """Apply ``fill`` to the absent channels of a preprocessed crop.

    Parameters
    ----------
    image
        float32 ``(4, z, y, x)``: z-scored available channels, noise outside the brain, absent
        channels 0 (:func:`engines.model.cascade.preprocess`). Not modified.
    brain
        bool ``(z, y, x)``: the brain mask of the crop.
    available
        4 bools, FLAIR, T1, T1ce, T2.
    fill
        One of :data:`FILLS`.
    seed
        The preprocessing's seed (outside-brain noise of filled channels).
    references
        4 x 201 typical z-score quantiles per channel (``matched``).
    synthesiser
        :class:`engines.model.missing.synthesis.Synthesiser` (``synthesis``).

    Returns
    -------
    StageInput
        The filled image (a copy when anything was filled) and its noise channels.
    """
    avail = tuple(bool(a) for a in available)
    absent = [c for c in range(4) if not avail[c]]
    if fill not in FILLS:
        raise ValueError(f"unknown fill {fill!r}; choose from {FILLS}")
    fill = Fill(fill)
    if not absent or fill == Fill.ZERO:
        return StageInput(image, avail, Fill.ZERO)  # type: ignore[arg-type]
    out = image.copy()
    if fill == Fill.SYNTHESIS:
        if synthesiser is None:
            raise ValueError("the synthesis fill needs the synthesis network")
        predicted = synthesiser.predict(image, brain, avail)  # (4, z, y, x)
        for c in absent:
            out[c][brain] = _standardise(predicted[c][brain])
    else:
        if fill == Fill.MATCHED and references is None:
            raise ValueError("the matched fill needs the intensity references")
        for c in absent:
            values = image[substitute_for(c, avail)][brain]
            out[c][brain] = quantile_map(values, references[c]) if fill == Fill.MATCHED else values  # type: ignore[index]
    for c in absent:
        _outside_noise(out, brain, c, seed)
    return StageInput(out, (True,) * 4, fill)  # type: ignore[arg-type]


def stage_inputs(
    image: np.ndarray,
    brain: np.ndarray,
    available: Sequence[bool],
    fills: Mapping[StageGroup, Fill],
    seed: int,
    references: Sequence[Sequence[float]] | None = None,
    synthesiser: Any = None,
) -> dict[StageGroup, StageInput]:
    """:func:`fill_image` per stage group: ``fills = {"wt": ..., "core": ...}`` (``core``: the TC
    and EN stages); one image when both groups use the same fill."""
    made: dict[Fill, StageInput] = {}
    out: dict[StageGroup, StageInput] = {}
    for group in StageGroup:
        name = fills[group]
        if name not in made:
            made[name] = fill_image(image, brain, available, name, seed, references, synthesiser)
        out[group] = made[name]
    return out
