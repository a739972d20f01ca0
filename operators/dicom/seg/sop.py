"""The DICOM Segmentation instance: a BraTS label map encoded as a BINARY SEG with highdicom,
its inherited text fitted to the VRs, and its atomic write.

Slice correspondence
====================
``labels[k]`` belongs to ``source_datasets[k]``. Always. :func:`build_segmentation` never
re-sorts anything: the label map must be aligned slice-for-slice (and row/column-for-
row/column) with the reference series *in the order the datasets are passed*. If the caller
sorted its volume along the slice normal (the usual way to build a volume), it must pass the
datasets in that same sorted order
(``highdicom.spatial.sort_datasets(datasets, index_convention="RD")``). The SEG itself references the
source instance of every frame by SOP Instance UID (Derivation Image / Source Image sequence
of each per-frame functional group), so a consumer never relies on frame order; highdicom
orders the frames spatially on its own.

Segment descriptions
====================
Each segment (:mod:`operators.dicom.seg.content`) has SegmentAlgorithmType AUTOMATIC, an
Algorithm Identification Sequence (name, version, family (123110, DCM, "Artificial
Intelligence")), its recommended display colour as CIELab, a Tracking ID and a Tracking UID,
and optionally a SegmentDescription (e.g. the expected accuracy with a sequence missing).

Empty result
============
If no voxel is labelled, the SEG is still written and valid: all segments are described and
every (slice, segment) frame is kept, all zero (``omit_empty_frames=False``; highdicom would
revert to that itself, with a warning, because a SEG without frames is not possible). More
generally, empty frames are only omitted when *every* segment has at least one voxel;
otherwise all frames are kept, so that no segment ends up without any frame (which several
viewers handle badly). The caller is expected to record "no tumour found" in its report;
:func:`build_segmentation` logs it at WARNING level.

Inherited text
==============
highdicom copies the patient and study attributes of the sources. Values that do not fit
their VR are repaired in the source copies (:mod:`operators.dicom.source_attributes`);
over-long text is shortened in the built SEG, keeping its leading part, because only there is
the SEG's character set known.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.uid import generate_uid

from engines.atomic_write import write_atomically
from operators.dicom.seg.content import (
    ALGORITHM_FAMILY,
    ANATOMIC_REGION,
    BRATS_LABEL_VALUES,
    BRATS_SEGMENTS,
    SEGMENT_CATEGORY,
    SegmentSpec,
    checked_lo,
    content_description_for,
    content_label_for,
    normalise_modalities,
)
from operators.dicom.seg.sources import check_single_frame_sources, harmonised_sources, multiframe_source
from operators.dicom.source_attributes import MAX_LENGTH, AttributeFix, fixes_text, sanitised_copy

logger = logging.getLogger(__name__)

__all__ = ["build_segmentation", "write_segmentation_atomically"]


def _uid(seed: str | None, role: str) -> str:
    """A new UID; reproducible from ``seed`` and ``role`` if a seed is given."""
    if seed is None:
        return str(hd.UID())
    return str(generate_uid(entropy_srcs=[seed, role]))


def build_segmentation(
    labels: np.ndarray,
    source_datasets: Sequence[pydicom.Dataset],
    *,
    used_modalities: Sequence[str],
    missing_modalities: Sequence[str],
    algorithm_name: str,
    algorithm_version: str,
    series_number: int = 901,
    series_description: str | None = None,
    manufacturer: str = "brats-seg-map",
    content_creator: str | None = None,
    device_serial_number: str = "0",
    uid_seed: str | None = None,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    omit_empty_frames: bool = True,
    source_frames: Sequence[int] | None = None,
    source_fixes: list[AttributeFix] | None = None,
    fills: str | None = None,
    segment_notes: dict[str, str] | None = None,
    segments: Sequence[SegmentSpec] = BRATS_SEGMENTS,
) -> hd.seg.Segmentation:
    """Encode a BraTS label map as a BINARY DICOM Segmentation referencing its source series.

    Parameters
    ----------
    labels : numpy.ndarray
        Integer label map, shape (n_slices, rows, cols), values in {0, 1, 2, 4}
        (0 background, 1 NCR/NET, 2 ED, 4 ET). **labels[k] belongs to source_datasets[k]**:
        row r / column c of ``labels[k]`` is pixel (r, c) of that instance. Nothing is
        re-sorted here.
    source_datasets : sequence of pydicom.Dataset
        The reference series: single-frame images (e.g. MR Image Storage) of one series, in
        the order of ``labels``' first axis. Pixel data need not be loaded. Patient, study
        and frame-of-reference attributes are copied from them by highdicom. Orientation
        jitter below 1e-4 between instances is tolerated (see
        :func:`operators.dicom.seg.sources.harmonised_sources`).
    used_modalities, missing_modalities : sequence of str
        Input sequences used / missing (e.g. ``["FLAIR", "T1", "T1ce", "T2"]`` and ``[]``);
        written into ContentDescription, ContentLabel and SeriesDescription.
    algorithm_name, algorithm_version : str
        Algorithm Identification Sequence name and version (family: Artificial Intelligence);
        also ManufacturerModelName and SoftwareVersions.
    series_number : int
        SeriesNumber of the new SEG series.
    series_description : str, optional
        SeriesDescription (LO); default ``"BraTS tumor SEG; used ...; missing ..."``.
    manufacturer : str
        Manufacturer of the SEG (the producing software's vendor).
    content_creator : str, optional
        ContentCreatorName (PN), e.g. ``"BraTS^SegMap"``; empty if None.
    device_serial_number : str
        DeviceSerialNumber (Type 1 in the Enhanced General Equipment module).
    uid_seed : str, optional
        If given, Series / SOP Instance / Tracking UIDs are derived from it deterministically
        (reproducible output). The seed must then be unique per run (e.g. source series UID +
        algorithm version + job id); otherwise two different SEGs could share UIDs. If None,
        fresh random UIDs are generated.
    series_instance_uid, sop_instance_uid : str, optional
        Explicit UIDs; override ``uid_seed`` for these two.
    omit_empty_frames : bool
        Omit all-zero (slice, segment) frames -- only honoured when every segment has at
        least one voxel; otherwise all frames are kept (see the module docstring).
    source_frames : sequence of int, optional
        Only for a **multi-frame** (Enhanced MR) source: ``source_datasets`` is then that one
        instance repeated once per slice, and ``source_frames[k]`` is the 1-based frame
        number of slice ``k`` inside it (one frame per slice, every frame used once). The
        SEG references the source's frames (highdicom: frames in the source's frame order).
    source_fixes : list, optional
        Receives the changes made to attribute values copied from the source that did not
        fit their VR (:mod:`operators.dicom.source_attributes`); they are also logged.
    fills : str, optional
        What the missing sequences were fed as (e.g. ``"synth/copy"``: WT stage / TC and EN
        stages); appended to ContentDescription as ``"; fill synth/copy"``.
    segment_notes : dict, optional
        Segment ``short`` name (``"ED"``, ``"TC"`` ...) -> SegmentDescription (LO, <= 64
        chars) of that segment, e.g. the expected Dice with the sequences found.
    segments : sequence of SegmentSpec
        The segments written (default: the three BraTS classes); label values outside every
        segment are left out of the SEG
        (:func:`operators.dicom.seg.content.segments_for_regions`: the regions the sequences
        support).

    Returns
    -------
    highdicom.seg.Segmentation
        The SEG dataset (not yet written), one segment per ``segments`` item.

    Raises
    ------
    ValueError
        On shape / series mismatch, unexpected label values, or over-long descriptions.
    """
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be an integer array; got {labels.dtype}")
    multiframe = multiframe_source(labels, source_datasets, source_frames)
    if multiframe is None:
        check_single_frame_sources(labels, source_datasets)
    present = set(np.unique(labels).tolist())
    if not present <= BRATS_LABEL_VALUES:
        raise ValueError(
            f"labels contain values {sorted(present - BRATS_LABEL_VALUES)}; "
            f"expected BraTS labels {sorted(BRATS_LABEL_VALUES)}"
        )

    used = normalise_modalities(used_modalities, "used")
    missing = normalise_modalities(missing_modalities, "missing")
    if not used:
        raise ValueError("at least one modality must have been used")
    if set(used) & set(missing):
        raise ValueError(f"modalities both used and missing: {sorted(set(used) & set(missing))}")
    content_description = content_description_for(used, missing, fills)
    content_label = content_label_for(missing)
    if series_description is None:
        series_description = (
            f"BraTS tumor SEG; used {','.join(used)}; missing {','.join(missing) or 'none'}"
        )
    checked_lo(series_description, "series_description")
    checked_lo(algorithm_name, "algorithm_name")
    checked_lo(algorithm_version, "algorithm_version")

    # One binary channel per segment: (n_slices, rows, cols, n_segments).
    masks = np.stack([np.isin(labels, s.brats_labels) for s in segments], axis=-1)
    if multiframe is not None:  # highdicom wants the source's frame order
        source, frame_order = multiframe
        masks = masks[frame_order]
    voxels = masks.reshape(-1, masks.shape[-1]).sum(axis=0)
    if not voxels.any():
        logger.warning("empty segmentation: no voxel labelled; writing a SEG with empty frames")
    keep_all = (not omit_empty_frames) or bool((voxels == 0).any())

    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name, family=ALGORITHM_FAMILY, version=algorithm_version
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=s.segment_number,
            segment_label=s.label,
            segmented_property_category=SEGMENT_CATEGORY,
            segmented_property_type=s.property_type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_id=s.tracking_id,
            tracking_uid=_uid(uid_seed, f"tracking-{s.segment_number}"),
            anatomic_regions=[ANATOMIC_REGION],
            display_color=hd.color.CIELabColor.from_rgb(*s.rgb),
        )
        for s in segments
    ]
    for s, item in zip(segments, descriptions):
        note = (segment_notes or {}).get(s.short)
        if note:
            item.SegmentDescription = checked_lo(note, f"segment {s.short} description")

    fixes: list[AttributeFix] = []
    if multiframe is not None:
        clean_source, fixes = sanitised_copy(source)
        sources = [clean_source]
    else:
        sources = harmonised_sources(source_datasets, fixes=fixes)
    for line in fixes_text(fixes):
        logger.warning("SEG: source attribute %s", line)
    if source_fixes is not None:
        source_fixes.extend(fixes)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=masks,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_instance_uid or _uid(uid_seed, "series"),
        series_number=int(series_number),
        sop_instance_uid=sop_instance_uid or _uid(uid_seed, "sop"),
        instance_number=1,
        manufacturer=manufacturer,
        manufacturer_model_name=algorithm_name,
        software_versions=algorithm_version,
        device_serial_number=device_serial_number,
        content_description=content_description,
        content_label=content_label,
        content_creator_name=content_creator,
        omit_empty_frames=not keep_all,
        series_description=series_description,
    )
    _clip_inherited_text(seg)
    logger.info(
        "built SEG %s: %d frames, voxels per segment %s, %s",
        seg.SOPInstanceUID, int(seg.NumberOfFrames),
        {s.short: int(v) for s, v in zip(segments, voxels)}, content_description,
    )
    return seg


#: Maximum value lengths of the text VRs clipped here (PS3.5 table 6.2-1; PN: per component group).
_VR_MAX_LENGTH = {vr: MAX_LENGTH[vr] for vr in ("AE", "CS", "LO", "SH", "PN", "ST", "LT")}


def _clip_inherited_text(seg: pydicom.Dataset) -> None:
    """Shorten text values that exceed their VR's maximum length (in bytes of the dataset's
    character set, never splitting a character).

    highdicom copies patient / study attributes from the source images; scanners and PACS
    do write over-long values (e.g. a StudyDescription of more than LO's 64 bytes), which
    would make the SEG invalid. The SEG keeps the leading part; the source is not modified.
    """
    charsets = seg.get("SpecificCharacterSet", "") or ""
    charsets = [charsets] if isinstance(charsets, str) else list(charsets)
    codec = "utf-8" if any("192" in c for c in charsets) or len(charsets) > 1 else "latin-1"

    def fit(text: str, limit: int) -> str:
        while len(text.encode(codec, errors="replace")) > limit:
            text = text[:-1]
        return text

    clipped: list[str] = []

    def visit(ds: pydicom.Dataset, elem: pydicom.DataElement) -> None:
        limit = _VR_MAX_LENGTH.get(elem.VR)
        if limit is None or elem.value is None or elem.value == "":
            return
        values = list(elem.value) if isinstance(elem.value, pydicom.multival.MultiValue) else [elem.value]
        new = []
        for value in values:
            text = str(value)
            if elem.VR == "PN":
                short = "=".join(fit(group, limit) for group in text.split("="))
            else:
                short = fit(text, limit)
            new.append(short)
        if new != [str(v) for v in values]:
            clipped.append(elem.keyword or str(elem.tag))
            elem.value = new if len(new) > 1 else new[0]

    seg.walk(visit, recursive=True)
    if clipped:
        logger.warning("SEG: shortened over-long text copied from the source: %s", ", ".join(clipped))


def write_segmentation_atomically(seg: pydicom.Dataset, out_dir: str | Path,
                                  filename: str) -> Path:
    """Write ``seg`` to ``out_dir/filename`` so that readers never see a partial file.

    The dataset is written to a temporary file in ``out_dir`` (same file system), flushed
    and fsync'ed, then moved into place with :func:`os.replace`
    (:func:`engines.atomic_write.write_atomically`). On failure the temporary file is removed
    and nothing is left at the final path.

    Parameters
    ----------
    seg : pydicom.Dataset
        The SEG (or any dataset with file meta information).
    out_dir : str or Path
        Destination folder; created if missing.
    filename : str
        Final file name (no path separators).

    Returns
    -------
    Path
        The final path.

    Raises
    ------
    ValueError
        ``filename`` is not a plain file name.
    """
    if os.sep in filename or (os.altsep and os.altsep in filename) or filename in ("", ".", ".."):
        raise ValueError(f"filename must be a plain file name, got {filename!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return write_atomically(out / filename, lambda fh: seg.save_as(fh, enforce_file_format=True))
