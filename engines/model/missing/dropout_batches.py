"""The training batches of :mod:`engines.model.missing.train_dropout`: a case in a view's order,
the subset of sequences a batch keeps, and the two kinds of batch (slabs around tumour / brain
voxels, or the cascade's own).

Array contract: a :class:`TrainingView` is in a view's ``(D, H, W)`` order
(:func:`engines.model.cascade.tiling.to_view`); a batch's input is ``(B, 4, 19, h, w)``
(FLAIR, T1, T1ce, T2; 4 context slices each side of the 11 output slices), its targets and
weight ``(B, 11, h, w)``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from engines.model.cascade import OUT_SLICES, extract_patch
from engines.model.cascade.config import BATCH_SIZE, CONTEXT
from engines.model.cascade.tiling import SlabTiling
from engines.model.missing.strategies import subset_available

__all__ = ["DROPOUT_SUBSETS", "Batch", "TrainingView", "draw_batch", "draw_cascade_batch", "draw_subset"]

#: The subsets the students are trained for: every subset without FLAIR. The first is drawn half
#: of the time, the others share the other half.
DROPOUT_SUBSETS: tuple[str, ...] = ("T1ce+T2", "T1+T1ce+T2", "T1+T2", "T1+T1ce", "T2", "T1ce", "T1")


@dataclass(frozen=True)
class TrainingView:
    """One case in one view's order: what the batches of that view are cut from.

    Attributes
    ----------
    image
        float32 ``(4, D, H, W)``: the preprocessed crop (all four sequences), view order.
    targets
        float32 ``(3, D, H, W)``: the four-sequence WT stage's foreground probability (the
        teacher), the expert whole tumour (labels > 0) as 0 / 1, and 1 (inside the volume).
    brain
        bool ``(D, H, W)``.
    """

    image: np.ndarray
    targets: np.ndarray
    brain: np.ndarray

    @cached_property
    def tumour_voxels(self) -> np.ndarray:
        """``(n, 3)`` indices of the voxels the teacher or the expert calls tumour (computed once)."""
        return np.argwhere((self.targets[0] > 0.5) | (self.targets[1] > 0.5))

    @cached_property
    def brain_voxels(self) -> np.ndarray:
        """``(n, 3)`` indices of the brain's voxels (computed once)."""
        return np.argwhere(self.brain)


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, str]


def draw_subset(rng: np.random.Generator, subsets: Sequence[str]) -> str:
    """The first of ``subsets`` half of the time, one of the others the other half (the only
    one when there is one)."""
    if len(subsets) == 1 or rng.random() < 0.5:
        return subsets[0]
    return subsets[1 + int(rng.integers(len(subsets) - 1))]


def draw_batch(
    cases: Sequence[TrainingView], rng: np.random.Generator, batch: int, patch: int,
    subsets: Sequence[str] = DROPOUT_SUBSETS,
) -> Batch:
    """One training batch of a view.

    Returns
    -------
    tuple
        Input ``(B, 4, 19, P, P)`` (withheld channels zero), teacher and label targets
        ``(B, 11, P, P)``, a weight ``(B, 11, P, P)`` (1 inside the volume, else 0), and the
        subset's name.
    """
    subset = draw_subset(rng, subsets)
    available = subset_available(subset)
    xs, teachers, labels, weights = [], [], [], []
    for _ in range(batch):
        case = cases[int(rng.integers(len(cases)))]
        tumour = case.tumour_voxels
        pool = tumour if (rng.random() < 0.5 and len(tumour)) else case.brain_voxels
        d, h, w = (int(v) for v in pool[int(rng.integers(len(pool)))])
        out_start = (d - OUT_SLICES // 2, h - patch // 2, w - patch // 2)
        in_start = (out_start[0] - CONTEXT, *out_start[1:])
        x = extract_patch(case.image, in_start, (OUT_SLICES + 2 * CONTEXT, patch, patch), rng, available)
        x[[not a for a in available]] = 0.0  # withheld: zero inside the volume too (the zero fill)
        xs.append(x)
        t, y, inside = extract_patch(case.targets, out_start, (OUT_SLICES, patch, patch), rng, (False,) * 3)
        teachers.append(t)
        labels.append(y)
        weights.append(inside)
    return (torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(teachers)), torch.from_numpy(np.stack(labels)),
            torch.from_numpy(np.stack(weights)), subset)


def draw_cascade_batch(
    cases: Sequence[TrainingView], rng: np.random.Generator, base_hw: tuple[int, int],
    subsets: Sequence[str] = DROPOUT_SUBSETS,
) -> Batch:
    """One batch of a view as the cascade feeds it: ``BATCH_SIZE`` consecutive slabs of one
    case's :class:`SlabTiling` (base in-plane patch ``base_hw``), half of the time a batch
    holding tumour (teacher or expert), noise outside the volume in the available channels and
    zero in the withheld ones; a short last batch padded with noise slabs of weight 0.

    Returns
    -------
    tuple
        As :func:`draw_batch`, ``(5, 4, 19, h, w)`` and ``(5, 11, h, w)`` with the tiling's
        in-plane patch ``(h, w)``.
    """
    subset = draw_subset(rng, subsets)
    available = subset_available(subset)
    case = cases[int(rng.integers(len(cases)))]
    tiling = SlabTiling.of(case.brain.shape, base_hw)
    groups = [tiling.starts[i:i + BATCH_SIZE] for i in range(0, len(tiling.starts), BATCH_SIZE)]
    tumour_slices = np.unique(case.tumour_voxels[:, 0])
    with_tumour = [k for k, g in enumerate(groups)
                   if any(np.any((tumour_slices >= a) & (tumour_slices < a + OUT_SLICES)) for a in g)]
    pool = with_tumour if (with_tumour and rng.random() < 0.5) else list(range(len(groups)))
    k = pool[int(rng.integers(len(pool)))]
    # The cascade's own batch k, by the same function, on the tiling of that group alone (the
    # groups before it are not extracted: their noise is most of a step's host work).
    group = dataclasses.replace(tiling, starts=tuple(groups[k]))
    starts, x = next(group.batches(case.image, np.random.default_rng(int(rng.integers(2**63))), available))
    h0, w0 = tiling.origin_hw
    t = np.zeros((BATCH_SIZE, 3, OUT_SLICES, *tiling.patch_hw), np.float32)  # padding slabs: weight 0
    for j, a in enumerate(starts):
        t[j] = extract_patch(case.targets, (a, h0, w0), t.shape[2:], rng, (False,) * 3)
    x[:, [not a for a in available]] = 0.0  # withheld: zero inside the volume too (the zero fill)
    return (torch.from_numpy(x), torch.from_numpy(np.ascontiguousarray(t[:, 0])),
            torch.from_numpy(np.ascontiguousarray(t[:, 1])), torch.from_numpy(np.ascontiguousarray(t[:, 2])), subset)
