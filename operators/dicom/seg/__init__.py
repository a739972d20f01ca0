"""The DICOM Segmentation (DICOM-SEG) of a BraTS label map, built with highdicom.

Pure logic (no Holoscan): :class:`operators.dicom_seg_writer_operator.DicomSegWriterOperator`
wraps it. Laid out like highdicom's own ``highdicom.seg``, a module per concept:

:mod:`.content`
    What the segments are: the BraTS classes and regions as :class:`SegmentSpec`, their coded
    concepts and colours, the segments of the regions the sequences support
    (:func:`segments_for_regions`), and the descriptive strings naming the sequences used and
    missing.
:mod:`.sources`
    The source images: their order along the slice normal, the checks that they form one
    volume matching the label map, and the metadata-only copies highdicom accepts.
:mod:`.sop`
    The SEG instance itself (:func:`build_segmentation`), its inherited text fitted to the
    VRs, and its atomic write.

The contract every caller relies on: ``labels[k]`` belongs to ``source_datasets[k]``; nothing
re-sorts the sources (:mod:`.sop`). The SEG references each frame's source instance by SOP
Instance UID.

May import: :mod:`operators.dicom.source_attributes`, :mod:`engines`.
"""
from operators.dicom.seg.content import (
    BRATS_SEGMENTS,
    KNOWN_MODALITIES,
    REGION_LABELS,
    SegmentSpec,
    content_description_for,
    content_label_for,
    segments_for_regions,
)
from operators.dicom.seg.sop import build_segmentation, write_segmentation_atomically

__all__ = [
    "BRATS_SEGMENTS",
    "KNOWN_MODALITIES",
    "REGION_LABELS",
    "SegmentSpec",
    "build_segmentation",
    "content_description_for",
    "content_label_for",
    "segments_for_regions",
    "write_segmentation_atomically",
]
