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

Cost: highdicom answers "does the IOD of this SOP class hold attribute X" by scanning the
standard's module tables on every call, and asks it twice per instance while building a
volume; :func:`memoise_highdicom_iod_lookup` caches those answers (they depend only on the
arguments and highdicom's fixed tables), so the volume, its checks and its errors stay
highdicom's own.
"""
from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import SimpleITK as sitk

from operators.errors import (
    DegenerateIntensityError,
    InconsistentGeometryError,
    UnreadablePixelDataError,
    UnsupportedTransferSyntaxError,
)

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


_IOD_LOOKUP_LOCK = threading.Lock()


def _memoised_iod_lookup(lookup: Callable[..., bool]) -> Callable[..., bool]:
    """``lookup`` (highdicom's ``is_attribute_in_iod``) answering repeated questions from a cache.

    Calls that raise (an unknown SOP class: ``KeyError``) are not cached and raise again.
    """

    @functools.lru_cache(maxsize=None)
    def cached(attribute: str, sop_class_uid: str, exclude: tuple[str, ...] | None) -> bool:
        return bool(lookup(attribute, sop_class_uid, None if exclude is None else list(exclude)))

    @functools.wraps(lookup)
    def is_attribute_in_iod(attribute: str, sop_class_uid: str,
                            exclude_path_elements: Sequence[str] | None = None) -> bool:
        exclude = None if exclude_path_elements is None else tuple(exclude_path_elements)
        return cached(str(attribute), str(sop_class_uid), exclude)

    is_attribute_in_iod.memoised = True  # type: ignore[attr-defined]
    is_attribute_in_iod.cache_info = cached.cache_info  # type: ignore[attr-defined]
    return is_attribute_in_iod


def memoise_highdicom_iod_lookup() -> bool:
    """Cache highdicom's IOD attribute lookup for this process (idempotent, thread-safe).

    ``highdicom._standard_utils.is_attribute_in_iod(attribute, sop_class_uid,
    exclude_path_elements)`` walks every attribute of every module of the SOP class's IOD
    (tables shipped with highdicom) on each call; ``get_volume_from_series`` calls it through
    ``does_iod_have_pixel_data`` (each frame's pixel transform) and ``is_multiframe_image``
    (each instance's volume position), i.e. a few times per instance. The answer depends
    only on the arguments and those fixed tables, so the module function is replaced by a
    cached wrapper with the same signature and results; ``does_iod_have_pixel_data`` and
    ``is_multiframe_image`` look it up in that module at call time and so use the cache.

    Returns
    -------
    bool
        True when the cached lookup is installed (now or before); False when this highdicom
        has no such function (nothing changed: volumes are still built, only slower).
    """
    try:
        from highdicom import _standard_utils as standard
    except ImportError:
        return False
    with _IOD_LOOKUP_LOCK:
        lookup = getattr(standard, "is_attribute_in_iod", None)
        if lookup is None:
            return False
        if not getattr(lookup, "memoised", False):
            standard.is_attribute_in_iod = _memoised_iod_lookup(lookup)
    return True


def _volume_to_sitk(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """(slice, row, column) array + highdicom affine -> float32 SimpleITK image (LPS).

    Parameters
    ----------
    array
        Shape ``(S, R, C)`` = (slice, row, column), any real dtype (highdicom gives float32);
        may be a view with a negative slice stride (after a handedness flip).
    affine
        ``(4, 4)`` highdicom affine mapping ``(slice, row, column, 1)`` to LPS mm.

    Returns
    -------
    sitk.Image
        Size ``(C, R, S)``; ``GetArrayFromImage`` gives ``array`` as float32 ``(S, R, C)``.
        The pixels are copied once, into the image (float32 C-contiguous input is not
        copied beforehand).
    """
    image = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32))
    columns = affine[:3, :3]
    spacing = np.linalg.norm(columns, axis=0)  # per array axis: slice, row, column
    unit = columns / spacing
    # SimpleITK index axes are (column, row, slice): reverse the array axes.
    direction = np.stack([unit[:, 2], unit[:, 1], unit[:, 0]], axis=1)
    image.SetSpacing([float(spacing[2]), float(spacing[1]), float(spacing[0])])
    image.SetDirection(direction.flatten().tolist())
    image.SetOrigin([float(v) for v in affine[:3, 3]])
    return image


MAX_ABS_INTENSITY = 1.0e9
"""Larger stored (rescaled) values are not MR intensities; z-scoring them in float32 would
overflow (the cascade normalises in float32), so such a series is refused."""


def _decoder_available(syntax: Any) -> bool:
    """Whether pydicom has a working decoder (plugin installed) for ``syntax``."""
    if syntax is None or not getattr(syntax, "is_compressed", False):
        return True  # native pixel data needs no codec
    try:
        from pydicom.pixels import get_decoder

        return bool(get_decoder(syntax).is_available)
    except (NotImplementedError, ValueError):
        return False


def _decode_error(exc: Exception, where: str = "", syntax: Any = None) -> Exception:
    text = " ".join(str(exc).split())
    prefix = f"{where}: " if where else ""
    if isinstance(exc, NotImplementedError) or not _decoder_available(syntax):
        return UnsupportedTransferSyntaxError(f"{prefix}no decoder for this transfer syntax ({text[:200]})")
    return UnreadablePixelDataError(f"{prefix}pixel data cannot be decoded: {type(exc).__name__}: {text[:200]}")


def _instance_name(ds: Any) -> str:
    number = ds.get("InstanceNumber", None)
    return f"instance {number}" if number not in (None, "") else f"SOP instance {ds.get('SOPInstanceUID', '?')}"


def _raise_if_undecodable(datasets: Sequence[Any], label: str) -> None:
    """Decode every instance's pixel data; raise the typed error of the first that fails.

    Called only when building the volume failed, to tell a decoding problem (codec missing,
    corrupt compressed stream) from a geometry problem.
    """
    for ds in datasets:
        try:
            ds.pixel_array  # noqa: B018 - decoding is the check
        except Exception as exc:  # noqa: BLE001 - any decoder failure is unreadable input
            syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            where = f"{label}, {_instance_name(ds)}" + (f" ({syntax.name})" if syntax is not None else "")
            raise _decode_error(exc, where, syntax) from exc


def check_intensities(array: np.ndarray, label: str) -> None:
    """Refuse intensities the normalisation cannot handle (see :class:`DegenerateIntensityError`).

    The cascade z-scores each channel over its voxels > 0; so there must be such voxels,
    with a spread, all finite and of plausible magnitude.
    """
    if not np.all(np.isfinite(array)):
        raise DegenerateIntensityError(f"{label}: pixel values are not finite (NaN / infinity after rescale)")
    peak = float(np.max(np.abs(array))) if array.size else 0.0
    if peak > MAX_ABS_INTENSITY:
        raise DegenerateIntensityError(
            f"{label}: pixel values up to {peak:.3g} (> {MAX_ABS_INTENSITY:.0e}) are not plausible MR intensities"
        )
    foreground = array[array > 0]
    if foreground.size == 0:
        raise DegenerateIntensityError(f"{label}: no pixel value above 0 (blank image)")
    if float(foreground.max()) == float(foreground.min()):
        raise DegenerateIntensityError(
            f"{label}: constant intensity {float(foreground.max()):g} (no image contrast to normalise)"
        )


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
        Slices not parallel, unevenly spaced (a missing slice) or of different size /
        spacing, or two instances at one position. Such a series is refused, never
        interpolated or re-sampled into a volume.
    UnreadablePixelDataError, UnsupportedTransferSyntaxError
        Pixel data that cannot be decoded (corrupt stream, or no codec for its transfer
        syntax; JPEG 2000, JPEG-LS, JPEG lossless and RLE are decoded via pylibjpeg).
    DegenerateIntensityError
        Constant, blank, non-finite or implausibly large intensities.
    """
    import highdicom as hd

    memoise_highdicom_iod_lookup()
    label = f"series '{description}'" if description else "series"
    if len(datasets) == 1 and int(datasets[0].get("NumberOfFrames", 1) or 1) > 1:
        ds = datasets[0]
        try:
            image = hd.Image.from_dataset(ds, copy=False)
            volume = _right_handed_in_sitk_order(image.get_volume(dtype=np.float32))
        except Exception as exc:  # noqa: BLE001 - classified below
            _raise_if_undecodable(datasets, label)
            if not isinstance(exc, (ValueError, RuntimeError, AttributeError, KeyError)):
                raise
            raise InconsistentGeometryError(f"{label}: frames do not form a regular volume ({exc})") from exc
        check_intensities(volume.array, label)
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
    except Exception as exc:  # noqa: BLE001 - classified below
        _raise_if_undecodable(datasets, label)  # a decoding problem wins over geometry
        if not isinstance(exc, (ValueError, RuntimeError, AttributeError, KeyError)):
            raise
        message = " ".join(str(exc).split())
        raise InconsistentGeometryError(f"{label}: slices do not form a regular volume ({message[:300]})") from exc
    check_intensities(volume.array, label)
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
