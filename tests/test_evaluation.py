"""BraTS metrics on small hand-built arrays with hand-computed expected values."""
from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.evaluation import binary_metrics, brats_metrics, region_mask


def _vol(shape: tuple[int, int, int] = (10, 10, 10)) -> np.ndarray:
    return np.zeros(shape, dtype=bool)


def test_subset_cube_dice_sensitivity_specificity() -> None:
    # ref: 2x2x3 = 12 voxels; pred: the 2x2x2 = 8 voxels inside it. 1000 voxels in all.
    ref = _vol()
    ref[2:4, 2:4, 2:5] = True
    pred = _vol()
    pred[2:4, 2:4, 2:4] = True
    m = binary_metrics(pred, ref, (1.0, 1.0, 1.0))
    assert m["dice"] == pytest.approx(2 * 8 / (8 + 12))  # 0.8
    assert m["sensitivity"] == pytest.approx(8 / 12)  # TP 8, FN 4
    assert m["specificity"] == pytest.approx(1.0)  # FP 0


def test_false_positives_lower_specificity() -> None:
    ref = _vol()
    ref[0:2, 0:2, 0:2] = True  # 8 voxels
    pred = ref.copy()
    pred[9, 9, 8:10] = True  # 2 false positives; negatives = 992
    m = binary_metrics(pred, ref, (1.0, 1.0, 1.0))
    assert m["specificity"] == pytest.approx(990 / 992)
    assert m["sensitivity"] == pytest.approx(1.0)
    assert m["dice"] == pytest.approx(2 * 8 / (10 + 8))


def test_hd95_single_voxels_uses_spacing_per_axis() -> None:
    # Voxels 3 apart along the last axis; spacing 2 mm on that axis -> 6 mm.
    pred, ref = _vol(), _vol()
    pred[2, 2, 2] = True
    ref[2, 2, 5] = True
    m = binary_metrics(pred, ref, (1.0, 1.0, 2.0))
    assert m["dice"] == 0.0
    assert m["hd95"] == pytest.approx(6.0)
    # The same offset with the anisotropy on another axis gives 3 mm: axis order matters.
    assert binary_metrics(pred, ref, (2.0, 1.0, 1.0))["hd95"] == pytest.approx(3.0)


def test_hd95_is_95th_percentile_symmetric() -> None:
    # pred {a}, ref {a, b} with |a - b| = 5 mm: ref->pred distances [0, 5] -> p95 = 4.75;
    # pred->ref [0] -> 0; symmetric HD95 = max = 4.75 (linear interpolation).
    pred, ref = _vol(), _vol()
    pred[2, 2, 2] = True
    ref[2, 2, 2] = True
    ref[2, 2, 7] = True
    m = binary_metrics(pred, ref, (1.0, 1.0, 1.0))
    assert m["hd95"] == pytest.approx(4.75)
    assert m["dice"] == pytest.approx(2 / 3)
    assert m["sensitivity"] == pytest.approx(0.5)


def test_identical_masks() -> None:
    ref = _vol()
    ref[3:7, 3:7, 3:7] = True
    m = binary_metrics(ref, ref.copy(), (1.0, 1.0, 1.0))
    assert m == {"dice": pytest.approx(1.0), "hd95": pytest.approx(0.0),
                 "sensitivity": pytest.approx(1.0), "specificity": pytest.approx(1.0)}


def test_empty_conventions() -> None:
    empty, some = _vol(), _vol()
    some[1, 1, 1] = True
    both = binary_metrics(empty, empty, (1.0, 1.0, 1.0))
    assert both["dice"] == 1.0 and both["hd95"] == 0.0 and both["sensitivity"] == 1.0
    missed = binary_metrics(empty, some, (1.0, 1.0, 1.0))  # reference has it, prediction not
    assert missed["dice"] == 0.0 and math.isnan(missed["hd95"]) and missed["sensitivity"] == 0.0
    spurious = binary_metrics(some, empty, (1.0, 1.0, 1.0))
    assert spurious["dice"] == 0.0 and math.isnan(spurious["hd95"])
    assert spurious["specificity"] == pytest.approx(999 / 1000)


def test_brats_regions() -> None:
    labels = np.zeros((6, 6, 6), dtype=np.uint8)
    labels[1, 1, 1] = 1
    labels[2, 2, 2] = 2
    labels[3, 3, 3] = 4
    assert region_mask(labels, "WT").sum() == 3
    assert region_mask(labels, "TC").sum() == 2
    assert region_mask(labels, "ET").sum() == 1
    # Prediction calls everything edema: WT perfect, TC and ET missed entirely.
    pred = np.where(labels > 0, 2, 0).astype(np.uint8)
    m = brats_metrics(pred, labels)
    assert m["WT"]["dice"] == pytest.approx(1.0)
    assert m["TC"]["dice"] == 0.0 and math.isnan(m["TC"]["hd95"])
    assert m["ET"]["dice"] == 0.0
    # ET absent from both -> Dice 1 by convention.
    m2 = brats_metrics(np.where(labels == 4, 1, labels), np.where(labels == 4, 1, labels))
    assert m2["ET"]["dice"] == 1.0 and m2["ET"]["hd95"] == 0.0


def test_shape_and_spacing_checked() -> None:
    with pytest.raises(ValueError):
        binary_metrics(_vol(), _vol((10, 10, 9)), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError):
        binary_metrics(_vol(), _vol(), (1.0, 1.0))
