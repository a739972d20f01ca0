"""Rigid multi-modal registration in PyTorch (GPU where there is one; CPU for the tests).

The same problem and conventions as :func:`operators.spatial.registration.register_rigid`,
solved with tensors so that it runs on the GPU next to the network: Mattes-style mutual
information from hf-deepali (``deepali.losses.functional.mi_loss``, Parzen windows),
trilinear sampling with ``torch.nn.functional.grid_sample``, Adam on the six Euler
parameters, a block-average pyramid (4 / 2 / 1 mm) with a fixed set of sampled points per
level (seeded: deterministic on the CPU).

CONVENTIONS (read before touching the maths)
============================================
* Physical space is LPS mm. The transform is ITK's ``Euler3DTransform`` with
  ``ComputeZYX = False``: ``x_moving = R (x_fixed - c) + c + t``, ``R = Rz @ Rx @ Ry``, so the
  result converts to SimpleITK exactly (:func:`_to_sitk`).
* The metric domain is the thicker-sliced image (as the SimpleITK path, ``direction="auto"``);
  when that is the moving image, the optimised transform is inverted at the end.
* ``grid_sample`` wants normalised coordinates in (x, y, z) = (column, row, slice) order of a
  (N, C, D, H, W) = (slices, rows, columns) tensor: index ``i`` of a SimpleITK image (fastest
  axis) is ``x``. ``align_corners=True``: -1 and +1 are the centres of the first and last voxel.
"""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import SimpleITK as sitk

from operators.spatial.registration import (
    _TOL_MM,
    RegistrationResult,
    _block_average,
    _centre,
    _foreground_mask,
    _inverse_euler,
)

__all__ = ["register_rigid_torch", "torch_registration_device"]


def torch_registration_device() -> str | None:
    """``"cuda"`` when PyTorch sees a GPU, else None (the SimpleITK path is faster on a CPU)."""
    try:
        import torch
    except ImportError:
        return None
    return "cuda" if torch.cuda.is_available() else None


def _rotation(angles: Any) -> Any:
    """``R = Rz @ Rx @ Ry`` from (ax, ay, az) radians (ITK Euler3D, ComputeZYX false)."""
    import torch

    ax, ay, az = angles[0], angles[1], angles[2]
    one, zero = torch.ones_like(ax), torch.zeros_like(ax)
    rx = torch.stack([one, zero, zero, zero, ax.cos(), -ax.sin(), zero, ax.sin(), ax.cos()]).view(3, 3)
    ry = torch.stack([ay.cos(), zero, ay.sin(), zero, one, zero, -ay.sin(), zero, ay.cos()]).view(3, 3)
    rz = torch.stack([az.cos(), -az.sin(), zero, az.sin(), az.cos(), zero, zero, zero, one]).view(3, 3)
    return rz @ rx @ ry


def _normaliser(image: sitk.Image, torch_device: Any) -> tuple[Any, Any]:
    """(A, b) with ``u = A @ x + b``: LPS point -> grid_sample's normalised (x, y, z)."""
    import torch

    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    size = np.asarray(image.GetSize(), dtype=np.float64)
    to_index = np.linalg.inv(direction * spacing)  # index = to_index @ (x - origin)
    scale = 2.0 / np.maximum(size - 1.0, 1.0)  # index -> [-1, 1] (align_corners=True)
    a = scale[:, None] * to_index
    b = -a @ origin - 1.0
    return (torch.tensor(a, dtype=torch.float32, device=torch_device),
            torch.tensor(b, dtype=torch.float32, device=torch_device))  # fmt: skip


def _intensity_range(array: np.ndarray) -> tuple[float, float]:
    values = array[array > 0] if np.any(array > 0) else array
    return float(np.percentile(values, 0.5)), float(np.percentile(values, 99.5))


def _to_tensor(image: sitk.Image, torch_device: Any) -> Any:
    """(1, 1, D, H, W) float32, intensities mapped to [0, 1] by the 0.5 / 99.5 percentiles."""
    import torch

    array = sitk.GetArrayFromImage(image).astype(np.float32)  # (Z, Y, X)
    lo, hi = _intensity_range(array)
    array = np.clip((array - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    return torch.from_numpy(array)[None, None].to(torch_device)


def _to_sitk(angles: np.ndarray, translation: np.ndarray, centre: Sequence[float]) -> sitk.Euler3DTransform:
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
    device
        ``"cuda"`` or ``"cpu"``.
    seed
        Seeds the sampled points (one set per level): the same inputs give the same result.
    level_spacings_mm, samples_per_level, iterations_per_level, learning_rates
        The pyramid, coarse to fine: block-average spacing (mm), sampled points, Adam steps and
        learning rate (parameters are radians and, scaled, centimetres).
    histogram_bins
        Parzen-window bins of the mutual information.
    auto_mask_mm
        Samples are drawn from the domain image's voxels > 0 dilated by this many mm.
    """
    import torch
    from deepali.losses.functional import mi_loss

    t0 = time.perf_counter()
    torch_device = torch.device(device)
    fixed_f, moving_f = sitk.Cast(fixed, sitk.sitkFloat32), sitk.Cast(moving, sitk.sitkFloat32)
    inverse = max(moving_f.GetSpacing()) > max(fixed_f.GetSpacing()) + _TOL_MM
    domain, other = (moving_f, fixed_f) if inverse else (fixed_f, moving_f)
    centre = np.asarray(_centre(domain), dtype=np.float64)
    mask_full = _foreground_mask(domain, auto_mask_mm)
    params = torch.zeros(6, dtype=torch.float32, device=torch_device, requires_grad=True)  # ax ay az, t/10 (cm)
    c = torch.tensor(centre, dtype=torch.float32, device=torch_device)
    per_level: list[int] = []
    losses: list[float] = []
    generator = np.random.default_rng(seed)
    for level_mm, n_samples, n_iter, lr in zip(level_spacings_mm, samples_per_level, iterations_per_level,
                                               learning_rates):  # fmt: skip
        d_img, o_img = _block_average(domain, level_mm), _block_average(other, level_mm)
        mask = sitk.GetArrayFromImage(_block_average(sitk.Cast(mask_full, sitk.sitkFloat32), level_mm)) > 0.5
        zyx = np.argwhere(mask)
        pick = zyx[generator.choice(len(zyx), size=min(n_samples, len(zyx)), replace=False)]
        index_xyz = pick[:, ::-1].astype(np.float64)  # (i, j, k) = (column, row, slice)
        direction = np.asarray(d_img.GetDirection(), dtype=np.float64).reshape(3, 3)
        points = (direction * np.asarray(d_img.GetSpacing()) @ index_xyz.T).T + np.asarray(d_img.GetOrigin())
        d_values = _to_tensor(d_img, torch_device)[0, 0][tuple(torch.as_tensor(pick.T, device=torch_device))]
        x = torch.tensor(points, dtype=torch.float32, device=torch_device)  # (P, 3) LPS
        o_tensor = _to_tensor(o_img, torch_device)
        a, b = _normaliser(o_img, torch_device)
        optimiser = torch.optim.Adam([params], lr=lr)
        for _ in range(n_iter):
            optimiser.zero_grad()
            r = _rotation(params[:3])
            y = (x - c) @ r.T + c + params[3:] * 10.0  # domain -> other, LPS mm
            u = y @ a.T + b  # normalised (x, y, z) for grid_sample
            sampled = torch.nn.functional.grid_sample(o_tensor, u.view(1, 1, 1, -1, 3), mode="bilinear",
                                                      padding_mode="zeros", align_corners=True).view(1, 1, -1)
            loss = mi_loss(sampled, d_values.view(1, 1, -1), vmin=0.0, vmax=1.0, num_bins=histogram_bins)
            loss.backward()
            optimiser.step()
        per_level.append(n_iter)
        losses.append(float(loss.detach()))
    angles = params[:3].detach().cpu().numpy().astype(np.float64)
    translation = params[3:].detach().cpu().numpy().astype(np.float64) * 10.0
    final_d = _to_sitk(angles, translation, centre)
    final = _inverse_euler(final_d, _centre(fixed_f)) if inverse else final_d
    return RegistrationResult(
        transform=final,
        metric_before=math.nan,
        metric_after=losses[-1],
        iterations=int(sum(per_level)),
        iterations_per_level=tuple(per_level),
        stop_condition="fixed number of Adam steps per level",
        duration_s=time.perf_counter() - t0,
        settings={
            "backend": f"torch-{device}", "library": "hf-deepali mi_loss + torch grid_sample", "seed": int(seed),
            "domain": "moving" if inverse else "fixed", "level_spacings_mm": list(level_spacings_mm),
            "samples_per_level": list(samples_per_level), "iterations_per_level": list(iterations_per_level),
            "learning_rates": list(learning_rates), "histogram_bins": histogram_bins,
            "loss_per_level": losses, "torch": torch.__version__,
        },  # fmt: skip
        metric_identity=math.nan,
        kept_identity=False,
    )
