"""Post-processing of the cascade's stage masks: thresholding, closing, connected components and
the fusion of the three masks into BraTS labels.

Masks are bool arrays in (Z, Y, X) order; connectivity and closing use the 18-neighbourhood
(:data:`STRUCT_18`).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from engines.model.cascade.config import FOREGROUND_THRESHOLD, PostProcessing

#: 18-neighbourhood structuring element for closing and connected components.
STRUCT_18 = ndimage.generate_binary_structure(3, 2)


def stage_mask(probability: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """A stage's mask: bool, ``probability > 0.5`` inside ``brain`` (both the same shape)."""
    return (probability > FOREGROUND_THRESHOLD) & brain


def largest_components(mask: np.ndarray, threshold: int | None = None) -> np.ndarray:
    """Connected-component filter (18-neighbourhood), the authors' ``get_largest_two_component``.

    * ``threshold`` given: keep every component with more than ``threshold`` voxels; if none
      qualifies, keep the largest.
    * otherwise: keep the largest, plus the second largest when it is more than a tenth of the
      largest.

    A mask with at most one component is returned as it is (as bool).
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
    """The components of ``core`` of which at least half lies inside ``whole`` (same shape)."""
    labels, n = ndimage.label(core, structure=STRUCT_18)
    if n == 0:
        return core.astype(bool)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    inside = np.bincount(labels.ravel(), weights=whole.ravel().astype(np.float64), minlength=n + 1)
    keep = np.flatnonzero(inside[1:] / np.maximum(sizes[1:], 1) >= 0.5) + 1
    return np.isin(labels, keep)


def close(mask: np.ndarray) -> np.ndarray:
    """Binary closing with the 18-neighbourhood structuring element, as if the array continued
    with background beyond its edges: the result contains ``mask`` everywhere, also at the
    array's border (``scipy.ndimage.binary_closing`` alone erodes from the border, so one voxel
    of padding, the element's radius, is added first)."""
    padded = np.pad(mask.astype(bool), 1)
    return ndimage.binary_closing(padded, structure=STRUCT_18)[1:-1, 1:-1, 1:-1]


def fuse_labels(wt: np.ndarray, tc: np.ndarray, en: np.ndarray, rules: PostProcessing = PostProcessing()) -> np.ndarray:
    """Fuse the three stage masks (bool, one shape, one frame) into BraTS labels.

    Returns uint8 of that shape with 2 = edema (WT only), 1 = necrotic / non-enhancing core,
    4 = enhancing. Rules (the authors' ``test.py``, sizes from ``rules``): WT = closing(WT | TC |
    EN), components > ``wt_component_voxels``; core = closing((TC | EN) & WT), core components
    less than half inside WT dropped (unless ``rules.keep_core_outside_whole``), largest two
    components; ET = EN & core, dropped when 0 < size < ``min_enhancing_voxels``.
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
