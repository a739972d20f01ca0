"""A DICOM series (classic single-frame or Enhanced multi-frame) as a SimpleITK image.

highdicom builds the volume and checks the geometry (equal spacing, parallel slices,
one orientation); we convert it to SimpleITK and keep, for every slice of the image, the
dataset (and frame) it came from, so that a label map computed on this image can be
written back slice for slice as a DICOM-SEG that references the right instances.

Axis order (loud, because it bites): highdicom's ``Volume.array`` is indexed
``[slice, row, column]`` and its affine maps ``(slice, row, column, 1)`` to LPS mm.
``sitk.GetArrayFromImage`` is ``[z, y, x]`` with SimpleITK index ``(x, y, z)`` =
``(column, row, slice)``. So the array layouts agree, and the SimpleITK direction matrix's
columns are the affine's columns in reverse order (column axis first).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk

from operators.errors import InconsistentGeometryError, UnreadablePixelDataError, UnsupportedTransferSyntaxError

logger = logging.getLogger(__name__)


@dataclass
class SeriesImage:
    """One series as an image, plus where each slice came from.

    Attributes
    ----------
    image
        Float32 image in LPS mm; array order (Z, Y, X) = (slice, row, column).
    slice_datasets
        ``slice_datasets[k]`` is the pydicom dataset holding slice ``k`` (for an Enhanced
        multi-frame series: the one dataset, repeated).
    slice_frames
        ``slice_frames[k]`` is the 1-based frame number of slice ``k`` inside its dataset
        (1 for classic single-frame instances).
    """

    image: sitk.Image
    slice_datasets: list[Any]
    slice_frames: list[int]


def _right_handed_in_sitk_order(volume: Any) -> Any:
    """Flip the slice axis if needed so that the SimpleITK direction has determinant +1.

    highdicom keeps the slice order it finds (a series may run head-to-feet); SimpleITK /
    GDCM readers give a right-handed (column, row, slice) frame. Reversing the axis order
    is an odd permutation, so right-handed in SimpleITK order is *left*-handed in
    highdicom's (slice, row, column) order.
    """
    return volume.ensure_handedness("LEFT_HANDED", flip_axis=0)


def _volume_to_sitk(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """(slice, row, column) array + highdicom affine -> SimpleITK image (LPS)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.astype(np.float32)))
    columns = affine[:3, :3]
    spacing = np.linalg.norm(columns, axis=0)  # per array axis: slice, row, column
    unit = columns / spacing
    # SimpleITK index axes are (column, row, slice): reverse the array axes.
    direction = np.stack([unit[:, 2], unit[:, 1], unit[:, 0]], axis=1)
    image.SetSpacing([float(spacing[2]), float(spacing[1]), float(spacing[0])])
    image.SetDirection(direction.flatten().tolist())
    image.SetOrigin([float(v) for v in affine[:3, 3]])
    return image


def _decode_error(exc: Exception) -> Exception:
    text = str(exc)
    if "transfer syntax" in text.lower() or "no available image handler" in text.lower() or "plugin" in text.lower():
        return UnsupportedTransferSyntaxError(f"pixel data cannot be decoded: {text.splitlines()[0][:200]}")
    return UnreadablePixelDataError(f"pixel data cannot be read: {type(exc).__name__}: {text.splitlines()[0][:200]}")


def series_to_image(datasets: Sequence[Any], description: str = "") -> SeriesImage:
    """Build the image of one series.

    Parameters
    ----------
    datasets
        The instances of one series (any order): several single-frame MR images, or one
        Enhanced MR multi-frame instance.
    description
        For error messages.

    Raises
    ------
    InconsistentGeometryError
        Slices not parallel, unevenly spaced or of different size / spacing.
    UnreadablePixelDataError, UnsupportedTransferSyntaxError
        Pixel data that cannot be decoded.
    """
    import highdicom as hd

    label = f"series '{description}'" if description else "series"
    if len(datasets) == 1 and int(datasets[0].get("NumberOfFrames", 1) or 1) > 1:
        ds = datasets[0]
        try:
            image = hd.Image.from_dataset(ds, copy=False)
            volume = _right_handed_in_sitk_order(image.get_volume(dtype=np.float32))
        except (ValueError, RuntimeError) as exc:
            if "pixel" in str(exc).lower() and "decode" in str(exc).lower():
                raise _decode_error(exc) from exc
            raise InconsistentGeometryError(f"{label}: frames do not form a regular volume ({exc})") from exc
        # Map every frame's position onto the volume's slice axis.
        n = volume.spatial_shape[0]
        frames = _frames_by_slice(ds, volume, n)
        return SeriesImage(_volume_to_sitk(volume.array, volume.affine), [ds] * n, frames)

    try:
        # Scanners write orientations with rounding noise: tolerate 1e-4 in direction
        # cosines and 1e-2 mm in slice spacing (what viewers accept as one volume).
        volume = hd.get_volume_from_series(
            list(datasets), dtype=np.float32, orientation_tol=1e-4, perpendicular_tol=1e-3, atol=1e-2
        )
        volume = _right_handed_in_sitk_order(volume)
    except (ValueError, RuntimeError, AttributeError, KeyError) as exc:
        message = str(exc)
        if "pixel" in message.lower() and ("decod" in message.lower() or "handler" in message.lower()):
            raise _decode_error(exc) from exc
        raise InconsistentGeometryError(f"{label}: slices do not form a regular volume ({message[:300]})") from exc
    except NotImplementedError as exc:
        raise _decode_error(exc) from exc
    # Slice k of the volume <- the dataset whose ImagePositionPatient maps to index k.
    inverse = np.linalg.inv(volume.affine)
    slice_of: dict[int, Any] = {}
    for ds in datasets:
        position = np.append(np.asarray(ds.ImagePositionPatient, dtype=float), 1.0)
        k = int(round((inverse @ position)[0]))
        slice_of[k] = ds
    n = volume.spatial_shape[0]
    if sorted(slice_of) != list(range(n)):
        raise InconsistentGeometryError(f"{label}: instances do not map one-to-one onto {n} slices")
    return SeriesImage(_volume_to_sitk(volume.array, volume.affine), [slice_of[k] for k in range(n)], [1] * n)


def _frames_by_slice(ds: Any, volume: Any, n: int) -> list[int]:
    inverse = np.linalg.inv(volume.affine)
    frames: dict[int, int] = {}
    for number, group in enumerate(ds.PerFrameFunctionalGroupsSequence, start=1):
        position = group.PlanePositionSequence[0].ImagePositionPatient
        k = int(round((inverse @ np.append(np.asarray(position, dtype=float), 1.0))[0]))
        frames.setdefault(k, number)
    return [frames.get(k, k + 1) for k in range(n)]
