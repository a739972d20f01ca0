"""Reading a DICOM-SEG back into per-segment, per-source-instance frames, for the tests.

Helper module for tests (not collected by pytest: its name does not start with ``test_``).

Deliberately independent of highdicom, which writes the app's SEGs: it uses only the per-frame
functional groups and pydicom's pixel decoding, so it checks what a SEG *says* rather than
what its writer meant, and works for SEGs written by other tools (dcmqi, highdicom).
"""
from __future__ import annotations

import numpy as np
import pydicom

__all__ = ["read_segment_masks"]


def read_segment_masks(seg: pydicom.Dataset) -> dict[int, dict[str, np.ndarray]]:
    """Decode a SEG into per-segment, per-source-instance 2-D frames.

    Uses only the per-frame functional groups (Segment Identification ->
    ReferencedSegmentNumber; Derivation Image -> Source Image -> ReferencedSOPInstanceUID)
    and pydicom's pixel decoding, so it checks what a SEG *says*, independently of the
    writer's frame order. Works for SEGs written by other tools (dcmqi, highdicom).

    Parameters
    ----------
    seg : pydicom.Dataset
        A Segmentation Storage instance (e.g. from ``highdicom.seg.segread``).

    Returns
    -------
    dict
        ``{segment_number: {referenced_sop_instance_uid: frame}}`` where ``frame`` is a
        (Rows, Columns) array: bool for BINARY, uint8 for FRACTIONAL (stored values).
        Segment numbers without any frame map to an empty dict.

    Raises
    ------
    ValueError
        If a frame does not reference exactly one source instance, or two frames of one
        segment reference the same instance.
    """
    n_frames = int(getattr(seg, "NumberOfFrames", 1) or 1)
    pixels = np.asarray(seg.pixel_array).reshape(n_frames, int(seg.Rows), int(seg.Columns))
    binary = str(seg.SegmentationType) == "BINARY"
    out: dict[int, dict[str, np.ndarray]] = {
        int(item.SegmentNumber): {} for item in seg.SegmentSequence
    }
    shared = seg.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in seg \
        else pydicom.Dataset()
    for i, fg in enumerate(seg.PerFrameFunctionalGroupsSequence):
        seg_id = fg.get("SegmentIdentificationSequence") or \
            shared.get("SegmentIdentificationSequence")
        segment_number = int(seg_id[0].ReferencedSegmentNumber)
        refs = [
            str(src.ReferencedSOPInstanceUID)
            for der in fg.get("DerivationImageSequence", [])
            for src in der.get("SourceImageSequence", [])
        ]
        if len(refs) != 1:
            raise ValueError(f"frame {i + 1} references {len(refs)} source instances, not 1")
        frames = out.setdefault(segment_number, {})
        if refs[0] in frames:
            raise ValueError(
                f"segment {segment_number} has two frames for source instance {refs[0]}"
            )
        frame = pixels[i]
        frames[refs[0]] = frame.astype(bool) if binary else frame.astype(np.uint8)
    return out
