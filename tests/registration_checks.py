"""How far a registration is from the truth: the brain's bounding-box corners and the error of a
SimpleITK transform there (the registration itself uses none of this).

The error itself is :func:`operators.spatial.registration_torch_core.rigid_error` (NumPy, also
what the GPU check measures with); :func:`transform_error` only turns SimpleITK transforms into
its ``(A, o)`` pairs. Axes and LPS: :mod:`operators.spatial`.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import SimpleITK as sitk

from operators.spatial.registration_torch_core import rigid_error

__all__ = ["affine_of", "brain_box_corners", "brain_mask_from_nonzero", "transform_error"]


def brain_mask_from_nonzero(images: Iterable[sitk.Image]) -> sitk.Image:
    """Brain mask of skull-stripped images: the union of their nonzero voxels.

    Parameters
    ----------
    images
        One or more images on one common grid.

    Returns
    -------
    sitk.Image
        ``sitkUInt8`` mask (1 = nonzero in any image) on that grid.

    Raises
    ------
    ValueError
        If ``images`` is empty. SimpleITK raises if the grids differ.
    """
    mask: sitk.Image | None = None
    for img in images:
        nz = sitk.Cast(sitk.NotEqual(img, 0), sitk.sitkUInt8)
        mask = nz if mask is None else sitk.Or(mask, nz)
    if mask is None:
        raise ValueError("brain_mask_from_nonzero: no images given")
    return mask


def brain_box_corners(mask: sitk.Image) -> np.ndarray:
    """Physical corners of the bounding box of a mask's nonzero voxels (voxel centres).

    Parameters
    ----------
    mask
        Binary / label image (physical LPS mm).

    Returns
    -------
    np.ndarray
        ``(8, 3)`` float array of LPS points (mm), columns x, y, z; index x outermost, z
        innermost, the low end first. The ``points`` of :func:`transform_error`.

    Raises
    ------
    ValueError
        If the mask is empty.
    """
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(sitk.Cast(sitk.NotEqual(mask, 0), sitk.sitkUInt8))
    if not stats.HasLabel(1):
        raise ValueError("brain_box_corners: empty mask")
    bb = stats.GetBoundingBox(1)  # (x0, y0, z0, sx, sy, sz) in index units
    start = np.asarray(bb[:3], dtype=float)
    stop = start + np.asarray(bb[3:], dtype=float) - 1.0
    pts = []
    for i in (0, 1):
        for j in (0, 1):
            for k in (0, 1):
                idx = (stop[0] if i else start[0], stop[1] if j else start[1], stop[2] if k else start[2])
                pts.append(mask.TransformContinuousIndexToPhysicalPoint(tuple(map(float, idx))))
    return np.asarray(pts, dtype=float)


def affine_of(tx: sitk.Transform) -> tuple[np.ndarray, np.ndarray]:
    """``(A, o)`` with ``T(x) = A @ x + o`` (LPS mm) of a matrix-offset transform.

    Parameters
    ----------
    tx
        Euler3D, VersorRigid3D, Affine, ... (a plain ``sitk.Transform`` is downcast first).

    Returns
    -------
    a, o
        ``(3, 3)`` matrix and ``(3,)`` offset ``T((0, 0, 0))``, float64.

    Raises
    ------
    TypeError
        If ``tx`` has no matrix.
    """
    t = tx.Downcast() if type(tx) is sitk.Transform else tx
    if not hasattr(t, "GetMatrix"):
        raise TypeError(f"{type(t).__name__} has no matrix (need a rigid / affine transform)")
    a = np.asarray(t.GetMatrix(), dtype=np.float64).reshape(3, 3)
    return a, np.asarray(t.TransformPoint((0.0, 0.0, 0.0)), dtype=np.float64)


def transform_error(
    estimated: sitk.Transform,
    truth: sitk.Transform,
    points: np.ndarray | Sequence[Sequence[float]],
) -> tuple[float, float]:
    """:func:`~operators.spatial.registration_torch_core.rigid_error` of two SimpleITK transforms.

    Parameters
    ----------
    estimated, truth
        Transforms with a 3 x 3 matrix (Euler3D, VersorRigid3D, Affine), both fixed -> moving.
    points
        ``(N, 3)`` LPS points (mm) to compare at, e.g. :func:`brain_box_corners`.

    Returns
    -------
    max_displacement_mm, rotation_error_deg
        ``max_i |estimated(p_i) - truth(p_i)|`` (mm); rotation angle of ``R_est^T R_true`` (deg).
    """
    return rigid_error(affine_of(estimated), affine_of(truth), points)
