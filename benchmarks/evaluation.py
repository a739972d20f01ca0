"""BraTS evaluation metrics per region, computed with MONAI's implementations, and the one
plain NumPy Dice of the benchmarks (:func:`dice`).

Regions (BraTS convention): WT = {1, 2, 4}, TC = {1, 4}, ET = {4}.

Metrics per region (:func:`brats_metrics`): Dice, HD95 (95th percentile of the symmetric
surface distances, **in mm**, using the voxel ``spacing``), sensitivity, specificity.

Label volumes are any integer arrays of identical shape; axis order is whatever the caller
uses, as long as ``spacing`` lists the voxel size per axis in the *same* order (for
SimpleITK arrays (Z, Y, X): ``spacing = image.GetSpacing()[::-1]``).

Empty-region conventions (decided here, not left to MONAI's defaults):

* prediction and reference both empty: Dice 1, HD95 0, sensitivity 1 (nothing to find);
* exactly one empty: Dice 0, HD95 ``nan`` (undefined; aggregate with ``nanmean`` or
  report separately); sensitivity 0 when the reference is non-empty, 1 when it is empty.
* specificity is always defined (the background is never empty on a real volume).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import (
    compute_confusion_matrix_metric,
    compute_dice,
    compute_hausdorff_distance,
    get_confusion_matrix,
)

REGIONS: dict[str, tuple[int, ...]] = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}
METRICS = ("dice", "hd95", "sensitivity", "specificity")


def region_mask(labels: np.ndarray, region: str) -> np.ndarray:
    """Boolean mask of a BraTS region (``"WT"``, ``"TC"``, ``"ET"``)."""
    return np.isin(labels, REGIONS[region])


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two masks with NumPy, ``2 |a & b| / (|a| + |b|)``; 1 when both are empty
    (the convention above). The benchmarks' one plain Dice: agreement of two results (engine vs
    engine, a region written vs the expert's), where :func:`binary_metrics` (MONAI's, with HD95,
    sensitivity and specificity) measures a result against the expert labels."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    total = np.count_nonzero(a) + np.count_nonzero(b)
    return 1.0 if total == 0 else float(2.0 * np.count_nonzero(a & b) / total)


def _as_tensor(mask: np.ndarray) -> torch.Tensor:
    """(spatial...) bool -> (B=1, C=1, spatial...) float tensor, as MONAI expects."""
    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]


def binary_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """Dice, HD95 (mm), sensitivity and specificity of two binary masks.

    Parameters
    ----------
    pred, ref
        Boolean masks of the same shape (2-D or 3-D).
    spacing
        Voxel size per axis, in the arrays' axis order, in mm.
    """
    if pred.shape != ref.shape:
        raise ValueError(f"shape mismatch {pred.shape} vs {ref.shape}")
    if len(spacing) != pred.ndim:
        raise ValueError(f"spacing {spacing} does not match {pred.ndim} axes")
    pred, ref = pred.astype(bool), ref.astype(bool)
    p, r = _as_tensor(pred), _as_tensor(ref)
    cm = get_confusion_matrix(p, r, include_background=True)
    spec = float(compute_confusion_matrix_metric("specificity", cm).item())
    if not pred.any() and not ref.any():
        return {"dice": 1.0, "hd95": 0.0, "sensitivity": 1.0, "specificity": spec}
    if not pred.any() or not ref.any():
        sens = 0.0 if ref.any() else 1.0
        return {"dice": 0.0, "hd95": float("nan"), "sensitivity": sens, "specificity": spec}
    dice = float(compute_dice(p, r, include_background=True).item())
    hd95 = float(
        compute_hausdorff_distance(
            p, r, include_background=True, percentile=95, spacing=[float(s) for s in spacing]
        ).item()
    )
    sens = float(compute_confusion_matrix_metric("sensitivity", cm).item())
    return {"dice": dice, "hd95": hd95, "sensitivity": sens, "specificity": spec}


def brats_metrics(
    pred_labels: np.ndarray, ref_labels: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)
) -> dict[str, dict[str, float]]:
    """Metrics for WT, TC and ET: ``{"WT": {"dice": ..., "hd95": ..., ...}, ...}``.

    Parameters
    ----------
    pred_labels, ref_labels
        Integer label volumes in BraTS convention {0, 1, 2, 4}, same shape.
    spacing
        Voxel size per axis in mm, same axis order as the arrays.
    """
    return {
        region: binary_metrics(region_mask(pred_labels, region), region_mask(ref_labels, region), spacing)
        for region in REGIONS
    }
