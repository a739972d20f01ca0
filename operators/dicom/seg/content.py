"""What the SEG's segments are: the BraTS classes and regions, their coded concepts, and the
descriptive strings that name the input sequences.

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

Each segment has a distinct display colour (sRGB here, CIELab in the SEG; the QA overlay uses
the same: NCR red, ED green, ET yellow, as is customary for BraTS) and a Tracking ID.

Descriptive attributes
======================
* ContentDescription (LO, <= 64 chars), e.g. ``"Tumor seg; used FLAIR,T1,T1ce,T2; missing
  none"`` (:func:`content_description_for`);
* ContentLabel (CS, <= 16 chars, ``[A-Z0-9_ ]``), e.g. ``"SEG_ALL_INPUTS"`` or
  ``"SEG_NO_T1C"`` / ``"SEG_NO_FL_T1C"`` naming the missing sequences
  (FLAIR -> FL, T1 -> T1, T1ce -> T1C, T2 -> T2; :func:`content_label_for`);
* SeriesDescription (LO), e.g. ``"BraTS tumor SEG; used FLAIR,T1,T1ce,T2; missing none"``.

Modality names are accepted in any case and written in the spelling of
:data:`KNOWN_MODALITIES`, in its order (unknown names after, alphabetically).
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from engines.model.modalities import CHANNEL_NAMES
from operators.dicom.source_attributes import MAX_LENGTH

__all__ = [
    "ALGORITHM_FAMILY",
    "ANATOMIC_REGION",
    "BRATS_LABEL_VALUES",
    "BRATS_SEGMENTS",
    "KNOWN_MODALITIES",
    "REGION_LABELS",
    "SEGMENT_CATEGORY",
    "SegmentSpec",
    "checked_lo",
    "content_description_for",
    "content_label_for",
    "normalise_modalities",
    "segments_for_regions",
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

#: The label values a BraTS label map may hold: background 0 and the three classes.
BRATS_LABEL_VALUES: frozenset[int] = frozenset(s.brats_label for s in BRATS_SEGMENTS) | {0}

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
}


def segments_for_regions(regions: Sequence[str]) -> tuple[SegmentSpec, ...]:
    """The segments of a SEG that holds ``regions`` (a subset of WT, TC, ET) and nothing else.

    The regions are nested (WT contains TC contains ET); each written region's part that lies
    outside the next written region inside it becomes one segment, so the segments stay
    disjoint and every written region is a union of segments: all three regions -> the three
    BraTS classes (:data:`BRATS_SEGMENTS`); TC + ET -> NCR/NET, ET (edema not written); WT + TC
    -> ED, TC whole; WT alone -> WT whole; ET alone -> ET.

    Parameters
    ----------
    regions : sequence of str
        The regions written, any order.

    Returns
    -------
    tuple of SegmentSpec
        Ordered by BraTS label and numbered from 1.

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

_LO_MAX = MAX_LENGTH["LO"]
_CS_MAX = MAX_LENGTH["CS"]


def normalise_modalities(names: Sequence[str], what: str) -> list[str]:
    """Modality names in the vocabulary's spelling and order.

    Parameters
    ----------
    names : sequence of str
        Modality names, any case (``"flair"`` -> ``"FLAIR"``; unknown names upper-cased).
    what : str
        What the names are (``"used"``, ``"missing"``), for the error message.

    Returns
    -------
    list of str
        The names in :data:`KNOWN_MODALITIES`' order, unknown names after (alphabetically).

    Raises
    ------
    ValueError
        A name that is not a short alphanumeric name (``[A-Za-z0-9_-]``, <= 16 chars), or one
        listed twice.
    """
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
    fills : str, optional
        What the missing sequences were fed as (e.g. ``"synth/copy"``); appended as
        ``"; fill synth/copy"``.

    Returns
    -------
    str
        E.g. ``"Tumor seg; used FLAIR,T1,T1ce,T2; missing none"`` (at most 64 characters).

    Raises
    ------
    ValueError
        If the text would exceed 64 characters (LO); use shorter modality names.
    """
    u = normalise_modalities(used, "used")
    m = normalise_modalities(missing, "missing")
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
    m = normalise_modalities(missing, "missing")
    if not m:
        return "SEG_ALL_INPUTS"
    abbr = [KNOWN_MODALITIES.get(n, n.replace("-", "_")) for n in m]
    label = "SEG_NO_" + "_".join(abbr)
    if len(label) > _CS_MAX:
        label = f"SEG_MISSING_{len(m)}"
    return label


def checked_lo(value: str, what: str) -> str:
    """``value`` if it is a valid LO value (<= 64 chars, no backslash, no control character).

    Raises
    ------
    ValueError
        Otherwise; ``what`` names the value in the message.
    """
    if len(value) > _LO_MAX or "\\" in value or any(ord(c) < 32 for c in value):
        raise ValueError(f"{what} must be a LO value (<= 64 chars, no backslash): {value!r}")
    return value
