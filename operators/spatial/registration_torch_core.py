"""Rigid multi-modal registration in PyTorch on NumPy arrays: no SimpleITK anywhere in here.

The optimisation core of :func:`operators.spatial.registration_torch.register_rigid_torch` (the
SimpleITK-facing wrapper the operator calls). It works on a NumPy array plus its geometry
(:class:`ArrayImage`), so that it also runs where SimpleITK is not installed (a GPU machine's
image with torch, numpy and scipy only). Every preprocessing step reproduces SimpleITK's own
arithmetic in ITK's order, so the wrapper's results equal an all-SimpleITK implementation bit for
bit (tested against SimpleITK in ``tests/test_registration_torch.py``):

* ``sitk.BinShrink`` (the block-average pyramid): :func:`block_average`;
* ``sitk.BinaryDilate`` with a ball kernel (the foreground mask): :func:`foreground_mask`;
* ``image.TransformContinuousIndexToPhysicalPoint`` (the centre of rotation): :func:`centre`.

Method: Mattes-style mutual information from hf-deepali (``deepali.losses.functional.mi_loss``,
Parzen windows), trilinear sampling with ``torch.nn.functional.grid_sample``, Adam on the six
Euler parameters, a block-average pyramid (4 / 2 / 1 mm) with a fixed set of sampled points per
level (seeded: deterministic on the CPU).

Conventions
-----------
Axes, LPS and the transform convention: :mod:`operators.spatial`. Here in particular:

* ``ArrayImage.array`` is ``(Z, Y, X)``; its ``spacing``, ``origin``, ``direction`` and ``size``
  are ``(x, y, z)``: ``spacing[0]`` is the step along the array's LAST axis, ``size ==
  array.shape[::-1]``. ``direction`` is row-major 3 x 3, its column ``n`` the LPS unit vector of
  increasing index ``n``; the voxel at index ``(i, j, k)`` (``array[k, j, i]``) lies at
  ``origin + direction @ (spacing * (i, j, k))``.
* Euler3D as ITK's ``Euler3DTransform`` with ``ComputeZYX = False``:
  ``x_moving = R (x_fixed - c) + c + t``, ``R = Rz @ Rx @ Ry`` (:func:`euler_matrix`), so the
  result converts to SimpleITK exactly.
* The metric domain is the thicker-sliced image; when that is the moving image, the optimised
  transform (domain -> other) has to be inverted (:meth:`TorchRigidResult.fixed_to_moving`; the
  wrapper inverts it with SimpleITK).
* ``grid_sample`` wants normalised coordinates in (x, y, z) = (column, row, slice) order of a
  (N, C, D, H, W) = (slices, rows, columns) tensor: index ``i`` (fastest axis) is ``x``.
  ``align_corners=True``: -1 and +1 are the centres of the first and last voxel.
"""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "ArrayImage",
    "TorchRigidResult",
    "block_average",
    "centre",
    "euler_affine",
    "euler_matrix",
    "foreground_mask",
    "invert_affine",
    "register_rigid_arrays",
    "rigid_error",
    "torch_registration_device",
]

#: Geometric tolerance (mm) of the "which image has the thicker slices" decision; the same value
#: as :data:`operators.spatial.grid.TOL_MM` (not imported: that module needs SimpleITK).
_TOL_MM = 1e-3


@dataclass(frozen=True)
class ArrayImage:
    """A 3-D image without SimpleITK: voxels plus LPS geometry.

    Attributes
    ----------
    array
        ``(Z, Y, X)`` = (slices, rows, columns), ``sitk.GetArrayFromImage`` order.
    spacing
        Voxel size (mm) in SimpleITK's ``(x, y, z)`` order: ``spacing[0]`` along ``array``'s
        last axis (columns), ``spacing[2]`` along its first (slices).
    origin
        LPS position (mm) of the centre of voxel ``array[0, 0, 0]``.
    direction
        9 floats, row-major 3 x 3; column ``n`` = LPS unit direction of index ``n`` (x, y, z
        order as ``spacing``). ``GetDirection()`` of the SimpleITK image.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def __post_init__(self) -> None:
        if self.array.ndim != 3 or len(self.spacing) != 3 or len(self.origin) != 3 or len(self.direction) != 9:
            raise ValueError("ArrayImage: a 3-D (Z, Y, X) array, 3 spacings, 3 origin values, 9 direction values")

    @property
    def size(self) -> tuple[int, int, int]:
        """``(X, Y, Z)`` voxel counts: SimpleITK's ``GetSize()``, ``array.shape[::-1]``."""
        return tuple(int(n) for n in self.array.shape[::-1])  # type: ignore[return-value]

    def index_to_lps(self) -> np.ndarray:
        """``(3, 3)`` matrix ``M`` with ``x = origin + M @ (i, j, k)``: ``direction * spacing``."""
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3) * np.asarray(self.spacing, dtype=np.float64)


# --------------------------------------------------------------------------------------------
# SimpleITK's arithmetic, reproduced (the wrapper's results stay bit-identical)
# --------------------------------------------------------------------------------------------
def _continuous_index_to_point(image: ArrayImage, index: Sequence[float]) -> tuple[float, float, float]:
    """``image.TransformContinuousIndexToPhysicalPoint(index)`` in ITK's order of operations
    (``sum_c M[r, c] * index[c]``, then ``+ origin[r]``, in double), so bit for bit the same."""
    m = image.index_to_lps()
    out = []
    for r in range(3):
        s = 0.0
        for c in range(3):
            s += float(m[r, c]) * float(index[c])
        out.append(s + float(image.origin[r]))
    return out[0], out[1], out[2]


def centre(image: ArrayImage) -> tuple[float, float, float]:
    """Physical LPS centre (mm) of the voxel-centre bounding box (index ``(size - 1) / 2``)."""
    return _continuous_index_to_point(image, [(n - 1) / 2.0 for n in image.size])


def _factors(image: ArrayImage, spacing_mm: float) -> tuple[int, int, int]:
    """Per-axis (x, y, z) block sizes to reach about ``spacing_mm`` (at least 1)."""
    return tuple(max(1, int(round(spacing_mm / sp))) for sp in image.spacing)  # type: ignore[return-value]


def block_average(image: ArrayImage, spacing_mm: float) -> ArrayImage:
    """``image`` block-averaged to about ``spacing_mm`` voxels per axis (never finer than it is).

    ``sitk.BinShrink(image, factors)`` of a float32 image, bit for bit: output size
    ``floor(size / f)`` (a partial block at the far end is dropped), spacing ``spacing * f``,
    origin at the centre of the first block (continuous index ``(f - 1) / 2``); each value is
    the block's sum in double, accumulated in ITK's order (block rows: x innermost, then y,
    then z), times ``1 / (fx fy fz)``, rounded to float32.
    """
    fx, fy, fz = _factors(image, spacing_mm)
    if max(fx, fy, fz) == 1:
        return image
    src = np.asarray(image.array, dtype=np.float32)
    nz, ny, nx = src.shape[0] // fz, src.shape[1] // fy, src.shape[2] // fx  # (Z, Y, X) order!
    if min(nx, ny, nz) < 1:
        raise ValueError(f"block_average: image of size {image.size} is smaller than one {fx}x{fy}x{fz} block")
    acc: np.ndarray | None = None
    for dz in range(fz):
        for dy in range(fy):
            for dx in range(fx):
                part = src[dz:nz * fz:fz, dy:ny * fy:fy, dx:nx * fx:fx].astype(np.float64)
                acc = part if acc is None else acc + part
    assert acc is not None
    out = (acc * (1.0 / float(fx * fy * fz))).astype(np.float32)
    spacing = tuple(float(s) * f for s, f in zip(image.spacing, (fx, fy, fz)))
    origin = _continuous_index_to_point(image, [0.5 * (f - 1) for f in (fx, fy, fz)])
    return ArrayImage(out, spacing, origin, tuple(float(v) for v in image.direction))  # type: ignore[arg-type]


def foreground_mask(image: ArrayImage, dilate_mm: float) -> np.ndarray:
    """Voxels > 0 dilated by ``dilate_mm``: a bool ``(Z, Y, X)`` array.

    ``sitk.BinaryDilate(image > 0, radius)`` with its default ball kernel, bit for bit: per-axis
    radius ``r = max(1, round(dilate_mm / spacing))`` voxels; ITK's ball is the ellipsoid of
    axes ``2 r + 1`` (``sum((d / (r + 0.5))^2) <= 1``), outside the image is background. Done
    with an exact Euclidean distance transform scaled by ``1 / (r + 0.5)`` per axis: a voxel is
    in the dilation when its scaled distance to the nearest foreground voxel is <= 1. (The
    squared scaled distance of a voxel offset is never within 1e-7 of 1 -- with odd ``2 r + 1``
    it cannot equal 1 -- so rounding never decides a voxel.)
    """
    from scipy import ndimage

    fg = np.asarray(image.array) > 0
    if not fg.any():
        return fg
    radius = [max(1, int(round(dilate_mm / sp))) for sp in image.spacing][::-1]  # (z, y, x), the array's order!
    # Only the foreground's bounding box grown by the radius can change: the distance transform
    # runs there only.
    box = []
    for axis, r in enumerate(radius):
        present = np.nonzero(fg.any(axis=tuple(a for a in range(3) if a != axis)))[0]
        box.append(slice(max(int(present[0]) - r - 1, 0), int(present[-1]) + r + 2))
    sub = fg[tuple(box)]
    distance = ndimage.distance_transform_edt(~sub, sampling=[1.0 / (r + 0.5) for r in radius])
    out = fg.copy()
    out[tuple(box)] = sub | (distance <= 1.0)
    return out


# --------------------------------------------------------------------------------------------
# Euler transforms in NumPy (ITK Euler3DTransform, ComputeZYX false)
# --------------------------------------------------------------------------------------------
def euler_matrix(angles: Sequence[float]) -> np.ndarray:
    """``R = Rz @ Rx @ Ry`` from (ax, ay, az) radians about LPS x, y, z (ITK Euler3D)."""
    ax, ay, az = (float(a) for a in angles)
    rx = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(ax), -math.sin(ax)], [0.0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0.0, math.sin(ay)], [0.0, 1.0, 0.0], [-math.sin(ay), 0.0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0.0], [math.sin(az), math.cos(az), 0.0], [0.0, 0.0, 1.0]])
    return rz @ rx @ ry


def euler_affine(angles: Sequence[float], translation: Sequence[float],
                 centre_mm: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """``(A, o)`` with ``T(x) = A @ x + o`` for ``T(x) = R (x - c) + c + t`` (LPS mm)."""
    a = euler_matrix(angles)
    c = np.asarray(centre_mm, dtype=np.float64)
    return a, c + np.asarray(translation, dtype=np.float64) - a @ c


def invert_affine(a: np.ndarray, o: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact inverse of a rigid ``(A, o)``: ``T^-1(y) = A^T y - A^T o``."""
    return a.T, -(a.T @ o)


def rigid_error(estimated: tuple[np.ndarray, np.ndarray], truth: tuple[np.ndarray, np.ndarray],
                points: np.ndarray | Sequence[Sequence[float]]) -> tuple[float, float]:
    """How far apart two rigid transforms are: an evaluation helper, without SimpleITK (the
    registration does not use it; the tests and the GPU check measure with it).

    Parameters
    ----------
    estimated, truth
        ``(A, o)`` pairs, ``T(x) = A @ x + o`` (``A`` (3, 3), ``o`` (3,), LPS mm), both
        fixed -> moving.
    points
        ``(N, 3)`` LPS points (mm) to compare at, e.g. the corners of the brain's bounding box.

    Returns
    -------
    max_displacement_mm
        ``max_i |est(p_i) - truth(p_i)|`` (mm).
    rotation_error_deg
        Rotation angle of ``A_est^T A_true`` (degrees, in [0, 180]).
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    (ae, oe), (at, ot) = estimated, truth
    d = np.linalg.norm((pts @ ae.T + oe) - (pts @ at.T + ot), axis=1)
    cos = np.clip((np.trace(ae.T @ at) - 1.0) / 2.0, -1.0, 1.0)
    return float(d.max()), float(math.degrees(math.acos(cos)))


# --------------------------------------------------------------------------------------------
# The optimisation
# --------------------------------------------------------------------------------------------
def torch_registration_device() -> str | None:
    """``"cuda"`` when PyTorch sees a GPU, else None (the SimpleITK path is faster on a CPU)."""
    try:
        import torch
    except ImportError:
        return None
    return "cuda" if torch.cuda.is_available() else None


def _rotation(angles: Any) -> Any:
    """``R = Rz @ Rx @ Ry`` from (ax, ay, az) radians, differentiable (torch)."""
    import torch

    ax, ay, az = angles[0], angles[1], angles[2]
    one, zero = torch.ones_like(ax), torch.zeros_like(ax)
    rx = torch.stack([one, zero, zero, zero, ax.cos(), -ax.sin(), zero, ax.sin(), ax.cos()]).view(3, 3)
    ry = torch.stack([ay.cos(), zero, ay.sin(), zero, one, zero, -ay.sin(), zero, ay.cos()]).view(3, 3)
    rz = torch.stack([az.cos(), -az.sin(), zero, az.sin(), az.cos(), zero, zero, zero, one]).view(3, 3)
    return rz @ rx @ ry


def _normaliser(image: ArrayImage, torch_device: Any) -> tuple[Any, Any]:
    """(A, b) with ``u = A @ x + b``: LPS point -> grid_sample's normalised (x, y, z)."""
    import torch

    direction = np.asarray(image.direction, dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(image.spacing, dtype=np.float64)
    origin = np.asarray(image.origin, dtype=np.float64)
    size = np.asarray(image.size, dtype=np.float64)
    to_index = np.linalg.inv(direction * spacing)  # index = to_index @ (x - origin)
    scale = 2.0 / np.maximum(size - 1.0, 1.0)  # index -> [-1, 1] (align_corners=True)
    a = scale[:, None] * to_index
    b = -a @ origin - 1.0
    return (torch.tensor(a, dtype=torch.float32, device=torch_device),
            torch.tensor(b, dtype=torch.float32, device=torch_device))


def _intensity_range(array: np.ndarray) -> tuple[float, float]:
    values = array[array > 0] if np.any(array > 0) else array
    return float(np.percentile(values, 0.5)), float(np.percentile(values, 99.5))


def _to_tensor(image: ArrayImage, torch_device: Any) -> Any:
    """(1, 1, D, H, W) float32, intensities mapped to [0, 1] by the 0.5 / 99.5 percentiles."""
    import torch

    array = np.asarray(image.array).astype(np.float32)  # (Z, Y, X), a copy
    lo, hi = _intensity_range(array)
    array = np.clip((array - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    return torch.from_numpy(array)[None, None].to(torch_device)


@dataclass
class TorchRigidResult:
    """Outcome of :func:`register_rigid_arrays`.

    Attributes
    ----------
    angles, translation, centre
        The optimised Euler3D transform (radians; mm; LPS mm), mapping **domain** points to
        **other** points -- NOT necessarily fixed -> moving: see ``domain``.
    domain
        ``"fixed"``: the transform maps fixed -> moving. ``"moving"`` (the moving image has the
        thicker slices and was the metric domain): it maps moving -> fixed and must be inverted
        (:meth:`fixed_to_moving` does).
    fixed_centre
        Centre (LPS mm) of the fixed image: the centre of rotation the inverted transform gets.
    """

    angles: np.ndarray
    translation: np.ndarray
    centre: tuple[float, float, float]
    domain: str
    fixed_centre: tuple[float, float, float]
    iterations_per_level: tuple[int, ...]
    losses: list[float]
    duration_s: float
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def inverse(self) -> bool:
        """True when the optimised transform is moving -> fixed."""
        return self.domain == "moving"

    def fixed_to_moving(self) -> tuple[np.ndarray, np.ndarray]:
        """``(A, o)``: ``x_moving = A @ x_fixed + o`` (LPS mm), inverted exactly when needed."""
        a, o = euler_affine(self.angles, self.translation, self.centre)
        return invert_affine(a, o) if self.inverse else (a, o)


def register_rigid_arrays(
    fixed: ArrayImage,
    moving: ArrayImage,
    *,
    device: str = "cpu",
    seed: int = 1,
    level_spacings_mm: Sequence[float] = (4.0, 2.0, 1.0),
    samples_per_level: Sequence[int] = (20_000, 40_000, 80_000),
    iterations_per_level: Sequence[int] = (150, 80, 40),
    learning_rates: Sequence[float] = (0.02, 0.01, 0.005),
    histogram_bins: int = 32,
    auto_mask_mm: float = 10.0,
) -> TorchRigidResult:
    """Rigid registration of ``moving`` to ``fixed`` with PyTorch, on arrays (no SimpleITK).

    Parameters
    ----------
    fixed, moving
        :class:`ArrayImage` s in LPS mm (any grids; series of one exam). Cast to float32.
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

    Returns
    -------
    TorchRigidResult
        The optimised domain -> other transform; :meth:`TorchRigidResult.fixed_to_moving` gives
        fixed -> moving.
    """
    import torch
    from deepali.losses.functional import mi_loss

    t0 = time.perf_counter()
    torch_device = torch.device(device)
    fixed_f = ArrayImage(np.asarray(fixed.array, dtype=np.float32), fixed.spacing, fixed.origin, fixed.direction)
    moving_f = ArrayImage(np.asarray(moving.array, dtype=np.float32), moving.spacing, moving.origin, moving.direction)
    inverse = max(moving_f.spacing) > max(fixed_f.spacing) + _TOL_MM
    domain, other = (moving_f, fixed_f) if inverse else (fixed_f, moving_f)
    c_domain = centre(domain)
    mask_full = ArrayImage(foreground_mask(domain, auto_mask_mm).astype(np.float32), domain.spacing, domain.origin,
                           domain.direction)
    params = torch.zeros(6, dtype=torch.float32, device=torch_device, requires_grad=True)  # ax ay az, t/10 (cm)
    c = torch.tensor(np.asarray(c_domain, dtype=np.float64), dtype=torch.float32, device=torch_device)
    per_level: list[int] = []
    losses: list[float] = []
    generator = np.random.default_rng(seed)
    for level_mm, n_samples, n_iter, lr in zip(level_spacings_mm, samples_per_level, iterations_per_level,
                                               learning_rates):
        d_img, o_img = block_average(domain, level_mm), block_average(other, level_mm)
        mask = block_average(mask_full, level_mm).array > 0.5  # (Z, Y, X)
        zyx = np.argwhere(mask)
        pick = zyx[generator.choice(len(zyx), size=min(n_samples, len(zyx)), replace=False)]
        index_xyz = pick[:, ::-1].astype(np.float64)  # (i, j, k) = (column, row, slice)
        direction = np.asarray(d_img.direction, dtype=np.float64).reshape(3, 3)
        points = (direction * np.asarray(d_img.spacing) @ index_xyz.T).T + np.asarray(d_img.origin)
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
    return TorchRigidResult(
        angles=angles,
        translation=translation,
        centre=c_domain,
        domain="moving" if inverse else "fixed",
        fixed_centre=centre(fixed_f),
        iterations_per_level=tuple(per_level),
        losses=losses,
        duration_s=time.perf_counter() - t0,
        settings={
            "backend": f"torch-{device}", "library": "hf-deepali mi_loss + torch grid_sample", "seed": int(seed),
            "domain": "moving" if inverse else "fixed", "level_spacings_mm": list(level_spacings_mm),
            "samples_per_level": list(samples_per_level), "iterations_per_level": list(iterations_per_level),
            "learning_rates": list(learning_rates), "histogram_bins": histogram_bins,
            "loss_per_level": losses, "torch": torch.__version__,
        },
    )
