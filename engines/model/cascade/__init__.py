"""Test-time protocol of the BraTS 2017 cascade (Wang et al.) on NumPy volumes.

Axis convention (project-wide): every volume is in SimpleITK ``GetArrayFromImage`` order
**(Z, Y, X)** = (slices, rows, cols); BraTS grid 155 x 240 x 240, 1 mm isotropic, LPS-identity
direction. A multi-modal volume is **(4, Z, Y, X)** with channels FLAIR, T1, T1ce, T2 (the
networks' training order). The networks see slabs ``(N, 4, D, H, W)``; the three views are
permutations of (Z, Y, X): axial (D, H, W) = (Z, Y, X), sagittal (X, Z, Y), coronal (Y, Z, X).

Modules:

:mod:`.predictor`
    :class:`CascadePredictor` (``predict(volumes, available, ...) -> CascadeResult``), the one
    class that runs the cascade; :func:`segment_brats_full` / :func:`segment_brats` call it.
:mod:`.config`
    Protocol constants, views, :data:`STAGES`, :class:`PostProcessing`: the one source of
    configuration.
:mod:`.preprocessing`
    Brain box, z-score, noise: :func:`preprocess` -> :class:`Preprocessed`.
:mod:`.tiling`
    A view as slab batches and the network's output stitched back.
:mod:`.fusion`
    Thresholds, closing, connected components, fusion into labels {0, 1, 2, 4}.
:mod:`.boxes`
    Axis-aligned (Z, Y, X) boxes.

May import: :mod:`engines.runtimes.base`, :mod:`engines.model.modalities`,
:mod:`engines.model.missing.fills`.
"""
from __future__ import annotations

from engines.model.cascade.boxes import Box, box_shape, box_slices, relative_box
from engines.model.cascade.config import (
    BATCH_SIZE,
    IN_SLICES,
    MIN_ET_VOXELS,
    OUT_SLICES,
    STAGE_ORDER,
    STAGES,
    WT_COMPONENT_THRESHOLD,
    PostProcessing,
    StageSpec,
    protocol_shape,
    smoke_stages,
    stage_networks,
)
from engines.model.cascade.fusion import STRUCT_18, close, fuse_labels, largest_components, stage_mask
from engines.model.cascade.predictor import CascadePredictor, CascadeResult, segment_brats, segment_brats_full
from engines.model.cascade.preprocessing import DegenerateInputError, Preprocessed, preprocess
from engines.model.cascade.tiling import extract_patch, inplane_patch, slab_starts

__all__ = [
    "BATCH_SIZE",
    "IN_SLICES",
    "MIN_ET_VOXELS",
    "OUT_SLICES",
    "STAGES",
    "STAGE_ORDER",
    "STRUCT_18",
    "WT_COMPONENT_THRESHOLD",
    "Box",
    "CascadePredictor",
    "CascadeResult",
    "DegenerateInputError",
    "PostProcessing",
    "Preprocessed",
    "StageSpec",
    "box_shape",
    "box_slices",
    "close",
    "extract_patch",
    "fuse_labels",
    "inplane_patch",
    "largest_components",
    "preprocess",
    "protocol_shape",
    "relative_box",
    "segment_brats",
    "segment_brats_full",
    "slab_starts",
    "smoke_stages",
    "stage_mask",
    "stage_networks",
]
