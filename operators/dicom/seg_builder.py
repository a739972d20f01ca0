"""Build a DICOM Segmentation (DICOM-SEG) from a BraTS label map.

Pure logic (no Holoscan): the MONAI Deploy operator wraps these functions.

Slice correspondence -- READ THIS
=================================
``labels[k]`` belongs to ``source_datasets[k]``. Always. :func:`build_segmentation` never
re-sorts anything: the label map must be aligned slice-for-slice (and row/column-for-
row/column) with the reference series *in the order the datasets are passed*. If the caller
sorted its volume along the slice normal (the usual way to build a volume), it must pass the
datasets in that same sorted order -- :func:`sort_datasets_along_normal` is provided so that
the loader and this builder use one and the same ordering. The SEG itself references the
source instance of every frame by SOP Instance UID (Derivation Image / Source Image sequence
of each per-frame functional group), so a consumer never relies on frame order; highdicom
orders the frames spatially on its own.

Segments and coded concepts
===========================
BraTS labels three *disjoint* tumour sub-regions. Each becomes one segment, so that a PACS
shows them side by side without overlap (BINARY segmentation, no overlap between segments):

=======  =====  ==========================================  ====================================
Segment  BraTS  Segmented Property Type                      Why
=======  =====  ==========================================  ====================================
1        1      (6574001, SCT, "Necrosis")                   NCR/NET: necrotic and non-enhancing
                                                             tumour core. DICOM CID 7168 "Brain
                                                             Lesion Segmentation Type With
                                                             Necrosis" has Necrosis for this.
2        2      (79654002, SCT, "Edema")                     Peritumoural edema (ED); CID 7169
                                                             uses the generic Edema concept.
3        4      (C113842, NCIt, "Enhancing Lesion")          Enhancing tumour (ET). SNOMED CT has
                                                             no "enhancing lesion/tumour" concept;
                                                             DICOM's own brain-lesion context
                                                             groups (CID 7169, included in 7168)
                                                             use this NCIt code, and
                                                             ``pydicom.sr.codedict.codes`` has it
                                                             (``codes.NCIt.EnhancingLesion``).
=======  =====  ==========================================  ====================================

All three share the category (49755003, SCT, "Morphologically Abnormal Structure") -- the
concept formerly named "Morphologically Altered Structure" (CID 7150) -- and the anatomic
region (12738006, SCT, "Brain"). Note that segment number 3 carries BraTS label **4**;
:data:`BRATS_SEGMENTS` is the single source of truth for that mapping.

The BraTS evaluation regions are unions of segments, not segments themselves (they overlap,
which a viewer would show as stacked colours):

* whole tumour  WT = {1, 2, 4} = segments 1 + 2 + 3
* tumour core   TC = {1, 4}    = segments 1 + 3
* enhancing     ET = {4}       = segment 3

Regions the sequences support
=============================
With a sequence missing, a region whose expected accuracy is below the app's bar is not
written (:func:`segments_for_regions`): the SEG holds the written regions' classes only, and a
written region whose classes cannot be told apart (its inner region is not written) becomes one
segment: the tumour core whole (1 + 4, (108369006, SCT, "Neoplasm")) when ET is not written,
the whole tumour (1 + 2 + 4, (52988006, SCT, "Lesion")) alone, non-enhancing tumour and edema
(1 + 2, Lesion) beside ET. Segments stay disjoint and numbered from 1.

Every segment has SegmentAlgorithmType AUTOMATIC, an Algorithm Identification Sequence (name,
version, family (123110, DCM, "Artificial Intelligence")), a distinct recommended display
colour (CIELab, converted from the RGB used in the QA overlay: NCR red, ED green, ET yellow,
as is customary for BraTS) and a Tracking ID / Tracking UID.

Empty result
============
If no voxel is labelled, the SEG is still written and valid: all three segments are described
and every (slice, segment) frame is kept, all zero (``omit_empty_frames=False``; highdicom
would revert to that itself, with a warning, because a SEG without frames is not possible).
More generally, empty frames are only omitted when *every* segment has at least one voxel;
otherwise all frames are kept, so that no segment ends up without any frame (which several
viewers handle badly). The caller is expected to record "no tumour found" in its report;
:func:`build_segmentation` logs it at WARNING level.

Descriptive attributes
======================
* ContentDescription (LO, <= 64 chars), e.g. ``"Tumor seg; used FLAIR,T1,T1ce,T2; missing
  none"``;
* ContentLabel (CS, <= 16 chars, ``[A-Z0-9_ ]``), e.g. ``"SEG_ALL_INPUTS"`` or
  ``"SEG_NO_T1C"`` / ``"SEG_NO_FL_T1C"`` naming the missing sequences
  (FLAIR -> FL, T1 -> T1, T1ce -> T1C, T2 -> T2);
* SeriesDescription (LO), e.g. ``"BraTS tumor SEG; used FLAIR,T1,T1ce,T2; missing none"``.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from engines.atomic_write import write_atomically
from engines.model.modalities import CHANNEL_NAMES
from operators.dicom.source_attributes import MAX_LENGTH, AttributeFix, fixes_text, sanitised_copy

logger = logging.getLogger(__name__)

__all__ = [
    "BRATS_SEGMENTS",
    "KNOWN_MODALITIES",
    "SegmentSpec",
    "REGION_LABELS",
    "build_segmentation",
    "content_description_for",
    "content_label_for",
    "segments_for_regions",
    "sort_datasets_along_normal",
    "write_segmentation_atomically",
]


@dataclass(frozen=True)
class SegmentSpec:
    """One SEG segment: which BraTS labels it encodes and how it is described.

    Attributes
    ----------
    segment_number : int
        SegmentNumber in the SEG (1-based, consecutive).
    brats_labels : tuple of int
        Label values of the BraTS label map the segment holds (one class, e.g. ``(2,)``, or a
        region whose classes are not written apart, e.g. ``(1, 4)``: the tumour core).
    label : str
        SegmentLabel (LO), shown by viewers.
    short : str
        Abbreviation used in BraTS papers (NCR/NET, ED, ET; TC, WT for a region written whole)
        and in the overlay legend.
    property_type : Code
        Segmented Property Type code.
    rgb : tuple of int
        Display colour (sRGB, 0..255); stored in the SEG as CIELab.
    tracking_id : str
        Tracking ID (stable, human-readable, per segment kind).
    """

    segment_number: int
    brats_labels: tuple[int, ...]
    label: str
    short: str
    property_type: Code
    rgb: tuple[int, int, int]
    tracking_id: str

    @property
    def brats_label(self) -> int:
        """The BraTS label of a one-class segment (the first of :attr:`brats_labels`)."""
        return self.brats_labels[0]


#: Segmented Property Category of all segments (CID 7150).
SEGMENT_CATEGORY: Code = codes.SCT.MorphologicallyAbnormalStructure
#: Anatomic region of all segments.
ANATOMIC_REGION: Code = codes.SCT.Brain
#: Algorithm family of the producing algorithm (CID 7162).
ALGORITHM_FAMILY: Code = codes.DCM.ArtificialIntelligence

#: The three disjoint BraTS classes, in segment-number order. Single source of truth.
BRATS_SEGMENTS: tuple[SegmentSpec, ...] = (
    SegmentSpec(1, (1,), "Necrotic / non-enhancing tumor core", "NCR/NET", codes.SCT.Necrosis,
                (230, 25, 45), "BraTS NCR/NET"),
    SegmentSpec(2, (2,), "Peritumoral edema", "ED", codes.SCT.Edema,
                (40, 200, 60), "BraTS ED"),
    SegmentSpec(3, (4,), "Enhancing tumor", "ET", codes.NCIt.EnhancingLesion,
                (255, 220, 0), "BraTS ET"),
)

#: The BraTS labels of each evaluation region.
REGION_LABELS: dict[str, frozenset[int]] = {"WT": frozenset({1, 2, 4}), "TC": frozenset({1, 4}), "ET": frozenset({4})}

#: Segments for the label sets that are not one BraTS class (a region written whole because a
#: region inside it is not written): segment number 0 here, numbered when chosen.
_MERGED_SEGMENTS: dict[frozenset[int], SegmentSpec] = {
    frozenset({1, 4}): SegmentSpec(0, (1, 4), "Tumor core (enhancing not separated)", "TC", codes.SCT.Neoplasm,
                                   (230, 25, 45), "BraTS TC"),
    frozenset({1, 2, 4}): SegmentSpec(0, (1, 2, 4), "Whole tumor (core and edema not separated)", "WT",
                                      codes.SCT.Lesion, (40, 200, 60), "BraTS WT"),
    frozenset({1, 2}): SegmentSpec(0, (1, 2), "Non-enhancing tumor and edema", "NET+ED", codes.SCT.Lesion,
                                   (40, 200, 60), "BraTS NET+ED"),
}  # fmt: skip


def segments_for_regions(regions: Sequence[str]) -> tuple[SegmentSpec, ...]:
    """The segments of a SEG that holds ``regions`` (a subset of WT, TC, ET) and nothing else.

    The regions are nested (WT contains TC contains ET); each written region's part that lies
    outside the next written region inside it becomes one segment, so the segments stay
    disjoint and every written region is a union of segments: all three regions -> the three
    BraTS classes (:data:`BRATS_SEGMENTS`); TC + ET -> NCR/NET, ET (edema not written); WT + TC
    -> ED, TC whole; WT alone -> WT whole; ET alone -> ET.

    Raises
    ------
    ValueError
        No region, or a name that is not a region.
    """
    unknown = set(regions) - set(REGION_LABELS)
    if unknown or not regions:
        raise ValueError(f"regions must be a non-empty subset of {sorted(REGION_LABELS)}, got {list(regions)}")
    nested = [r for r in ("WT", "TC", "ET") if r in regions]  # outermost first
    by_labels = {frozenset(s.brats_labels): s for s in BRATS_SEGMENTS} | _MERGED_SEGMENTS
    out = []
    for outer, inner in zip(nested, [*nested[1:], None]):
        part = REGION_LABELS[outer] - (REGION_LABELS[inner] if inner else frozenset())
        out.append(by_labels[frozenset(part)])
    ordered = sorted(out, key=lambda s: s.brats_labels)  # by BraTS label: all three = BRATS_SEGMENTS
    return tuple(dataclasses.replace(s, segment_number=i) for i, s in enumerate(ordered, start=1))


#: Input sequences of the BraTS model, in canonical order, with ContentLabel abbreviations.
KNOWN_MODALITIES: dict[str, str] = dict(zip(CHANNEL_NAMES, ("FL", "T1", "T1C", "T2")))

_VALID_LABELS = frozenset(s.brats_label for s in BRATS_SEGMENTS) | {0}
_LO_MAX = 64
_CS_MAX = 16


# ----------------------------------------------------------------------------------------
# Ordering of the source series
# ----------------------------------------------------------------------------------------
def sort_datasets_along_normal(datasets: Sequence[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """Sort single-frame images by their position along the slice normal (ascending).

    Parameters
    ----------
    datasets : sequence of pydicom.Dataset
        Single-frame instances of one series, sharing ImageOrientationPatient.

    Returns
    -------
    list of pydicom.Dataset
        The datasets ordered by ``dot(ImagePositionPatient, row_cosine x column_cosine)``.
        A volume built by stacking their pixel arrays in this order has axes (Z, Y, X) =
        (slice, row, column), and its label map can be passed to :func:`build_segmentation`
        together with this list.

    Raises
    ------
    ValueError
        If orientations differ between instances or two instances share a position.
    """
    if not datasets:
        raise ValueError("no datasets to sort")
    iop = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
    for ds in datasets[1:]:
        if not np.allclose(np.asarray(ds.ImageOrientationPatient, dtype=float), iop, atol=1e-4):
            raise ValueError(
                f"instance {ds.SOPInstanceUID} has a different ImageOrientationPatient; "
                "a single volume cannot be built"
            )
    normal = np.cross(iop[:3], iop[3:])
    keyed = [(float(np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=float))), ds)
             for ds in datasets]
    keyed.sort(key=lambda t: t[0])
    positions = np.array([k for k, _ in keyed])
    if len(positions) > 1 and np.min(np.diff(positions)) < 1e-3:
        raise ValueError("two instances share the same position along the slice normal")
    return [ds for _, ds in keyed]


# ----------------------------------------------------------------------------------------
# Descriptive strings
# ----------------------------------------------------------------------------------------
def _normalise_modalities(names: Sequence[str], what: str) -> list[str]:
    out: list[str] = []
    spelling = {k.upper(): k for k in KNOWN_MODALITIES}  # any case in, the vocabulary's spelling out
    for name in names:
        n = str(name).strip()
        n = spelling.get(n.upper(), n.upper())
        if not re.fullmatch(r"[A-Za-z0-9_\-]{1,16}", n):
            raise ValueError(f"{what} modality name {name!r} is not a short alphanumeric name")
        if n in out:
            raise ValueError(f"{what} modality {n!r} listed twice")
        out.append(n)
    order = list(KNOWN_MODALITIES)
    return sorted(out, key=lambda n: (order.index(n) if n in order else len(order), n))


def content_description_for(used: Sequence[str], missing: Sequence[str], fills: str | None = None) -> str:
    """ContentDescription (LO) naming the sequences used and missing.

    Parameters
    ----------
    used, missing : sequence of str
        Modality names (e.g. ``FLAIR``, ``T1``, ``T1ce``, ``T2``).

    Returns
    -------
    str
        E.g. ``"Tumor seg; used FLAIR,T1,T1ce,T2; missing none"`` (at most 64 characters).

    Raises
    ------
    ValueError
        If the text would exceed 64 characters (LO); use shorter modality names.
    """
    u = _normalise_modalities(used, "used")
    m = _normalise_modalities(missing, "missing")
    text = f"Tumor seg; used {','.join(u) or 'none'}; missing {','.join(m) or 'none'}"
    if fills:
        text += f"; fill {fills}"
    if len(text) > _LO_MAX:
        raise ValueError(f"ContentDescription would be {len(text)} > {_LO_MAX} chars: {text!r}")
    return text


def content_label_for(missing: Sequence[str]) -> str:
    """ContentLabel (CS, <= 16 chars, ``[A-Z0-9_ ]``) naming the missing sequences.

    Parameters
    ----------
    missing : sequence of str
        Missing modality names.

    Returns
    -------
    str
        ``"SEG_ALL_INPUTS"`` if nothing is missing, else ``"SEG_NO_"`` followed by the
        abbreviations of :data:`KNOWN_MODALITIES` joined by ``_`` (e.g. ``"SEG_NO_FL_T1C"``;
        any 3 of the 4 BraTS sequences fit). If that does not fit in 16 characters (unknown,
        long names) it degrades to ``"SEG_MISSING_<n>"``; ContentDescription has the names.
    """
    m = _normalise_modalities(missing, "missing")
    if not m:
        return "SEG_ALL_INPUTS"
    abbr = [KNOWN_MODALITIES.get(n, n.replace("-", "_")) for n in m]
    label = "SEG_NO_" + "_".join(abbr)
    if len(label) > _CS_MAX:
        label = f"SEG_MISSING_{len(m)}"
    return label


def _check_lo(value: str, what: str) -> str:
    if len(value) > _LO_MAX or "\\" in value or any(ord(c) < 32 for c in value):
        raise ValueError(f"{what} must be a LO value (<= 64 chars, no backslash): {value!r}")
    return value


# ----------------------------------------------------------------------------------------
# SEG construction
# ----------------------------------------------------------------------------------------
def _uid(seed: str | None, role: str) -> str:
    """A new UID; reproducible from ``seed`` and ``role`` if a seed is given."""
    if seed is None:
        return str(hd.UID())
    return str(generate_uid(entropy_srcs=[seed, role]))


def _check_sources(labels: np.ndarray, source_datasets: Sequence[pydicom.Dataset]) -> None:
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


def _multiframe_source(
    labels: np.ndarray, source_datasets: Sequence[pydicom.Dataset], source_frames: Sequence[int] | None
) -> tuple[pydicom.Dataset, np.ndarray] | None:
    """For a multi-frame source: (metadata copy of it, slice index of each frame in frame
    order); None for single-frame sources. Raises ValueError unless every frame is one slice."""
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
    pixel_tags = {0x7FE00010, 0x7FE00008, 0x7FE00009}
    meta = pydicom.Dataset({tag: elem for tag, elem in ds.items() if tag not in pixel_tags})
    if hasattr(ds, "file_meta"):
        meta.file_meta = ds.file_meta
    # highdicom reads pixel measures and plane orientation from the *shared* functional
    # groups; scanners (e.g. Siemens XA) may put them per frame. Where they agree across
    # frames, the metadata copy gets them in a new shared item (the caller's dataset is
    # not modified).
    import copy

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
    for keyword in ("PixelSpacing", "SliceThickness", "ImageOrientationPatient"):
        va, vb = a.get(keyword), b.get(keyword)
        if (va is None) != (vb is None):
            return False
        if va is not None and not np.allclose(np.asarray(va, dtype=float), np.asarray(vb, dtype=float), atol=atol):
            return False
    return True


def _harmonised_sources(
    source_datasets: Sequence[pydicom.Dataset], atol: float = 1e-4,
    fixes: list[AttributeFix] | None = None,
) -> list[pydicom.Dataset]:
    """Metadata-only copies of the sources sharing one ImageOrientationPatient.

    Real scanners write ImageOrientationPatient with float jitter between instances of one
    series (the GE MP-RAGE in the shared data differs by up to 6e-8 between slices), while
    highdicom demands *exactly* equal values ("Source images must have a shared
    orientation"). If all orientations agree within ``atol``, the copies carry the first
    instance's value; the caller's datasets are not modified and PixelData is left out
    (highdicom needs only the metadata; SOP Instance UIDs are untouched, so references stay
    exact). A genuinely different orientation is still an error. Attribute values that do
    not fit their VR are repaired, emptied or dropped in the copies
    (:func:`operators.dicom.source_attributes.sanitised_copy`); the first instance's fixes
    are appended to ``fixes``.
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
        jitter below 1e-4 between instances is tolerated (see :func:`_harmonised_sources`).
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
        segment are left out of the SEG (:func:`segments_for_regions`: the regions the
        sequences support).

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
    multiframe = _multiframe_source(labels, source_datasets, source_frames)
    if multiframe is None:
        _check_sources(labels, source_datasets)
    present = set(np.unique(labels).tolist())
    if not present <= _VALID_LABELS:
        raise ValueError(
            f"labels contain values {sorted(present - _VALID_LABELS)}; "
            f"expected BraTS labels {sorted(_VALID_LABELS)}"
        )

    used = _normalise_modalities(used_modalities, "used")
    missing = _normalise_modalities(missing_modalities, "missing")
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
    _check_lo(series_description, "series_description")
    _check_lo(algorithm_name, "algorithm_name")
    _check_lo(algorithm_version, "algorithm_version")

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
            item.SegmentDescription = _check_lo(note, f"segment {s.short} description")

    fixes: list[AttributeFix] = []
    if multiframe is not None:
        clean_source, fixes = sanitised_copy(source)
        sources = [clean_source]
    else:
        sources = _harmonised_sources(source_datasets, fixes=fixes)
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
    do write over-long values (e.g. a 165-byte StudyDescription, LO allows 64), which would
    make the SEG invalid. The SEG keeps the leading part; the source is not modified.
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
    and fsync'ed, then moved into place with :func:`os.replace`. On failure the temporary
    file is removed and nothing is left at the final path.

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
    """
    if os.sep in filename or (os.altsep and os.altsep in filename) or filename in ("", ".", ".."):
        raise ValueError(f"filename must be a plain file name, got {filename!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return write_atomically(out / filename, lambda fh: seg.save_as(fh, enforce_file_format=True))
