"""The model grid: the reference series' frame, the grid the networks see, and the way back.

* **The reference series** defines the physical frame (:func:`choose_reference`: T1ce when
  present, then T1, T2, FLAIR). Every other series is registered to it, the model grid covers its
  field of view, and the label map goes back onto its own grid (:func:`labels_to_reference`) for
  the DICOM-SEG.
* **The model grid** is 1 mm isotropic with identity direction in LPS (:func:`model_grid`): the
  BraTS grid, since a BraTS NIfTI read by SimpleITK has identity direction. A reference already
  on such a grid gives exactly its own grid, so resampling onto it copies the voxels.
* Resampling (:func:`resample_to_grid`) takes a transform that maps grid points to image points:
  the registration's fixed -> moving transform as it comes (axes, LPS and the transform
  convention: :mod:`operators.spatial`).
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import SimpleITK as sitk

__all__ = [
    "REFERENCE_ORDER",
    "TOL_MM",
    "centre_of",
    "choose_reference",
    "is_model_grid",
    "labels_to_reference",
    "model_grid",
    "resample_to_grid",
]

#: Preference order for the reference series (the one defining the frame and the model grid).
REFERENCE_ORDER: tuple[str, ...] = ("t1ce", "t1", "t2", "flair")

#: Geometric tolerance of "same grid" / "thicker slices" decisions: mm, and unitless for
#: direction cosines.
TOL_MM = 1e-3


def choose_reference(available: Mapping[str, sitk.Image]) -> str:
    """Pick the reference series: the first of :data:`REFERENCE_ORDER` that is available.

    Parameters
    ----------
    available
        Series name (``"t1ce"``, ``"t1"``, ``"t2"``, ``"flair"``, ...) -> image. Values are not
        inspected; only the keys matter.

    Returns
    -------
    str
        The chosen key. If none of the keys is in :data:`REFERENCE_ORDER`, the first key in
        sorted order (deterministic fallback).

    Raises
    ------
    ValueError
        If ``available`` is empty.
    """
    if not available:
        raise ValueError("choose_reference: no series available")
    for name in REFERENCE_ORDER:
        if name in available:
            return name
    return sorted(available)[0]


def is_model_grid(image: sitk.Image, spacing_mm: float = 1.0, tol: float = TOL_MM) -> bool:
    """True when ``image`` is already on a ``spacing_mm`` isotropic, identity-direction grid.

    Parameters
    ----------
    image
        3-D image (physical LPS mm).
    spacing_mm
        Expected isotropic spacing (mm).
    tol
        Absolute tolerance on spacing (mm) and on direction cosines.
    """
    if image.GetDimension() != 3:
        return False
    spacing_ok = all(abs(s - spacing_mm) <= tol for s in image.GetSpacing())
    direction_ok = np.allclose(np.asarray(image.GetDirection()), np.eye(3).ravel(), atol=tol)
    return bool(spacing_ok and direction_ok)


def _same_grid(a: sitk.Image, b: sitk.Image, tol: float = TOL_MM) -> bool:
    """True when ``a`` and ``b`` have the same size and (within ``tol``) origin, spacing,
    direction."""
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol)
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=tol)
    )


def _physical_corners(image: sitk.Image, *, voxel_edges: bool = True) -> np.ndarray:
    """The 8 physical corners (LPS mm) of an image's extent, shape ``(8, 3)``, columns x,y,z.

    With ``voxel_edges`` the corners are the outer faces of the corner voxels (index -0.5 and
    size-0.5), i.e. the full field of view; otherwise the corner voxel centres.
    """
    size = np.asarray(image.GetSize(), dtype=float)
    lo = np.full(3, -0.5 if voxel_edges else 0.0)
    hi = size - (0.5 if voxel_edges else 1.0)
    corners = []
    for i in (0, 1):
        for j in (0, 1):
            for k in (0, 1):
                idx = (hi[0] if i else lo[0], hi[1] if j else lo[1], hi[2] if k else lo[2])
                corners.append(image.TransformContinuousIndexToPhysicalPoint(tuple(map(float, idx))))
    return np.asarray(corners, dtype=float)


def centre_of(image: sitk.Image) -> tuple[float, ...]:
    """Physical centre of ``image``'s voxel-centre bounding box (continuous index ``(size - 1) / 2``).

    Parameters
    ----------
    image
        3-D image (physical LPS mm).

    Returns
    -------
    tuple of float
        ``(x, y, z)`` LPS mm, computed by ITK (``TransformContinuousIndexToPhysicalPoint``).
    """
    return image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in image.GetSize()])


def model_grid(reference: sitk.Image, spacing_mm: float = 1.0) -> sitk.Image:
    """An empty image defining the model grid that covers the reference series' field of view.

    Parameters
    ----------
    reference
        The reference series (physical LPS mm), any spacing / direction (oblique, thick slices).
    spacing_mm
        Isotropic spacing of the model grid (mm).

    Returns
    -------
    sitk.Image
        ``sitkUInt8`` image of zeros whose geometry (origin, spacing = ``spacing_mm``,
        direction = identity, size) is the model grid. Only its geometry is meant to be used
        (e.g. as the reference of :func:`resample_to_grid`).

        * If ``reference`` already is a ``spacing_mm`` identity-direction grid (BraTS), the grid
          is exactly the reference's (same origin and size), so resampling onto it is a no-op.
        * Otherwise the grid is the smallest axis-aligned box of ``spacing_mm`` voxels that
          contains the reference's full field of view (outer faces of its corner voxels,
          rotated into LPS), centred on that field of view. For an oblique volume this box is
          larger than the volume; the extra voxels get the resampling default (0).
    """
    if is_model_grid(reference, spacing_mm):
        grid = sitk.Image(reference.GetSize(), sitk.sitkUInt8)
        grid.SetOrigin(reference.GetOrigin())
        grid.SetSpacing((float(spacing_mm),) * 3)
        grid.SetDirection(tuple(np.eye(3).ravel()))
        return grid

    corners = _physical_corners(reference, voxel_edges=True)
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    extent = hi - lo
    size = np.maximum(1, np.ceil(extent / spacing_mm - 1e-6)).astype(int)
    # centre the (slightly larger) voxel box on the field of view; origin = first voxel centre
    origin = lo + (extent - size * spacing_mm) / 2.0 + spacing_mm / 2.0
    grid = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    grid.SetOrigin(tuple(float(o) for o in origin))
    grid.SetSpacing((float(spacing_mm),) * 3)
    grid.SetDirection(tuple(np.eye(3).ravel()))
    return grid


def resample_to_grid(
    image: sitk.Image,
    grid: sitk.Image,
    transform: sitk.Transform | None = None,
    interpolator: int = sitk.sitkLinear,
    default: float = 0.0,
    output_pixel_type: int | None = None,
) -> sitk.Image:
    """Resample ``image`` onto the geometry of ``grid``.

    Parameters
    ----------
    image
        Image to resample (physical LPS mm).
    grid
        Image whose geometry (origin, spacing, direction, size) defines the output; its pixels
        are not read.
    transform
        Maps **grid points to image points** (ITK convention; this is the registration result
        with ``grid`` in fixed space and ``image`` the moving image). ``None`` = identity.
    interpolator
        A ``sitk.sitkXxx`` interpolator constant. Use ``sitk.sitkNearestNeighbor`` (or
        ``sitk.sitkLabelGaussian``) for label maps.
    default
        Value for output voxels that map outside ``image``.
    output_pixel_type
        ``sitk.sitkXxx`` pixel type of the output. ``None``: the input's type for
        nearest-neighbour / label-Gaussian interpolation, ``sitkFloat32`` otherwise (so that
        interpolated int16 MR intensities are not truncated).

    Returns
    -------
    sitk.Image
        Image on ``grid``'s geometry; array shape ``(Z, Y, X)`` = ``grid.GetSize()[::-1]``.
        When ``transform`` is None and ``image`` already has ``grid``'s geometry (within
        1e-3 mm), the voxel values are copied (cast) without interpolation.
    """
    if output_pixel_type is None:
        keep = interpolator in (sitk.sitkNearestNeighbor, sitk.sitkLabelGaussian)
        output_pixel_type = image.GetPixelID() if keep else sitk.sitkFloat32
    if transform is None and _same_grid(image, grid):
        # already on the grid: copy without interpolating (ITK's linear interpolator is not
        # bit-exact even at integer positions: ~1e-11 noise appears in zero background)
        return sitk.Cast(image, output_pixel_type)
    tx = transform if transform is not None else sitk.Transform(3, sitk.sitkIdentity)
    return sitk.Resample(image, grid, tx, interpolator, float(default), output_pixel_type)


def labels_to_reference(
    labels_on_grid: sitk.Image,
    reference: sitk.Image,
    transform: sitk.Transform | None = None,
) -> sitk.Image:
    """Nearest-neighbour resampling of a label map from the model grid onto a series' own grid.

    Parameters
    ----------
    labels_on_grid
        Integer label map on the model grid (BraTS labels 0, 1, 2, 4), which lives in the
        reference series' physical frame.
    reference
        The series whose grid the output must have (normally the reference series, the one
        the DICOM-SEG references); only its geometry is used.
    transform
        Maps ``reference`` points to model-grid points. ``None`` (identity) for the reference
        series itself; for a registered other series ``j`` with ``T_j`` (reference -> ``j``)
        pass ``T_j.GetInverse()``.

    Returns
    -------
    sitk.Image
        Label map on ``reference``'s grid, same pixel type as ``labels_on_grid``, no new label
        values (nearest neighbour); voxels outside the model grid are 0.
    """
    return resample_to_grid(
        labels_on_grid,
        reference,
        transform,
        interpolator=sitk.sitkNearestNeighbor,
        default=0.0,
        output_pixel_type=labels_on_grid.GetPixelID(),
    )
