"""Rigid multi-modal registration in PyTorch (on a CUDA GPU; on the CPU for the tests): the
SimpleITK-facing wrapper the registration operator calls.

The same problem and contract as :func:`operators.spatial.registration.register_rigid`: the
returned transform maps fixed points to moving points (axes, LPS, transform convention:
:mod:`operators.spatial`), the thicker-sliced image is the metric domain. The optimisation lives
in :mod:`operators.spatial.registration_torch_core`, on NumPy arrays without SimpleITK; this
module converts the images to :class:`~operators.spatial.registration_torch_core.ArrayImage` s
(array from ``GetArrayFromImage``, ``(Z, Y, X)``; geometry from the getters, ``(x, y, z)``) and
the result back to an ITK ``Euler3DTransform`` (``ComputeZYX`` off). When the moving image was
the metric domain, the optimised transform is inverted here with SimpleITK
(:func:`operators.spatial.registration.inverse_euler`), as the SimpleITK backend does, so the
results equal an all-SimpleITK implementation bit for bit (``tests/test_registration_torch.py``).
"""
from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from engines.runtimes.cpu_host import flush_denormals
from operators.spatial.grid import centre_of
from operators.spatial.registration import inverse_euler
from operators.spatial.registration_result import RegistrationResult
from operators.spatial.registration_torch_core import ArrayImage, register_rigid_arrays, torch_registration_device

__all__ = ["array_image", "register_rigid_torch", "torch_registration_device"]


def array_image(image: sitk.Image) -> ArrayImage:
    """``image`` cast to float32 as an :class:`ArrayImage`.

    Returns
    -------
    ArrayImage
        ``array``: float32 ``(Z, Y, X)`` (``sitk.GetArrayFromImage``); ``spacing``, ``origin``,
        ``direction``: the image's own, in SimpleITK's ``(x, y, z)`` order (mm, LPS).
    """
    f = sitk.Cast(image, sitk.sitkFloat32)
    return ArrayImage(sitk.GetArrayFromImage(f), f.GetSpacing(), f.GetOrigin(), f.GetDirection())


def _to_sitk(angles: np.ndarray, translation: np.ndarray, centre: Sequence[float]) -> sitk.Euler3DTransform:
    """ITK ``Euler3DTransform``: angles (3,) radians about LPS x, y, z; translation (3,) and
    centre (3,) in LPS mm."""
    tx = sitk.Euler3DTransform()
    tx.SetCenter(tuple(float(c) for c in centre))
    tx.SetRotation(*(float(a) for a in angles))
    tx.SetTranslation(tuple(float(t) for t in translation))
    return tx


def register_rigid_torch(
    fixed: sitk.Image,
    moving: sitk.Image,
    *,
    device: str = "cpu",
    seed: int = 1,
    level_spacings_mm: Sequence[float] = (4.0, 2.0, 1.0),
    samples_per_level: Sequence[int] = (20_000, 40_000, 80_000),
    iterations_per_level: Sequence[int] = (150, 80, 40),
    learning_rates: Sequence[float] = (0.02, 0.01, 0.005),
    histogram_bins: int = 32,
    auto_mask_mm: float = 10.0,
) -> RegistrationResult:
    """Rigid registration of ``moving`` to ``fixed`` with PyTorch; the returned transform maps
    fixed points to moving points (``fixed(x) ~ moving(T(x))``), as SimpleITK's.

    Parameters
    ----------
    fixed, moving
        Images in LPS mm (any grids; series of one exam).
    device, seed, level_spacings_mm, samples_per_level, iterations_per_level, learning_rates,
    histogram_bins, auto_mask_mm
        As :func:`operators.spatial.registration_torch_core.register_rigid_arrays`.

    Returns
    -------
    RegistrationResult
        ``transform``: fixed -> moving ``Euler3DTransform`` (LPS mm); ``metric_after``: the last
        level's loss; ``metric_before`` and ``metric_identity``: NaN; ``settings``: the core's.
    """
    t0 = time.perf_counter()
    flush_denormals()  # torch on the CPU (engines.runtimes.cpu_host)
    fixed_f = sitk.Cast(fixed, sitk.sitkFloat32)
    core = register_rigid_arrays(
        array_image(fixed_f), array_image(moving), device=device, seed=seed, level_spacings_mm=level_spacings_mm,
        samples_per_level=samples_per_level, iterations_per_level=iterations_per_level,
        learning_rates=learning_rates, histogram_bins=histogram_bins, auto_mask_mm=auto_mask_mm,
    )
    final_d = _to_sitk(core.angles, core.translation, core.centre)
    final = inverse_euler(final_d, centre_of(fixed_f)) if core.inverse else final_d
    return RegistrationResult(
        transform=final,
        metric_before=math.nan,
        metric_after=core.losses[-1],
        iterations=int(sum(core.iterations_per_level)),
        iterations_per_level=core.iterations_per_level,
        stop_condition="fixed number of Adam steps per level",
        duration_s=time.perf_counter() - t0,
        settings=core.settings,
        metric_identity=math.nan,
        kept_identity=False,
    )
