"""Rigid (6-DOF) multi-modal registration of one series to the reference with SimpleITK.

:func:`register_rigid` returns a :class:`~operators.spatial.registration_result.RegistrationResult`,
as the PyTorch backend (:mod:`operators.spatial.registration_torch`) does. Axes, LPS and the transform
convention (the transform maps fixed points to moving points): :mod:`operators.spatial`.
SimpleITK only here; the operator that calls it lives in :mod:`operators.registration_operator`.

Determinism
-----------
The metric samples at random from a fixed seed, which must be non-zero: SimpleITK's ``0`` is
``sitk.sitkWallClock`` (seeded from the clock). A fixed seed is not enough on its own: with
several threads the metric accumulates in a varying order, and only SimpleITK's global thread
count reaches the metric, so the optimisation runs inside
:func:`operators.spatial.itk_threads.global_thread_count` (``number_of_threads``, default 1).
Same inputs and seed, bit-identical parameters.

Metric domain: the thicker series
---------------------------------
With a thin reference as the metric domain and a 2-3 mm slice series as the interpolated image,
Mattes MI has a biased optimum: linear interpolation across thick slices invents intensities
between the slices the scanner acquired. By default (``direction="auto"``) the coarser series
is therefore the metric domain (its voxels are real samples) and the fine reference is
interpolated; the optimised transform is then inverted (rigid: exactly). The metric is
restricted to the domain's foreground dilated by ``auto_mask_mm``, so the samples fall on the
head, not on air. Measured accuracy: README, "How it works".

Already-aligned input: when the optimised transform does not improve the metric over the
identity (evaluated densely on a regular subgrid of the domain, see ``metric_before``), the
identity is kept and ``kept_identity`` is recorded.
"""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import SimpleITK as sitk

from operators.spatial.grid import TOL_MM, centre_of
from operators.spatial.itk_threads import global_thread_count
from operators.spatial.registration_result import RegistrationResult

__all__ = ["inverse_euler", "register_rigid"]

_EVAL_VOXELS = 500_000  # max domain voxels used for metric_before / metric_after


def _as_euler(tx: sitk.Transform) -> sitk.Euler3DTransform:
    """The result of ``ImageRegistrationMethod.Execute`` as an ``Euler3DTransform`` (a copy).

    Raises
    ------
    RuntimeError
        If ``tx`` is not one Euler3D transform (alone or as the only one of a composite).
    """
    out = tx
    if isinstance(out, sitk.CompositeTransform):  # only one rigid transform is ever composed
        if out.GetNumberOfTransforms() != 1:
            raise RuntimeError("unexpected composite registration result")
        out = out.GetNthTransform(0)
    out = out.Downcast()
    if not isinstance(out, sitk.Euler3DTransform):
        raise RuntimeError(f"unexpected registration result type {type(out).__name__}")
    return sitk.Euler3DTransform(out)


def inverse_euler(tx: sitk.Euler3DTransform, centre: Sequence[float]) -> sitk.Euler3DTransform:
    """Exact inverse of a rigid transform, as an Euler3DTransform about a chosen centre.

    Parameters
    ----------
    tx
        Rigid transform, LPS mm: ``T(x) = A x + o`` with ``A`` a rotation.
    centre
        ``(x, y, z)`` LPS mm: the centre of rotation the inverse is expressed about (e.g.
        :func:`operators.spatial.grid.centre_of` of the image whose points it maps).

    Returns
    -------
    sitk.Euler3DTransform
        ``T^-1(y) = A^T y - A^T o``, computed in double from the matrix (no iterative inverse).
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
    """``image`` block-averaged to about ``spacing_mm`` (mm) voxels per axis, never finer than it is.

    ``sitk.BinShrink`` by ``max(1, round(spacing_mm / spacing))`` along each ``(x, y, z)`` axis;
    ``image`` itself when every factor is 1.
    """
    factors = [max(1, int(round(spacing_mm / sp))) for sp in image.GetSpacing()]
    return sitk.BinShrink(image, factors) if max(factors) > 1 else image


def _foreground_mask(image: sitk.Image, dilate_mm: float) -> sitk.Image:
    """``sitkUInt8`` mask of the voxels > 0 dilated by ``dilate_mm`` (mm; per-axis radius
    ``max(1, round(dilate_mm / spacing))`` voxels, SimpleITK's ball kernel), on ``image``'s grid."""
    fg = sitk.Cast(sitk.Greater(image, 0.0), sitk.sitkUInt8)
    radius = [max(1, int(round(dilate_mm / sp))) for sp in image.GetSpacing()]
    return sitk.BinaryDilate(fg, radius)


def _mattes_mi(histogram_bins: int, mask: sitk.Image | None) -> sitk.ImageRegistrationMethod:
    """A registration method with the metric every evaluation here uses: Mattes mutual
    information, linear interpolation, the mask (when given) on the metric domain, and image
    gradients at the sample points only.

    !! Gradients: ITK's default filters the whole fixed and moving image into gradient images
    (recursive Gaussian derivatives, at every pyramid level and every metric evaluation)
    although the metric reads only the sampled points: most of a registration's time. Central
    differences at the samples give the same accuracy (README, "How it works").
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
    """Starting fixed -> moving transform; its centre of rotation is the fixed image's centre
    (:func:`~operators.spatial.grid.centre_of`) in all cases.

    Raises
    ------
    ValueError
        On an ``initializer`` other than ``"geometry"``, ``"moments"``, ``"identity"``.
    """
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
        init.SetCenter(centre_of(fixed))
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
        domain, ``fixed`` on ties. Why: "Metric domain" in the module docstring.
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
        inverse = max(moving_f.GetSpacing()) > max(fixed_f.GetSpacing()) + TOL_MM
    else:
        inverse = direction == "inverse"

    initial = _initial_transform(fixed_f, moving_f, initializer)  # fixed -> moving
    # the optimisation runs on (domain, other); its transform maps domain -> other points
    domain, other = (moving_f, fixed_f) if inverse else (fixed_f, moving_f)
    initial_d = inverse_euler(initial, centre_of(domain)) if inverse else initial
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
    with global_thread_count(number_of_threads):
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

    with global_thread_count(number_of_threads):
        identity_d = sitk.Euler3DTransform()
        identity_d.SetCenter(centre_of(domain))
        before, after, at_identity = metric_at(initial_d), metric_at(final_d), metric_at(identity_d)
    final = inverse_euler(final_d, centre_of(fixed_f)) if inverse else final_d
    kept_identity = False
    if keep_identity_if_not_better and not after < at_identity:
        kept_identity = True
        final = sitk.Euler3DTransform()
        final.SetCenter(centre_of(fixed_f))
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
