"""Holoscan operator: labels on the model grid -> DICOM-SEG on the reference series + QA PNG."""
from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import SimpleITK as sitk
from monai.deploy.core import Fragment, Operator, OperatorSpec

from engines.model.missing.strategies import UNRELIABLE_DICE
from operators.dicom.seg import BRATS_SEGMENTS, SegmentSpec, build_segmentation, segments_for_regions
from operators.dicom.source_attributes import AttributeFix, fixes_text
from operators.dicom.sr_builder import build_volume_report
from operators.outputs.qa_image import render_overlay_png
from operators.outputs.report import modalities_line
from operators.outputs.staging import OVERLAY_FILE, SEG_FILE, SR_FILE, OutputStaging
from operators.spatial.grid import labels_to_reference
from operators.study_model import MODALITIES, MODALITY_DISPLAY, PipelineResult, SegmentationOutcome

BRATS_REGIONS = {"whole_tumor": (1, 2, 4), "tumor_core": (1, 4), "enhancing_tumor": (4,)}
#: report.json's name of each region, and of each segment kind (by its ``short`` name).
REGION_KEYS = {"WT": "whole_tumor", "TC": "tumor_core", "ET": "enhancing_tumor"}
SEGMENT_KEYS = {"NCR/NET": "necrotic_non_enhancing_core", "ED": "edema", "ET": "enhancing_tumor",
                "TC": "tumor_core", "WT": "whole_tumor", "NET+ED": "non_enhancing_tumor_and_edema"}


def class_volumes_ml(labels: np.ndarray, voxel_volume_mm3: float) -> dict[int, float]:
    """BraTS label (1, 2, 4) -> its volume in ml, from one pass over the label map."""
    counts = np.bincount(np.asarray(labels, dtype=np.uint8).ravel(), minlength=5)
    return {v: float(counts[v]) * voxel_volume_mm3 / 1000.0 for v in (1, 2, 4)}


def tumour_volumes_ml(classes_ml: dict[int, float], regions: tuple[str, ...] = ("WT", "TC", "ET"),
                      segments: tuple[SegmentSpec, ...] = BRATS_SEGMENTS) -> dict[str, float]:
    """Volumes (ml) of the written BraTS regions and of the SEG's segments, from the classes'
    volumes (:func:`class_volumes_ml`); a region that is not written has no volume here (its
    reason is in the missing-sequence plan)."""
    def ml(values: tuple[int, ...]) -> float:
        return round(sum(classes_ml[v] for v in values), 3)

    out = {REGION_KEYS[r]: ml(BRATS_REGIONS[REGION_KEYS[r]]) for r in regions}
    out.update({SEGMENT_KEYS[s.short]: ml(s.brats_labels) for s in segments})
    return out


class DicomSegWriterOperator(Operator):
    """Writes the tumour segmentation as a DICOM-SEG referencing the reference series.

    Named input:
        segmentation: :class:`operators.study_model.SegmentationOutcome`.

    Named output:
        result: :class:`operators.study_model.PipelineResult` (file names, SEG UIDs,
        tumour volumes in ml), for the report writer.

    The label map is resampled (nearest neighbour) from the model grid onto the reference
    series' own grid, slice ``k`` of which is the reference instance ``k``; one BINARY SEG
    with one segment per BraTS label class (see :mod:`operators.dicom.seg`) -- with a
    sequence missing, only the regions the sequences support (the plan's ``regions_written``;
    :func:`operators.dicom.seg.segments_for_regions`) -- is staged as
    ``segmentation.dcm``, with the tumour volumes as a DICOM SR (TID 1500,
    :mod:`operators.dicom.sr_builder`) referencing its segments, ``volumes_sr.dcm``, and a QA
    overlay ``overlay.png`` (:mod:`operators.outputs.qa_image`). An empty result still gives a
    valid SEG (empty segments), flagged in the report.
    """

    def __init__(self, fragment: Fragment, *args, staging: OutputStaging, algorithm_version: str, **kwargs) -> None:
        self._logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self.staging = staging
        self.algorithm_version = algorithm_version
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("segmentation")
        spec.output("result")

    def compute(self, op_input, op_output, context) -> None:
        outcome: SegmentationOutcome = op_input.receive("segmentation")
        op_output.emit(write_outputs(outcome, self.staging, self.algorithm_version, self._logger), "result")


def write_outputs(outcome: SegmentationOutcome, staging: OutputStaging, algorithm_version: str,
                  logger: logging.Logger) -> PipelineResult:
    """The work of :class:`DicomSegWriterOperator`, callable without Holoscan."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    model_input = outcome.model_input
    reference = model_input.reference
    labels_grid = sitk.GetImageFromArray(np.ascontiguousarray(outcome.labels, dtype=np.uint8))
    labels_grid.CopyInformation(model_input.grid)
    # Back to patient space: the reference series' own grid, slice k = reference instance k.
    on_reference = labels_to_reference(labels_grid, reference.image)
    labels_ref = sitk.GetArrayFromImage(on_reference).astype(np.uint8)  # (slices, rows, cols)
    timings["to_reference_grid"] = time.perf_counter() - t0

    available = dict(zip(MODALITIES, model_input.available))
    used = [MODALITY_DISPLAY[m] for m in MODALITIES if available[m]]
    missing = [MODALITY_DISPLAY[m] for m in MODALITIES if not available[m]]
    regions = tuple((outcome.missing_sequences or {}).get("regions_written") or ("WT", "TC", "ET"))
    segments = segments_for_regions(regions)
    empty = not bool(np.isin(labels_ref, [v for s in segments for v in s.brats_labels]).any())
    t1 = time.perf_counter()
    source_fixes: list[AttributeFix] = []
    seg = build_segmentation(
        labels_ref,
        reference.slice_datasets,
        used_modalities=used,
        missing_modalities=missing,
        algorithm_name="BraTS17 cascaded anisotropic CNN",
        algorithm_version=algorithm_version,
        source_frames=reference.slice_frames,  # Enhanced MR reference: its frame numbers
        source_fixes=source_fixes,
        fills=seg_fill_text(outcome.missing_sequences),
        segment_notes=segment_notes(outcome.missing_sequences, segments),
        segments=segments,
    )
    seg_path = staging.path(SEG_FILE)
    seg.save_as(seg_path, enforce_file_format=True)
    timings["seg_build_write"] = time.perf_counter() - t1

    voxel_ml_grid = float(np.prod(model_input.grid.GetSpacing()))
    class_ml = class_volumes_ml(outcome.labels, voxel_ml_grid)
    volumes = tumour_volumes_ml(class_ml, regions, segments)
    t_sr = time.perf_counter()
    sources = list({ds.SOPInstanceUID: ds for ds in reference.slice_datasets}.values())  # multi-frame: once
    sr = build_volume_report(seg, sources, class_ml, algorithm_version, segments)
    sr.save_as(staging.path(SR_FILE), enforce_file_format=True)
    timings["sr_build_write"] = time.perf_counter() - t_sr

    t2 = time.perf_counter()
    reference_array = sitk.GetArrayFromImage(reference.image)
    brain_ref = None
    if model_input.brain_mask is not None:  # the applied brain mask, back on the reference grid
        brain_ref = sitk.GetArrayFromImage(labels_to_reference(model_input.brain_mask, reference.image)) > 0
    render_overlay_png(
        reference_array,
        labels_ref,
        staging.path(OVERLAY_FILE),
        brain_mask=brain_ref,
        segments=segments,
        title=f"{model_input.reference_modality.upper()} reference; {modalities_line(available)}"
        + qa_series_text(model_input.selection)
        + qa_missing_text(outcome.missing_sequences) + ("; NO TUMOUR FOUND" if empty else ""),
    )
    timings["overlay"] = time.perf_counter() - t2
    timings["total"] = time.perf_counter() - t0
    logger.info(
        "SEG %s: %d frames, volumes (ml) %s%s (%.1f s)",
        SEG_FILE, int(seg.NumberOfFrames), volumes, " [empty]" if empty else "", timings["total"],
    )
    return PipelineResult(
        outcome=outcome,
        seg_file=SEG_FILE,
        overlay_file=OVERLAY_FILE,
        seg_series_instance_uid=str(seg.SeriesInstanceUID),
        seg_sop_instance_uid=str(seg.SOPInstanceUID),
        volumes_ml=volumes,
        empty=empty,
        timings=timings,
        sr_file=SR_FILE,
        sr_sop_instance_uid=str(sr.SOPInstanceUID),
        source_attribute_fixes=fixes_text(source_fixes),
    )


#: Short names of the fills in the SEG's LO texts (ContentDescription <= 64 characters).
FILL_ABBREVIATIONS = {"zero": "zero", "copy": "copy", "matched": "qmap", "synthesis": "synth"}
#: SEG segment kind (``short``) -> the region whose expected Dice describes it (NCR/NET: the
#: tumour core, edema: the whole tumour, enhancing: ET; a region written whole: itself).
SEGMENT_REGION = {"NCR/NET": "TC", "ED": "WT", "ET": "ET", "TC": "TC", "WT": "WT", "NET+ED": "WT"}


def seg_fill_text(missing_sequences: dict[str, Any] | None) -> str | None:
    """``"synth/copy"`` (WT stage / TC and EN stages) when a sequence was missing, else None."""
    if not missing_sequences:
        return None
    fills = missing_sequences["fills"]
    return f"{FILL_ABBREVIATIONS[fills['wt']]}/{FILL_ABBREVIATIONS[fills['core']]}"


def segment_notes(missing_sequences: dict[str, Any] | None,
                  segments: tuple[SegmentSpec, ...] = BRATS_SEGMENTS) -> dict[str, str] | None:
    """SegmentDescription per segment with a sequence missing: the expected Dice of the segment's
    region on held-out cases with the sequences found (flagged UNRELIABLE below the bar, which
    only a research setting writes)."""
    if not missing_sequences:
        return None
    subset, expected = missing_sequences["subset"], missing_sequences["expected_dice_held_out"]
    notes = {}
    for spec in segments:
        region = SEGMENT_REGION[spec.short]
        if expected is None or expected.get(region) is None:
            notes[spec.short] = f"{subset}: accuracy not measured; UNRELIABLE"
        else:
            flag = "; UNRELIABLE" if expected[region] < UNRELIABLE_DICE else ""
            notes[spec.short] = f"{subset}: expected {region} Dice {expected[region]:.2f}{flag}"
    return notes


def qa_series_text(selection: Any) -> str:
    """The QA title's part naming the series number that filled each slot, and the contrast phase
    when it was not read from the headers (undetermined: the earliest T1 / FLAIR were used)."""
    slots = " ".join(f"{MODALITY_DISPLAY[m]} {s.header.series_number}" for m, s in selection.selected.items())
    status = (selection.contrast or {}).get("status")
    phase = {"undetermined": "; contrast phase undetermined: earliest T1 / FLAIR used",
             "inferred": "; contrast phase from like-for-like images"}.get(status, "")
    return f"; series {slots}{phase}"


def qa_missing_text(missing_sequences: dict[str, Any] | None) -> str:
    """The QA image title's part on missing sequences (empty when nothing was missing): the fills,
    the expected Dice per region on held-out cases, the regions not written (and the unreliable
    ones a research setting wrote)."""
    if not missing_sequences:
        return ""
    expected = missing_sequences["expected_dice_held_out"]
    regions = ("WT", "TC", "ET")
    written = missing_sequences.get("regions_written") or list(regions)
    omitted = [r for r in regions if r not in written]
    unreliable = [r for r in written if expected is None or expected.get(r) is None
                  or expected[r] < UNRELIABLE_DICE]  # fmt: skip
    text = f"; fill {seg_fill_text(missing_sequences)}"
    if expected is not None:
        text += "; expected Dice " + " ".join(f"{r} {expected[r]:.2f}" for r in regions if expected.get(r) is not None)
    if omitted:
        text += f"; NOT WRITTEN (expected Dice < {UNRELIABLE_DICE:.2f}): {', '.join(omitted)}"
    return text + (f"; UNRELIABLE: {', '.join(unreliable)}" if unreliable else "")
