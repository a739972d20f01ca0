"""The source images a SEG is derived from: their order, the checks that they form one
volume matching the label map, and the metadata-only copies handed to highdicom.

Contract: slice ``k`` of the label map belongs to ``source_datasets[k]`` (row r / column c of
the slice is pixel (r, c) of that instance); nothing here re-sorts the sources for the
builder (callers that build the volume themselves sort single-frame images with
``highdicom.spatial.sort_datasets(datasets, index_convention="RD")``: ascending along the slice
normal, the order of a volume stacked from their pixel arrays).

highdicom needs only the sources' metadata, and demands of it more than scanners deliver:
exactly equal ImageOrientationPatient in every instance, pixel measures and plane orientation
in the shared functional groups of a multi-frame image, and attribute values that fit their
VR. The copies made here (:func:`harmonised_sources`, :func:`multiframe_source`) give it that
where the sources agree within tolerance, and refuse sources that genuinely do not form one
volume. The caller's datasets are never modified and SOP Instance UIDs are kept, so the SEG's
references stay exact.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import pydicom

from operators.dicom.source_attributes import PIXEL_DATA_TAGS, AttributeFix, sanitised_copy

__all__ = ["check_single_frame_sources", "harmonised_sources", "multiframe_source"]

def check_single_frame_sources(labels: np.ndarray, source_datasets: Sequence[pydicom.Dataset]) -> None:
    """Check that single-frame sources match the label map slice for slice.

    Parameters
    ----------
    labels : numpy.ndarray
        Label map, shape (n_slices, rows, cols).
    source_datasets : sequence of pydicom.Dataset
        One single-frame instance per slice of ``labels``, in its order.

    Raises
    ------
    ValueError
        ``labels`` not 3-D; a different number of sources and slices; sources of several
        series, or a SOP Instance UID twice; a multi-frame source; a source whose Rows x
        Columns differ from the slices'.
    """
    if labels.ndim != 3:
        raise ValueError(f"labels must be 3-D (n_slices, rows, cols); got shape {labels.shape}")
    if len(source_datasets) != labels.shape[0]:
        raise ValueError(
            f"labels has {labels.shape[0]} slices but {len(source_datasets)} source datasets "
            "were given; labels[k] must belong to source_datasets[k]"
        )
    series = {str(ds.SeriesInstanceUID) for ds in source_datasets}
    if len(series) != 1:
        raise ValueError(f"source datasets span {len(series)} series; pass one series")
    sops = [str(ds.SOPInstanceUID) for ds in source_datasets]
    if len(set(sops)) != len(sops):
        raise ValueError("source datasets contain duplicate SOP Instance UIDs")
    for k, ds in enumerate(source_datasets):
        if int(getattr(ds, "NumberOfFrames", 1) or 1) != 1:
            raise ValueError(f"source_datasets[{k}] is multi-frame; pass single-frame images")
        if (int(ds.Rows), int(ds.Columns)) != labels.shape[1:]:
            raise ValueError(
                f"source_datasets[{k}] is {ds.Rows}x{ds.Columns} but labels slices are "
                f"{labels.shape[1]}x{labels.shape[2]} (rows x cols)"
            )


def multiframe_source(
    labels: np.ndarray, source_datasets: Sequence[pydicom.Dataset], source_frames: Sequence[int] | None
) -> tuple[pydicom.Dataset, np.ndarray] | None:
    """The metadata copy of a multi-frame source and the slice of each of its frames.

    Parameters
    ----------
    labels : numpy.ndarray
        Label map, shape (n_slices, rows, cols).
    source_datasets : sequence of pydicom.Dataset
        For a multi-frame source: that one instance, repeated once per slice of ``labels``.
    source_frames : sequence of int, optional
        ``source_frames[k]``: the 1-based frame number of slice ``k`` in the source.

    Returns
    -------
    tuple (pydicom.Dataset, numpy.ndarray) or None
        None for single-frame sources. Otherwise the source without its pixel data, pixel
        measures and plane orientation moved into a new shared functional group item where
        the scanner wrote them per frame and they agree across frames; and the slice index of
        each frame in frame order, shape (n_frames,) (``labels[order]`` is in the source's
        frame order, which highdicom expects).

    Raises
    ------
    ValueError
        ``source_frames`` given for single-frame sources; several instances; frames that do
        not map one-to-one onto the slices (e.g. multi-echo); Rows x Columns differing from the
        slices'; pixel measures or plane orientation differing between frames.
    """
    if not source_datasets or int(getattr(source_datasets[0], "NumberOfFrames", 1) or 1) == 1:
        if source_frames is not None and any(int(f) != 1 for f in source_frames):
            raise ValueError("source_frames given for single-frame sources")
        return None
    if labels.ndim != 3:
        raise ValueError(f"labels must be 3-D (n_slices, rows, cols); got shape {labels.shape}")
    ds = source_datasets[0]
    if any(other is not ds and str(other.SOPInstanceUID) != str(ds.SOPInstanceUID) for other in source_datasets):
        raise ValueError("a multi-frame source must be one instance (repeated once per slice)")
    n_frames = int(ds.NumberOfFrames)
    if source_frames is None or len(source_frames) != labels.shape[0] or len(source_datasets) != labels.shape[0]:
        raise ValueError("a multi-frame source needs source_frames: one frame number per labels slice")
    frames = [int(f) for f in source_frames]
    if sorted(frames) != list(range(1, n_frames + 1)):
        raise ValueError(
            f"the {n_frames} frames of the source do not map one-to-one onto the {labels.shape[0]} slices "
            "(several frames per position, e.g. multi-echo, are not supported)"
        )
    if (int(ds.Rows), int(ds.Columns)) != labels.shape[1:]:
        raise ValueError(f"source is {ds.Rows}x{ds.Columns} but labels slices are {labels.shape[1:]}")
    order = np.empty(n_frames, dtype=np.intp)
    for k, f in enumerate(frames):
        order[f - 1] = k
    meta = pydicom.Dataset({tag: elem for tag, elem in ds.items() if tag not in PIXEL_DATA_TAGS})
    if hasattr(ds, "file_meta"):
        meta.file_meta = ds.file_meta
    # highdicom reads pixel measures and plane orientation from the *shared* functional
    # groups; scanners (e.g. Siemens XA) may put them per frame. Where they agree across
    # frames, the metadata copy gets them in a new shared item (the caller's dataset is
    # not modified).
    shared = copy.deepcopy(ds.SharedFunctionalGroupsSequence[0]) if "SharedFunctionalGroupsSequence" in ds \
        else pydicom.Dataset()
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    for keyword in ("PixelMeasuresSequence", "PlaneOrientationSequence"):
        if keyword in shared or not per_frame or keyword not in per_frame[0]:
            continue
        first = per_frame[0][keyword][0]
        for group in per_frame:
            item = group[keyword][0] if keyword in group else None
            if item is None or not _same_values(item, first):
                raise ValueError(f"{keyword} differs between frames of the source; not one volume")
        shared[keyword] = copy.deepcopy(per_frame[0][keyword])
    meta.SharedFunctionalGroupsSequence = pydicom.Sequence([shared])
    return meta, order


def _same_values(a: pydicom.Dataset, b: pydicom.Dataset, atol: float = 1e-4) -> bool:
    """Whether two functional group items agree on spacing, thickness and orientation."""
    for keyword in ("PixelSpacing", "SliceThickness", "ImageOrientationPatient"):
        va, vb = a.get(keyword), b.get(keyword)
        if (va is None) != (vb is None):
            return False
        if va is not None and not np.allclose(np.asarray(va, dtype=float), np.asarray(vb, dtype=float), atol=atol):
            return False
    return True


def harmonised_sources(
    source_datasets: Sequence[pydicom.Dataset], atol: float = 1e-4,
    fixes: list[AttributeFix] | None = None,
) -> list[pydicom.Dataset]:
    """Metadata-only copies of the sources sharing one ImageOrientationPatient.

    Real scanners write ImageOrientationPatient with float jitter between instances of one
    series, while highdicom demands *exactly* equal values ("Source images must have a shared
    orientation"). If all orientations agree within ``atol``, the copies carry the first
    instance's value; the caller's datasets are not modified and PixelData is left out
    (highdicom needs only the metadata; SOP Instance UIDs are untouched, so references stay
    exact). A genuinely different orientation is still an error. Attribute values that do
    not fit their VR are repaired, emptied or dropped in the copies
    (:func:`operators.dicom.source_attributes.sanitised_copy`).

    Parameters
    ----------
    source_datasets : sequence of pydicom.Dataset
        Single-frame instances of one series.
    atol : float
        Largest tolerated difference of a direction cosine from the first instance's.
    fixes : list of AttributeFix, optional
        Receives the first instance's attribute fixes.

    Returns
    -------
    list of pydicom.Dataset
        One copy per source, in the same order.

    Raises
    ------
    ValueError
        An orientation differing from the first instance's by more than ``atol``.
    """
    first = source_datasets[0]
    iop0 = np.asarray(first.ImageOrientationPatient, dtype=float)
    out: list[pydicom.Dataset] = []
    for k, ds in enumerate(source_datasets):
        iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
        if not np.allclose(iop, iop0, atol=atol, rtol=0.0):
            raise ValueError(
                f"source_datasets[{k}] orientation differs from source_datasets[0] by "
                f"{np.max(np.abs(iop - iop0)):.2g} (> {atol}); not one volume"
            )
        # A new dataset sharing the element objects: never assign to an existing element of
        # `meta` (pydicom would mutate the shared element, i.e. the caller's dataset);
        # delete it first so that a new element is created.
        meta, ds_fixes = sanitised_copy(ds)
        if fixes is not None and k == 0:
            fixes.extend(ds_fixes)
        del meta.ImageOrientationPatient
        meta.ImageOrientationPatient = [str(v) for v in first.ImageOrientationPatient]
        out.append(meta)
    return out
