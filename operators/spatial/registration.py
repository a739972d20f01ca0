"""Rigid registration and resampling of multi-sequence brain MRI onto the model grid.

Pure Python / SimpleITK; no Holoscan or MONAI Deploy imports here (the operator that wraps
this module lives elsewhere).

CONVENTIONS (project-wide -- read before using anything in this module)
=======================================================================

1. **Images are** ``SimpleITK.Image`` **in physical LPS millimetres** (ITK / DICOM patient
   coordinates: +x = patient Left, +y = Posterior, +z = Superior). NIfTI files are RAS on
   disk; ``sitk.ReadImage`` converts them to LPS. **Never mix a nibabel affine in** without
   flipping the first two axes (RAS -> LPS: x -> -x, y -> -y).
2. **NumPy arrays** are in ``sitk.GetArrayFromImage`` order ``(Z, Y, X)`` =
   ``(slices, rows, cols)``; SimpleITK sizes / indices / spacings are ``(X, Y, Z)``.
3. **The model grid** is 1 mm isotropic with direction = identity in LPS. This is exactly the
   BraTS grid (a BraTS NIfTI read by SimpleITK has identity direction), so array axes are
   Z (inferior -> superior), Y (anterior -> posterior), X (right -> left).
4. **Transforms** follow ITK: a transform from registration maps points of the *fixed*
   (reference) space to the *moving* space, ``fixed(x) ~ moving(T(x))``. Resampling a moving
   image onto a grid that lives in fixed space therefore uses ``T`` directly
   (:func:`resample_to_grid`); moving *points* into fixed space needs ``T.GetInverse()``.
5. **The reference series** (T1ce when present, see :func:`choose_reference`) defines the
   physical frame: the model grid covers its field of view, every other series is
   registered to it, and the label map goes back onto its own grid
   (:func:`labels_to_reference`) for the DICOM-SEG.

Determinism
-----------
Metric sampling is random. SimpleITK's seed value ``0`` is ``sitk.sitkWallClock`` (seeded from
the clock, NOT reproducible), so :func:`register_rigid` refuses ``seed=0``; the default seed
is 1. A fixed seed alone is not enough: with 2 threads two runs differed in the last ~3
digits (same iteration count). ``ImageRegistrationMethod.SetNumberOfThreads(1)`` does not
fix it (the metric uses SimpleITK's *global* default); :func:`register_rigid` therefore sets
the global default to ``number_of_threads`` (default 1) for the duration of ``Execute`` and
restores it. With that, repeated runs give bit-identical parameters (SimpleITK 2.5.7).

Accuracy on thick-slice series (was the known limitation)
---------------------------------------------------------
With the thin reference (T1ce, 1 mm) as the metric domain and a point-sampled 2-3 mm slice
series as the *interpolated* image, Mattes MI had a biased optimum (make_study --misalign on
3 BraTS cases x 2 seeds: up to 1.61 mm / 0.62 deg at the brain-box corners, 4 of 18 series
> 1 mm; MI at the found transform better than at the truth). Likely cause: linear
interpolation across 2-3 mm slices invents intensities between the acquired slices.
:func:`register_rigid` therefore optimises, by default (``direction="auto"``), with the
**coarser series as the metric domain** (its voxels are samples the scanner really
acquired) and the fine reference as the interpolated image, then inverts the result (rigid:
exact). It also restricts the metric to the domain's foreground dilated by ``auto_mask_mm``
(the samples go to the head, not to air). On the same 18 series every one came back within
1 mm / 1 deg (the README gives the numbers). Residual floor: BraTS sequences are
themselves co-registered only to ~0.4-0.7 mm (CBICA_ABM: the untouched T2 -> T1ce gives
0.4-0.7 mm depending on the sampling seed), so the "truth" is only that good.

Already-aligned input: when the optimised transform does not improve the metric (evaluated
densely on a regular subgrid of the domain, see ``metric_before``) over the identity, the
identity is kept and ``kept_identity`` is recorded.
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import SimpleITK as sitk

__all__ = [
    "REFERENCE_ORDER",
    "RegistrationResult",
    "choose_reference",
    "is_model_grid",
    "labels_to_reference",
    "model_grid",
    "register_rigid",
    "resample_to_grid",
]

#: Preference order for the reference series (the one defining the frame and the model grid).
REFERENCE_ORDER: tuple[str, ...] = ("t1ce", "t1", "t2", "flair")

_TOL_MM = 1e-3  # geometric tolerance for "same grid" decisions (mm, and unitless for direction)
_EVAL_VOXELS = 500_000  # max fixed voxels used for metric_before / metric_after
#: Guards SimpleITK's global thread count while registrations run (see :func:`_global_threads`).
_THREADS_CHANGED = threading.Condition()
_THREADS_USERS = 0
_THREADS_VALUE: int | None = None
_THREADS_SAVED = 0


@contextmanager
def _global_threads(n: int | None) -> Iterator[None]:
    """Temporarily set SimpleITK's process-wide default thread count (``None``: unchanged).

    ``ImageRegistrationMethod.SetNumberOfThreads`` alone does not reach the metric's
    threader; only the global default does (verified: two runs with the filter set to one
    thread but a global default of 2 gave different parameters). The global value is
    process-wide: registrations running concurrently in several Python threads (SimpleITK
    releases the GIL) share it, so it is reference-counted: set by the first, restored by the
    last; a caller that wants another count waits until the others are done.
    """
    if n is None:
        yield
        return
    global _THREADS_USERS, _THREADS_VALUE, _THREADS_SAVED
    with _THREADS_CHANGED:
        _THREADS_CHANGED.wait_for(lambda: _THREADS_USERS == 0 or _THREADS_VALUE == int(n))
        if _THREADS_USERS == 0:
            _THREADS_SAVED = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
            _THREADS_VALUE = int(n)
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(_THREADS_VALUE)
        _THREADS_USERS += 1
    try:
        yield
    finally:
        with _THREADS_CHANGED:
            _THREADS_USERS -= 1
            if _THREADS_USERS == 0:
                sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(_THREADS_SAVED)
                _THREADS_VALUE = None
            _THREADS_CHANGED.notify_all()


# --------------------------------------------------------------------------------------------
# Reference choice
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# Grids and resampling
# --------------------------------------------------------------------------------------------
def is_model_grid(image: sitk.Image, spacing_mm: float = 1.0, tol: float = _TOL_MM) -> bool:
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


def _same_grid(a: sitk.Image, b: sitk.Image, tol: float = _TOL_MM) -> bool:
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


# --------------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------------
@dataclass
class RegistrationResult:
    """Outcome of :func:`register_rigid`.

    Attributes
    ----------
    transform
        Rigid transform mapping fixed (reference) points to moving points, LPS mm.
    metric_before, metric_after
        Mattes mutual information (ITK sign: negative, lower = better) at the initial and at
        the final transform, evaluated densely on the full-resolution fixed image (within the
        fixed mask if one was used) -- comparable with each other, not with the optimiser's
        sampled values.
    iterations
        Total optimiser iterations over all resolution levels.
    iterations_per_level
        Optimiser iterations at each level, coarse to fine.
    stop_condition
        The optimiser's stop description at the last level.
    duration_s
        Wall time of the whole call (initialisation, optimisation, metric evaluation), s.
    settings
        The settings used (JSON-able), for provenance (incl. the metric domain actually used:
        ``settings["domain"]`` is ``"fixed"`` or ``"moving"``).
    metric_identity
        The same dense metric at the identity transform.
    kept_identity
        True when the optimised transform did not beat the identity on that metric and the
        identity was returned instead (``metric_after == metric_identity`` then).

    Notes
    -----
    All three metric values are computed in the metric domain used for the optimisation
    (the coarser of the two images with ``direction="auto"``), inside its mask.
    """

    transform: sitk.Euler3DTransform
    metric_before: float
    metric_after: float
    iterations: int
    iterations_per_level: tuple[int, ...]
    stop_condition: str
    duration_s: float
    settings: dict[str, Any] = field(default_factory=dict)
    metric_identity: float = float("nan")
    kept_identity: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-able summary: angles in degrees, translation and centre in LPS mm.

        The angles are ITK ``Euler3DTransform`` angles about x, y, z with ``ComputeZYX`` off,
        i.e. ``R = Rz @ Rx @ Ry``; ``T(p) = R (p - c) + c + t``.
        """
        ax, ay, az, tx, ty, tz = self.transform.GetParameters()
        return {
            "convention": "ITK: maps fixed (reference) LPS mm points to moving LPS mm points",
            "angles_deg": [math.degrees(ax), math.degrees(ay), math.degrees(az)],
            "translation_mm": [tx, ty, tz],
            "center_mm": list(self.transform.GetCenter()),
            "matrix": list(self.transform.GetMatrix()),
            "metric": "MattesMutualInformation (lower is better)",
            "metric_before": self.metric_before,
            "metric_after": self.metric_after,
            "metric_identity": self.metric_identity,
            "kept_identity": self.kept_identity,
            "iterations": self.iterations,
            "iterations_per_level": list(self.iterations_per_level),
            "stop_condition": self.stop_condition,
            "duration_s": self.duration_s,
            "settings": dict(self.settings),
        }


def _as_euler(tx: sitk.Transform) -> sitk.Euler3DTransform:
    """Downcast the result of ``ImageRegistrationMethod.Execute`` to an Euler3DTransform."""
    out = tx
    if isinstance(out, sitk.CompositeTransform):  # only one rigid transform is ever composed
        if out.GetNumberOfTransforms() != 1:
            raise RuntimeError("unexpected composite registration result")
        out = out.GetNthTransform(0)
    out = out.Downcast()
    if not isinstance(out, sitk.Euler3DTransform):
        raise RuntimeError(f"unexpected registration result type {type(out).__name__}")
    return sitk.Euler3DTransform(out)


def _centre(image: sitk.Image) -> tuple[float, ...]:
    """Physical LPS centre (mm) of the voxel-centre bounding box of ``image``."""
    return image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in image.GetSize()])


def _inverse_euler(tx: sitk.Euler3DTransform, centre: Sequence[float]) -> sitk.Euler3DTransform:
    """Exact inverse of a rigid transform as an Euler3DTransform with the given centre.

    ``T(x) = A x + o``  ->  ``T^-1(y) = A^T y - A^T o``; re-expressed about ``centre``.
    """
    a = np.asarray(tx.GetMatrix(), dtype=float).reshape(3, 3)
    c = np.asarray(tx.GetCenter(), dtype=float)
    offset = c + np.asarray(tx.GetTranslation(), dtype=float) - a @ c
    ai = a.T
    offset_i = -ai @ offset
    out = sitk.Euler3DTransform()
    out.SetCenter(tuple(float(v) for v in centre))
    out.SetMatrix(tuple(float(v) for v in ai.ravel()))
    ci = np.asarray(out.GetCenter(), dtype=float)
    out.SetTranslation(tuple(float(v) for v in offset_i - ci + ai @ ci))
    return out


def _block_average(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """``image`` block-averaged to about ``spacing_mm`` voxels (per axis, never finer than it is)."""
    factors = [max(1, int(round(spacing_mm / sp))) for sp in image.GetSpacing()]
    return sitk.BinShrink(image, factors) if max(factors) > 1 else image


def _foreground_mask(image: sitk.Image, dilate_mm: float) -> sitk.Image:
    """Voxels > 0 dilated by ``dilate_mm`` (per-axis radius in voxels, at least 1)."""
    fg = sitk.Cast(sitk.Greater(image, 0.0), sitk.sitkUInt8)
    radius = [max(1, int(round(dilate_mm / sp))) for sp in image.GetSpacing()]
    return sitk.BinaryDilate(fg, radius)


def _mattes_mi(histogram_bins: int, mask: sitk.Image | None) -> sitk.ImageRegistrationMethod:
    """A registration method with the metric every evaluation here uses: Mattes mutual
    information, linear interpolation, the mask (when given) on the metric domain, and image
    gradients at the sample points only.

    !! Gradients: ITK's default filters the whole fixed and moving image into gradient images
    (recursive Gaussian derivatives, at every pyramid level and every metric evaluation)
    although the metric reads only ~50 000 sampled points: 1.7 s per evaluation of a
    240 x 240 x 155 reference on one core, most of a registration's time. Central differences
    at the samples give the same accuracy (the README has the numbers).
    """
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=histogram_bins)
    method.SetMetricUseFixedImageGradientFilter(False)
    method.SetMetricUseMovingImageGradientFilter(False)
    method.SetInterpolator(sitk.sitkLinear)
    if mask is not None:
        method.SetMetricFixedMask(mask)
    return method


def _initial_transform(
    fixed: sitk.Image, moving: sitk.Image, initializer: str
) -> sitk.Euler3DTransform:
    """Starting transform; its centre of rotation is the fixed image's centre in all cases."""
    if initializer == "geometry":
        init = sitk.CenteredTransformInitializer(
            fixed, moving, sitk.Euler3DTransform(),
            sitk.CenteredTransformInitializerFilter.GEOMETRY)
    elif initializer == "moments":
        init = sitk.CenteredTransformInitializer(
            fixed, moving, sitk.Euler3DTransform(),
            sitk.CenteredTransformInitializerFilter.MOMENTS)
    elif initializer == "identity":
        init = sitk.Euler3DTransform()
        centre = fixed.TransformContinuousIndexToPhysicalPoint(
            [(s - 1) / 2.0 for s in fixed.GetSize()])
        init.SetCenter(centre)
    else:
        raise ValueError(f"unknown initializer {initializer!r}")
    return sitk.Euler3DTransform(init)


def register_rigid(
    fixed: sitk.Image,
    moving: sitk.Image,
    *,
    seed: int = 1,
    fixed_mask: sitk.Image | None = None,
    initializer: Literal["geometry", "moments", "identity"] = "geometry",
    histogram_bins: int = 32,
    level_spacings_mm: Sequence[float] = (4.0, 2.0, 1.0),
    samples_per_level: int | Sequence[int] = (15_000, 20_000, 40_000),
    learning_rate: float = 1.0,
    min_step: float = 1e-3,
    max_iterations: int = 200,
    number_of_threads: int | None = 1,
    direction: Literal["auto", "forward", "inverse"] = "auto",
    auto_mask_mm: float | None = 10.0,
    keep_identity_if_not_better: bool = True,
) -> RegistrationResult:
    """Rigid (6-DOF) multi-modal registration of ``moving`` to ``fixed`` with SimpleITK.

    Mattes mutual information, linear interpolation, an explicit pyramid (both images
    block-averaged to about ``level_spacings_mm`` per level, one optimisation per level started
    from the previous level's result),
    regular-step gradient descent with parameter scales from physical shift (a step of 1 ~
    1 mm of voxel motion), random metric sampling with a fixed seed inside a dilated
    foreground mask. By default the thicker-sliced image is the metric domain and the
    result is inverted (``direction``); the identity is kept when the optimum does not beat
    it (``keep_identity_if_not_better``). Whatever the direction, the returned transform
    maps fixed points to moving points.

    Parameters
    ----------
    fixed
        Reference image (physical LPS mm), e.g. T1ce. Cast to float32 internally.
    moving
        Image to align (physical LPS mm), e.g. T2 of the same exam. Cast to float32.
    seed
        Sampling seed. Must be non-zero: ``0`` is ``sitk.sitkWallClock`` in SimpleITK and
        would make the result non-reproducible.
    fixed_mask
        Optional mask on the fixed grid (nonzero = use). Do NOT pass a tight brain mask of
        skull-stripped data (its nonzero voxels): brain points that map into the moving image's
        zero background then *raise* MI, and the optimum can be tens of mm away. Default
        ``None`` (whole field of view: background matching background helps); a generously
        dilated mask is acceptable.
    initializer
        ``"geometry"`` (centres of the two fields of view aligned; SimpleITK
        CenteredTransformInitializer GEOMETRY), ``"moments"`` (centres of intensity mass), or
        ``"identity"`` (trust the scanner's patient coordinates: right for series of one
        exam sharing a frame of reference whose fields of view differ).
    histogram_bins
        Mattes MI histogram bins.
    level_spacings_mm
        Per level, coarse to fine: the voxel size (mm) both images are block-averaged to
        (``sitk.BinShrink`` by ``round(level / spacing)`` per axis, at least 1; so a thick-slice
        axis is not shrunk further). !! Why not SimpleITK's own pyramid: it Gaussian-smooths
        the *full-resolution* images at every level (and its shrink factors are per index,
        isotropic), which cost more than the optimisation itself (numbers in the README).
    samples_per_level
        Metric samples per level (one number for all levels, or one per level), inside the
        mask when there is one; the sampling percentage is derived (capped at 100 %).
    learning_rate, min_step, max_iterations
        Regular-step gradient descent settings (per level; relaxation factor 0.5).
    number_of_threads
        Threads used during the optimisation (SimpleITK's process-wide default is set to this
        for the duration of ``Execute`` and restored after). Default 1: with more threads
        the Mattes MI accumulation order varies and repeated runs differ in the last digits
        (and occasionally more, through a different optimiser path). ``None``: leave
        SimpleITK's settings alone (faster on many cores, not reproducible).
    direction
        Which image is the metric domain (the one whose voxels are sampled; the other is
        interpolated). ``"forward"``: ``fixed`` (classic). ``"inverse"``: ``moving``; the
        optimised moving -> fixed transform is inverted exactly (rigid). ``"auto"`` (default):
        the image with the larger largest voxel spacing (the thick-slice series) is the
        domain, ``fixed`` on ties. See "Accuracy on thick-slice series" in the module
        docstring for why.
    auto_mask_mm
        When no ``fixed_mask`` is given: restrict the metric to the domain image's voxels
        > 0 dilated by this many mm (the head plus a rim of background; with skull on, nearly
        the whole field of view). ``None``: no mask.
    keep_identity_if_not_better
        Return the identity (and record ``kept_identity``) when the optimised transform does
        not improve the dense metric over the identity.

    Returns
    -------
    RegistrationResult
        ``transform`` maps fixed points to moving points (``fixed(x) ~ moving(T(x))``).

    Raises
    ------
    ValueError
        On ``seed == 0``, mismatched per-level settings, an unknown initializer or
        direction.
    """
    if seed == sitk.sitkWallClock:
        raise ValueError("seed=0 is sitk.sitkWallClock (clock-seeded, not reproducible); "
                         "use a non-zero seed")
    samples = [int(samples_per_level)] * len(level_spacings_mm) if isinstance(samples_per_level, int) \
        else [int(n) for n in samples_per_level]
    if len(samples) != len(level_spacings_mm) or not samples:
        raise ValueError("samples_per_level must be one number or one per level of level_spacings_mm")
    if direction not in ("auto", "forward", "inverse"):
        raise ValueError(f"unknown direction {direction!r}")
    t0 = time.perf_counter()
    fixed_f = sitk.Cast(fixed, sitk.sitkFloat32)
    moving_f = sitk.Cast(moving, sitk.sitkFloat32)
    if direction == "auto":
        inverse = max(moving_f.GetSpacing()) > max(fixed_f.GetSpacing()) + _TOL_MM
    else:
        inverse = direction == "inverse"

    initial = _initial_transform(fixed_f, moving_f, initializer)  # fixed -> moving
    # the optimisation runs on (domain, other); its transform maps domain -> other points
    domain, other = (moving_f, fixed_f) if inverse else (fixed_f, moving_f)
    initial_d = _inverse_euler(initial, _centre(domain)) if inverse else initial
    mask: sitk.Image | None = None
    mask_kind = "none"
    if fixed_mask is not None:
        fm = sitk.Cast(sitk.NotEqual(fixed_mask, 0), sitk.sitkUInt8)
        if inverse:  # bring the fixed-grid mask onto the domain (moving) grid
            fm = sitk.Resample(fm, domain, initial, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        mask, mask_kind = fm, "fixed_mask"
    elif auto_mask_mm is not None:
        mask = _foreground_mask(domain, float(auto_mask_mm))
        mask_kind = f"foreground+{auto_mask_mm:g}mm"

    n_vox = float(np.prod(domain.GetSize()))
    per_level: list[int] = []
    percentages: list[float] = []
    final_d = sitk.Euler3DTransform(initial_d)
    stop = ""
    with _global_threads(number_of_threads):
        for level_mm, n_samples in zip(level_spacings_mm, samples):
            level_domain, level_other = _block_average(domain, level_mm), _block_average(other, level_mm)
            level_mask = None
            fg_fraction = 1.0
            if mask is not None:
                level_mask = sitk.Cast(sitk.Greater(_block_average(sitk.Cast(mask, sitk.sitkFloat32), level_mm), 0.5),
                                       sitk.sitkUInt8)
                fg_fraction = max(float(sitk.GetArrayViewFromImage(level_mask).mean()), 1e-6)
            level_voxels = float(np.prod(level_domain.GetSize()))
            percentages.append(float(min(1.0, n_samples / max(1.0, fg_fraction * level_voxels))))
            reg = _mattes_mi(histogram_bins, level_mask)
            if number_of_threads is not None:
                reg.SetNumberOfThreads(int(number_of_threads))
            reg.SetMetricSamplingStrategy(reg.RANDOM)
            reg.SetMetricSamplingPercentage(percentages[-1], int(seed))
            reg.SetOptimizerAsRegularStepGradientDescent(
                learningRate=learning_rate,
                minStep=min_step,
                numberOfIterations=max_iterations,
                relaxationFactor=0.5,
                gradientMagnitudeTolerance=1e-8,
            )
            reg.SetOptimizerScalesFromPhysicalShift()
            reg.SetInitialTransform(sitk.Euler3DTransform(final_d), inPlace=False)
            final_d = _as_euler(reg.Execute(level_domain, level_other))
            per_level.append(int(reg.GetOptimizerIteration()))
            stop = reg.GetOptimizerStopConditionDescription()
            del reg  # no commands attached: nothing keeps the method (and its buffers) alive
    t_opt = time.perf_counter() - t0

    # metric at the initial, final and identity transform, with one deterministic evaluator
    # in the optimisation domain: all voxels of a subsampled domain grid (every k-th voxel,
    # <= ~_EVAL_VOXELS points) inside the mask
    k = max(1, math.ceil((n_vox / _EVAL_VOXELS) ** (1.0 / 3.0)))
    # !! Slicing keeps every k-th voxel at its own physical position (origin unchanged, spacing
    # x k). sitk.Shrink does not for even sizes: its output geometry is centred on the input's
    # extent while it samples voxel k*i, so its content sits up to half a voxel (0.6 mm in-plane,
    # 1.5 mm across 3 mm slices) away from where its geometry says: a bias of the very metric that
    # decides between "registered" and "kept identity".
    domain_ev = domain[::k, ::k, ::k] if k > 1 else domain
    mask_ev = None if mask is None else (mask[::k, ::k, ::k] if k > 1 else mask)

    def metric_at(tx: sitk.Transform) -> float:
        ev = _mattes_mi(histogram_bins, mask_ev)
        ev.SetInitialTransform(sitk.Euler3DTransform(tx))
        return float(ev.MetricEvaluate(domain_ev, other))

    with _global_threads(number_of_threads):
        identity_d = sitk.Euler3DTransform()
        identity_d.SetCenter(_centre(domain))
        before, after, at_identity = metric_at(initial_d), metric_at(final_d), metric_at(identity_d)
    final = _inverse_euler(final_d, _centre(fixed_f)) if inverse else final_d
    kept_identity = False
    if keep_identity_if_not_better and not after < at_identity:
        kept_identity = True
        final = sitk.Euler3DTransform()
        final.SetCenter(_centre(fixed_f))
        after = at_identity
    settings: dict[str, Any] = {
        "seed": int(seed),
        "initializer": initializer,
        "direction": direction,
        "domain": "moving" if inverse else "fixed",
        "histogram_bins": int(histogram_bins),
        "level_spacings_mm": [float(v) for v in level_spacings_mm],
        "pyramid": "BinShrink block averages, one optimisation per level",
        "sampling": "RANDOM",
        "samples_per_level": samples,
        "sampling_percentages": percentages,
        "mask": mask_kind,
        "fixed_mask": fixed_mask is not None,
        "optimizer": "RegularStepGradientDescent",
        "learning_rate": float(learning_rate),
        "min_step": float(min_step),
        "max_iterations": int(max_iterations),
        "number_of_threads": number_of_threads,
        "keep_identity_if_not_better": bool(keep_identity_if_not_better),
        "optimisation_s": t_opt,
        "simpleitk": sitk.Version_VersionString(),
    }
    return RegistrationResult(
        transform=final,
        metric_before=before,
        metric_after=after,
        iterations=int(sum(per_level)),
        iterations_per_level=tuple(per_level),
        stop_condition=stop,
        duration_s=time.perf_counter() - t0,
        settings=settings,
        metric_identity=at_identity,
        kept_identity=kept_identity,
    )
