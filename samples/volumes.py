"""BraTS case volumes and the ``make_study --misalign`` draws, with NumPy and nibabel only.

The part of the sample builders that needs neither SimpleITK nor pydicom: reading a case
(:func:`load_case`: int16 ``data[i, j, k]`` in nibabel axis order with its **LPS** affine), a slab
of its slices (:func:`validate_slab`, :func:`crop_slab`) and the ground truth of a study
(:func:`write_ground_truth`), the known rigid transform and acquisition grid of a ``--misalign``
series (:func:`draw_transform`, :func:`draw_grid`), and :func:`resample_moving_numpy`, the moved
series made with SciPy instead of ``sitk.Resample`` (:func:`samples.make_study.resample_moving`).
``benchmarks/gpu_check.py`` builds its registration pair with it on the GPU machine, whose image
has no SimpleITK.

GEOMETRY (same as make_study's, read there in full)
===================================================
* NIfTI affines (nibabel) are **RAS**; these volumes carry **LPS** affines
  (``A_lps = diag(-1, -1, 1, 1) @ A_ras``).
* !! ``Volume.data`` is ``[i, j, k]`` (nibabel order: column, row, slice); a SimpleITK /
  ``(Z, Y, X)`` array of it is ``data.transpose(2, 1, 0)``. Spacing, origin, direction are along
  ``i, j, k`` = SimpleITK's ``(x, y, z)``.
* A ``--misalign`` transform ``T`` maps reference points to moving points (ITK Euler3D,
  ``ComputeZYX = False``: ``R = Rz @ Rx @ Ry``); the moving series is ``original(T^-1(y))``.
"""
from __future__ import annotations

import hashlib
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np

if TYPE_CHECKING:
    import SimpleITK as sitk


_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: The value range of the int16 voxels every sample series holds.
INT16_MIN, INT16_MAX = -32768, 32767
_GEOM_TOL = 1e-4  # mm (and unitless for direction cosines)

# Misalignment ranges: |angle| in [1, 5] degrees and |translation| in [1, 5] mm per axis
# (never ~0, so every moving series is measurably displaced), random sign.
_MAX_ANGLE_DEG, _MIN_ANGLE_DEG = 5.0, 1.0
_MAX_SHIFT_MM, _MIN_SHIFT_MM = 5.0, 1.0
#: In-plane acquisition grids of separately acquired series: (matrix, pixel spacing mm); all
#: cover a 240 mm field of view like the BraTS grid.
_INPLANE_GRIDS: tuple[tuple[int, float], ...] = ((256, 0.9375), (200, 1.2), (320, 0.75))
#: Slice thicknesses of separately acquired series (mm; contiguous slices, no gap).
_SLICE_THICKNESSES: tuple[float, ...] = (2.0, 2.5, 3.0)


class StudyBuildError(Exception):
    """Bad input or a refused request (message is one line, fit for the CLI)."""


def seeded_rng(*parts: object) -> np.random.Generator:
    """NumPy generator seeded from a stable hash of ``parts`` (not Python's salted ``hash``)."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


# ============================================================================================
# Input: BraTS case
# ============================================================================================
def nifti_lps_affine(img: nib.Nifti1Image) -> np.ndarray:
    """The image's voxel -> LPS mm affine.

    Parameters
    ----------
    img
        NIfTI image; ``img.affine`` maps voxel ``(i, j, k, 1)`` to **RAS** mm.

    Returns
    -------
    np.ndarray
        ``(4, 4)`` float64; maps voxel ``(i, j, k, 1)`` to **LPS** mm
        (``diag(-1, -1, 1, 1) @ A_ras``: the first two rows are negated).
    """
    return _RAS_TO_LPS @ np.asarray(img.affine, dtype=np.float64)


@dataclass(frozen=True)
class Volume:
    """One image volume with its LPS geometry.

    Attributes
    ----------
    data
        ``(I, J, K)`` int16 array in nibabel axis order (``data[i, j, k]``).
    affine_lps
        ``(4, 4)`` voxel -> LPS mm.
    """

    data: np.ndarray
    affine_lps: np.ndarray

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along i, j, k (mm)."""
        return tuple(float(v) for v in np.linalg.norm(self.affine_lps[:3, :3], axis=0))

    @property
    def direction(self) -> np.ndarray:
        """``(3, 3)``: column ``n`` = unit LPS direction of increasing index ``n``."""
        return self.affine_lps[:3, :3] / np.asarray(self.spacing)

    @property
    def origin(self) -> tuple[float, float, float]:
        """LPS position (mm) of voxel ``(0, 0, 0)``."""
        return tuple(float(v) for v in self.affine_lps[:3, 3])

    def to_sitk(self) -> sitk.Image:
        """The volume as a SimpleITK image (same index order, LPS geometry)."""
        import SimpleITK as sitk

        img = sitk.GetImageFromArray(np.ascontiguousarray(self.data.transpose(2, 1, 0)))
        img.SetOrigin(self.origin)
        img.SetSpacing(self.spacing)
        img.SetDirection(tuple(float(v) for v in self.direction.ravel()))
        return img


def case_id_of(case_dir: Path) -> str:
    """Case id = folder name (e.g. ``Brats18_TCIA01_201_1``)."""
    return case_dir.resolve().name


def case_file(case_dir: Path, modality: str) -> Path:
    """``<case dir>/<case>_<modality>.nii.gz``."""
    return case_dir / f"{case_id_of(case_dir)}_{modality}.nii.gz"


def as_int16(arr: np.ndarray, path: Path) -> np.ndarray:
    """Check that ``arr`` holds integers in the int16 range and return it as int16."""
    if arr.dtype == np.int16:
        return arr
    if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
        raise StudyBuildError(f"{path}: image values are not integers")
    if arr.min() < INT16_MIN or arr.max() > INT16_MAX:
        raise StudyBuildError(f"{path}: image values outside the int16 range")
    return arr.astype(np.int16)


def load_volume(path: Path) -> Volume:
    """Read one BraTS NIfTI image as int16 with its LPS affine.

    Raises
    ------
    StudyBuildError
        Missing / unreadable file, not 3-D, or a left-handed (slice-reversed) affine.
    """
    if not path.is_file():
        raise StudyBuildError(f"missing case file: {path}")
    try:
        img = nib.load(str(path))
        arr = np.asanyarray(img.dataobj)
    except Exception as exc:  # noqa: BLE001 -- any read failure is bad input
        raise StudyBuildError(f"cannot read {path}: {exc}".replace("\n", " ")) from exc
    if arr.ndim != 3:
        raise StudyBuildError(f"{path}: expected a 3-D image, got shape {arr.shape}")
    vol = Volume(data=as_int16(arr, path), affine_lps=nifti_lps_affine(img))
    d = vol.direction
    if np.dot(np.cross(d[:, 0], d[:, 1]), d[:, 2]) < 1.0 - 1e-3:
        raise StudyBuildError(f"{path}: affine is not right-handed / orthonormal; not supported")
    return vol


def load_case(case_dir: Path, modalities: Sequence[str]) -> dict[str, Volume]:
    """Load the requested modalities of a case and check they share one grid.

    Returns
    -------
    dict
        modality -> :class:`Volume` (``(240, 240, 155)`` int16 for BraTS).
    """
    if not case_dir.is_dir():
        raise StudyBuildError(f"case folder not found: {case_dir}")
    vols = {m: load_volume(case_file(case_dir, m)) for m in modalities}
    first = next(iter(vols.values()))
    for m, v in vols.items():
        if v.data.shape != first.data.shape or not np.allclose(
            v.affine_lps, first.affine_lps, atol=_GEOM_TOL
        ):
            raise StudyBuildError(
                f"{case_file(case_dir, m)}: grid differs from the other sequences"
            )
    return vols


def validate_slab(slices: tuple[int, int] | None, depth: int) -> tuple[int, int] | None:
    """``slices`` (``(start, end)``, a ``--slices START:END``) checked against ``depth`` slices;
    None when it keeps them all (no slab: the study is the whole case)."""
    if slices is None:
        return None
    try:
        start, end = (int(v) for v in slices)
    except (TypeError, ValueError) as exc:
        raise StudyBuildError(f"slices must be (start, end), got {slices!r}") from exc
    if not 0 <= start < end <= depth:
        raise StudyBuildError(f"slices {start}:{end} outside 0:{depth} or empty")
    if (start, end) == (0, depth):
        return None
    return start, end


def crop_slab(vol: Volume, slab: tuple[int, int]) -> Volume:
    """Slices ``slab[0] <= k < slab[1]`` of ``vol``; voxel (0, 0, 0) of the result is voxel
    (0, 0, start) of ``vol`` (same position in patient space)."""
    start, end = slab
    affine = vol.affine_lps.copy()
    affine[:3, 3] = (vol.affine_lps @ np.array([0.0, 0.0, float(start), 1.0]))[:3]
    return Volume(data=np.ascontiguousarray(vol.data[:, :, start:end]), affine_lps=affine)


def write_ground_truth(seg_path: Path, out_path: Path, slab: tuple[int, int] | None) -> None:
    """The case's label map as a study's ``ground_truth.nii.gz``: copied byte for byte, or its
    ``slab`` of slices (same position in patient space)."""
    if slab is None:
        shutil.copyfile(seg_path, out_path)
    else:
        nib.save(nib.load(str(seg_path)).slicer[:, :, slab[0]:slab[1]], str(out_path))


# ============================================================================================
# Misalignment: known rigid transform + own acquisition grid
# ============================================================================================
@dataclass(frozen=True)
class RigidTransform:
    """ITK ``Euler3DTransform`` (default ``ComputeZYX = False``: ``R = Rz @ Rx @ Ry``).

    Maps reference-space LPS points to moving-space LPS points:
    ``x_moving = R (x_ref - center) + center + translation``.

    Attributes
    ----------
    angles_rad
        Rotation about LPS x, y, z (radians).
    translation_mm
        ``(3,)`` translation (mm, LPS).
    center_mm
        ``(3,)`` centre of rotation (mm, LPS).
    """

    angles_rad: tuple[float, float, float]
    translation_mm: tuple[float, float, float]
    center_mm: tuple[float, float, float]

    def to_sitk(self) -> sitk.Euler3DTransform:
        """The transform as a SimpleITK object (fixed = reference -> moving)."""
        import SimpleITK as sitk

        t = sitk.Euler3DTransform()
        t.SetCenter(self.center_mm)
        t.SetRotation(*self.angles_rad)
        t.SetTranslation(self.translation_mm)
        return t

    def matrix4x4(self) -> np.ndarray:
        """``(4, 4)`` homogeneous matrix: ``[x_moving, 1] = M @ [x_ref, 1]`` (LPS mm)."""
        t = self.to_sitk()
        r = np.asarray(t.GetMatrix()).reshape(3, 3)
        c = np.asarray(self.center_mm)
        m = np.eye(4)
        m[:3, :3] = r
        m[:3, 3] = c + np.asarray(self.translation_mm) - r @ c
        return m

    def matrix4x4_numpy(self) -> np.ndarray:
        """:meth:`matrix4x4` computed with NumPy (``R = Rz @ Rx @ Ry``), no SimpleITK."""
        ax, ay, az = self.angles_rad
        rx = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(ax), -math.sin(ax)], [0.0, math.sin(ax), math.cos(ax)]])
        ry = np.array([[math.cos(ay), 0.0, math.sin(ay)], [0.0, 1.0, 0.0], [-math.sin(ay), 0.0, math.cos(ay)]])
        rz = np.array([[math.cos(az), -math.sin(az), 0.0], [math.sin(az), math.cos(az), 0.0], [0.0, 0.0, 1.0]])
        r = rz @ rx @ ry
        c = np.asarray(self.center_mm)
        m = np.eye(4)
        m[:3, :3] = r
        m[:3, 3] = c + np.asarray(self.translation_mm) - r @ c
        return m

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready description (angles also in degrees for humans)."""
        t = self.to_sitk()
        return {
            "transform_type": "Euler3DTransform",
            "compute_zyx": False,
            "angles_rad": list(self.angles_rad),
            "angles_deg": [math.degrees(a) for a in self.angles_rad],
            "translation_mm": list(self.translation_mm),
            "center_mm": list(self.center_mm),
            "matrix_4x4": self.matrix4x4().tolist(),
            "itk_parameters": list(t.GetParameters()),
            "itk_fixed_parameters": list(t.GetFixedParameters()),
        }


@dataclass(frozen=True)
class Grid:
    """An image grid (SimpleITK order: ``size`` / ``spacing`` are along i, j, k)."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # 9 values, row-major, columns = axis directions

    @property
    def affine_lps(self) -> np.ndarray:
        """``(4, 4)`` voxel -> LPS mm of the grid (the affine of a volume resampled onto it)."""
        affine = np.eye(4)
        affine[:3, :3] = np.asarray(self.direction, dtype=np.float64).reshape(3, 3) * np.asarray(self.spacing, dtype=np.float64)
        affine[:3, 3] = self.origin
        return affine


def volume_center(vol: Volume) -> np.ndarray:
    """Physical LPS centre (mm) of the voxel-centre bounding box: ``A @ ((n - 1) / 2)``."""
    idx = (np.asarray(vol.data.shape, dtype=float) - 1.0) / 2.0
    return (vol.affine_lps @ np.append(idx, 1.0))[:3]


def draw_transform(misalign_seed: int, modality: str, center: np.ndarray) -> RigidTransform:
    """Random rigid transform: ``|angle|`` in [1, 5] deg, ``|shift|`` in [1, 5] mm per axis."""
    rng = seeded_rng("misalign", misalign_seed, modality, "transform")
    sign = rng.choice([-1.0, 1.0], size=6)
    angles = sign[:3] * np.radians(rng.uniform(_MIN_ANGLE_DEG, _MAX_ANGLE_DEG, size=3))
    shifts = sign[3:] * rng.uniform(_MIN_SHIFT_MM, _MAX_SHIFT_MM, size=3)
    return RigidTransform(
        angles_rad=tuple(float(a) for a in angles),
        translation_mm=tuple(float(round(s, 6)) for s in shifts),
        center_mm=tuple(float(round(c, 6)) for c in center),
    )


def draw_grid(misalign_seed: int, modality: str, reference: Volume) -> Grid:
    """A separate acquisition grid covering the reference field of view.

    In-plane matrix / pixel spacing from :data:`_INPLANE_GRIDS`, slice thickness from
    :data:`_SLICE_THICKNESSES`; same orientation and centre as the reference volume.
    """
    rng = seeded_rng("misalign", misalign_seed, modality, "grid")
    n_inplane, pixel = _INPLANE_GRIDS[int(rng.integers(len(_INPLANE_GRIDS)))]
    thickness = _SLICE_THICKNESSES[int(rng.integers(len(_SLICE_THICKNESSES)))]
    fov_k = reference.data.shape[2] * reference.spacing[2]
    size = (n_inplane, n_inplane, max(1, round(fov_k / thickness)))
    spacing = (pixel, pixel, thickness)
    d = reference.direction
    half = d @ ((np.asarray(size, dtype=float) - 1.0) / 2.0 * np.asarray(spacing))
    origin = volume_center(reference) - half
    return Grid(
        size=size,
        spacing=spacing,
        origin=tuple(float(round(o, 6)) for o in origin),
        direction=tuple(float(v) for v in d.ravel()),
    )


def resample_moving_numpy(original: Volume, transform: RigidTransform, grid: Grid, *,
                          chunk_slices: int = 16) -> Volume:
    """:func:`samples.make_study.resample_moving` with SciPy instead of ``sitk.Resample``.

    ``moving(y) = original(T^-1(y))`` on ``grid``: linear interpolation (in double, then
    float32, rounded to int16), voxels whose nearest original voxel is 0 stay 0. ITK's rules are
    kept: a point is inside the original when its continuous index is in ``[-0.5, n - 0.5)`` on
    every axis (outside: 0), the linear interpolator clamps to the edge voxels there, the
    nearest neighbour rounds halves up. Identical to ``resample_moving`` on the series tested
    (T2 and FLAIR of TCIA01_201, misalign seeds 1 and 3); the interpolation's last bits are not
    ITK's, so a voxel at a rounding tie may differ by 1 (the test allows that, and no more).

    !! Index order: ``data[i, j, k]`` everywhere here (nibabel's), ``grid.size`` along i, j, k.
    """
    from scipy import ndimage

    src = np.asarray(original.data, dtype=np.float64)
    src_nonzero = original.data != 0
    to_src_index = np.linalg.inv(original.affine_lps[:3, :3])  # LPS - origin -> (i, j, k)
    src_origin = original.affine_lps[:3, 3]
    r = transform.matrix4x4_numpy()  # reference -> moving, (4, 4)
    inv_r, inv_o = r[:3, :3].T, -(r[:3, :3].T @ r[:3, 3])  # moving -> reference
    grid_affine = grid.affine_lps
    grid_m = grid_affine[:3, :3].copy()  # moving index -> LPS offset from the grid's origin
    size = np.asarray(src.shape, dtype=np.float64)
    out = np.zeros(grid.size, dtype=np.int16)
    for k0 in range(0, grid.size[2], chunk_slices):
        k1 = min(k0 + chunk_slices, grid.size[2])
        idx = np.stack(np.meshgrid(np.arange(grid.size[0]), np.arange(grid.size[1]), np.arange(k0, k1),
                                   indexing="ij"), axis=0).reshape(3, -1).astype(np.float64)
        y = grid_m @ idx + np.asarray(grid.origin, dtype=np.float64)[:, None]  # moving-space LPS
        x = inv_r @ y + inv_o[:, None]  # reference-space LPS
        cidx = to_src_index @ (x - src_origin[:, None])  # continuous (i, j, k) in the original
        inside = np.all((cidx >= -0.5) & (cidx < size[:, None] - 0.5), axis=0)
        values = ndimage.map_coordinates(src, cidx, order=1, mode="nearest").astype(np.float32)
        nearest = np.clip(np.floor(cidx + 0.5).astype(np.int64), 0, np.asarray(src.shape)[:, None] - 1)
        keep = inside & src_nonzero[nearest[0], nearest[1], nearest[2]]
        data = np.where(keep, np.clip(np.rint(values), INT16_MIN, INT16_MAX), 0).astype(np.int16)
        out[:, :, k0:k1] = data.reshape(grid.size[0], grid.size[1], k1 - k0)
    return Volume(data=out, affine_lps=grid_affine)


def nonzero_box_corners(vol: Volume) -> np.ndarray:
    """``(8, 3)`` LPS corners (voxel centres) of the bounding box of ``vol``'s nonzero voxels.

    :func:`tests.registration_checks.brain_box_corners` of ``brain_mask_from_nonzero([vol])``
    without SimpleITK, in the same order (i outermost, k innermost; first the low end).
    """
    present = [np.nonzero(vol.data.any(axis=tuple(a for a in range(3) if a != axis)))[0] for axis in range(3)]
    if any(p.size == 0 for p in present):
        raise ValueError("nonzero_box_corners: the volume is all zeros")
    lo, hi = [float(p[0]) for p in present], [float(p[-1]) for p in present]
    corners = [(hi[0] if i else lo[0], hi[1] if j else lo[1], hi[2] if k else lo[2])
               for i in (0, 1) for j in (0, 1) for k in (0, 1)]
    return (vol.affine_lps @ np.c_[np.asarray(corners), np.ones(8)].T).T[:, :3]
