"""The SEG writer's work without Holoscan: labels on the model grid -> DICOM-SEG, SR and QA image, staged
(:class:`operators.dicom_seg_writer_operator.DicomSegWriterOperator` runs it).
"""
from __future__ import annotations

import logging
import time

import numpy as np
import SimpleITK as sitk

from engines.model.missing.strategies import REGIONS, UNRELIABLE_DICE, SubsetPlan
from engines.model.vocabulary import Fill, Region, StageGroup
from operators.dicom.seg import BRATS_SEGMENTS, SegmentSpec, build_segmentation, segments_for_regions
from operators.dicom.source_attributes import AttributeFix, fixes_text
from operators.dicom.sr_builder import build_volume_report
from operators.outputs.qa_image import render_overlay_png
from operators.outputs.report import modalities_line
from operators.outputs.staging import OVERLAY_FILE, SEG_FILE, SR_FILE, OutputStaging
from operators.spatial.grid import labels_to_reference
from operators.study_model import (
    MODALITIES,
    MODALITY_DISPLAY,
    ModalitySelection,
    ReferenceSeries,
    Stage,
    Timings,
    WrittenOutputs,
)

BRATS_REGIONS = {"whole_tumor": (1, 2, 4), "tumor_core": (1, 4), "enhancing_tumor": (4,)}
#: report.json's name of each region, and of each segment kind (by its ``short`` name).
REGION_KEYS = {Region.WT: "whole_tumor", Region.TC: "tumor_core", Region.ET: "enhancing_tumor"}
SEGMENT_KEYS = {"NCR/NET": "necrotic_non_enhancing_core", "ED": "edema", "ET": "enhancing_tumor",
                "TC": "tumor_core", "WT": "whole_tumor", "NET+ED": "non_enhancing_tumor_and_edema"}


def class_volumes_ml(labels: np.ndarray, voxel_volume_mm3: float) -> dict[int, float]:
    """BraTS label (1, 2, 4) -> its volume in ml, from one pass over the label map."""
    counts = np.bincount(np.asarray(labels, dtype=np.uint8).ravel(), minlength=5)
    return {v: float(counts[v]) * voxel_volume_mm3 / 1000.0 for v in (1, 2, 4)}


def tumour_volumes_ml(classes_ml: dict[int, float], regions: tuple[Region, ...] = REGIONS,
                      segments: tuple[SegmentSpec, ...] = BRATS_SEGMENTS) -> dict[str, float]:
    """Volumes (ml) of the written BraTS regions and of the SEG's segments, from the classes'
    volumes (:func:`class_volumes_ml`); a region that is not written has no volume here (its
    reason is in the missing-sequence plan)."""
    def ml(values: tuple[int, ...]) -> float:
        return round(sum(classes_ml[v] for v in values), 3)

    out = {REGION_KEYS[r]: ml(BRATS_REGIONS[REGION_KEYS[r]]) for r in regions}
    out.update({SEGMENT_KEYS[s.short]: ml(s.brats_labels) for s in segments})
    return out


def write_outputs(selection: ModalitySelection, reference: ReferenceSeries, labels: sitk.Image,
                  plan: SubsetPlan | None, brain_mask: sitk.Image | None, staging: OutputStaging,
                  algorithm_version: str, logger: logging.Logger) -> tuple[WrittenOutputs, Timings]:
    """The work of :class:`operators.dicom_seg_writer_operator.DicomSegWriterOperator`, callable without Holoscan: what it staged
    and its timings (``write_seg`` and its parts)."""
    clock = Timings()
    t0 = time.perf_counter()
    series = reference.image
    # Back to patient space: the reference series' own grid, slice k = reference instance k.
    on_reference = labels_to_reference(labels, series.image)
    labels_ref = sitk.GetArrayFromImage(on_reference).astype(np.uint8)  # (slices, rows, cols)
    clock.add(Stage.BACK_TO_REFERENCE, time.perf_counter() - t0)

    available = selection.availability
    used = [MODALITY_DISPLAY[m] for m in MODALITIES if available[m]]
    missing = [MODALITY_DISPLAY[m] for m in MODALITIES if not available[m]]
    regions = tuple(plan.regions_written) if plan is not None and plan.regions_written else REGIONS
    segments = segments_for_regions(regions)
    empty = not bool(np.isin(labels_ref, [v for s in segments for v in s.brats_labels]).any())
    t1 = time.perf_counter()
    source_fixes: list[AttributeFix] = []
    seg = build_segmentation(
        labels_ref,
        series.slice_datasets,
        used_modalities=used,
        missing_modalities=missing,
        algorithm_name="BraTS17 cascaded anisotropic CNN",
        algorithm_version=algorithm_version,
        source_frames=series.slice_frames,  # Enhanced MR reference: its frame numbers
        source_fixes=source_fixes,
        fills=seg_fill_text(plan),
        segment_notes=segment_notes(plan, segments),
        segments=segments,
    )
    seg_path = staging.path(SEG_FILE)
    seg.save_as(seg_path, enforce_file_format=True)
    clock.add(Stage.SEG, time.perf_counter() - t1)

    voxel_ml_grid = float(np.prod(labels.GetSpacing()))
    class_ml = class_volumes_ml(sitk.GetArrayViewFromImage(labels), voxel_ml_grid)
    volumes = tumour_volumes_ml(class_ml, regions, segments)
    t_sr = time.perf_counter()
    sources = list({ds.SOPInstanceUID: ds for ds in series.slice_datasets}.values())  # multi-frame: once
    sr = build_volume_report(seg, sources, class_ml, algorithm_version, segments)
    sr.save_as(staging.path(SR_FILE), enforce_file_format=True)
    clock.add(Stage.SR, time.perf_counter() - t_sr)

    t2 = time.perf_counter()
    reference_array = sitk.GetArrayFromImage(series.image)
    brain_ref = None
    if brain_mask is not None:  # the applied brain mask, back on the reference grid
        brain_ref = sitk.GetArrayFromImage(labels_to_reference(brain_mask, series.image)) > 0
    render_overlay_png(
        reference_array,
        labels_ref,
        staging.path(OVERLAY_FILE),
        brain_mask=brain_ref,
        segments=segments,
        title=f"{reference.modality.upper()} reference; {modalities_line(available)}"
        + qa_series_text(selection)
        + qa_missing_text(plan) + ("; NO TUMOUR FOUND" if empty else ""),
    )
    clock.add(Stage.OVERLAY, time.perf_counter() - t2)
    total = time.perf_counter() - t0
    clock.add(Stage.WRITE_SEG, total)
    logger.info(
        "SEG %s: %d frames, volumes (ml) %s%s (%.1f s)",
        SEG_FILE, int(seg.NumberOfFrames), volumes, " [empty]" if empty else "", total,
    )
    written = WrittenOutputs(
        seg_file=SEG_FILE,
        overlay_file=OVERLAY_FILE,
        seg_series_instance_uid=str(seg.SeriesInstanceUID),
        seg_sop_instance_uid=str(seg.SOPInstanceUID),
        volumes_ml=volumes,
        empty=empty,
        sr_file=SR_FILE,
        sr_sop_instance_uid=str(sr.SOPInstanceUID),
        source_attribute_fixes=fixes_text(source_fixes),
    )
    return written, clock


#: Short names of the fills in the SEG's LO texts (ContentDescription <= 64 characters).
FILL_ABBREVIATIONS = {Fill.ZERO: "zero", Fill.COPY: "copy", Fill.MATCHED: "qmap", Fill.SYNTHESIS: "synth"}
#: SEG segment kind (``short``) -> the region whose expected Dice describes it (NCR/NET: the
#: tumour core, edema: the whole tumour, enhancing: ET; a region written whole: itself).
SEGMENT_REGION = {"NCR/NET": Region.TC, "ED": Region.WT, "ET": Region.ET, "TC": Region.TC, "WT": Region.WT,
                  "NET+ED": Region.WT}


def seg_fill_text(plan: SubsetPlan | None) -> str | None:
    """``"synth/copy"`` (WT stage / TC and EN stages) when a sequence was missing, else None."""
    if plan is None:
        return None
    return f"{FILL_ABBREVIATIONS[plan.fills[StageGroup.WT]]}/{FILL_ABBREVIATIONS[plan.fills[StageGroup.CORE]]}"


def segment_notes(plan: SubsetPlan | None, segments: tuple[SegmentSpec, ...] = BRATS_SEGMENTS) -> dict[str, str] | None:
    """SegmentDescription per segment with a sequence missing: the expected Dice of the segment's
    region on held-out cases with the sequences found (flagged UNRELIABLE below the bar, which
    only a research setting writes)."""
    if plan is None:
        return None
    notes = {}
    for spec in segments:
        region = SEGMENT_REGION[spec.short]
        dice = plan.expected_dice(region)
        if dice is None:
            notes[spec.short] = f"{plan.subset}: accuracy not measured; UNRELIABLE"
        else:
            flag = "; UNRELIABLE" if dice < UNRELIABLE_DICE else ""
            notes[spec.short] = f"{plan.subset}: expected {region} Dice {dice:.2f}{flag}"
    return notes


def qa_series_text(selection: ModalitySelection) -> str:
    """The QA title's part naming the series number that filled each slot, and the contrast phase
    when it was not read from the headers (undetermined: the earliest T1 / FLAIR were used)."""
    slots = " ".join(f"{MODALITY_DISPLAY[m]} {s.header.series_number}" for m, s in selection.selected.items())
    status = (selection.contrast or {}).get("status")
    phase = {"undetermined": "; contrast phase undetermined: earliest T1 / FLAIR used",
             "inferred": "; contrast phase from like-for-like images"}.get(status, "")
    return f"; series {slots}{phase}"


def qa_missing_text(plan: SubsetPlan | None) -> str:
    """The QA image title's part on missing sequences (empty when nothing was missing): the fills,
    the expected Dice per region on held-out cases, the regions not written (and the unreliable
    ones a research setting wrote)."""
    if plan is None:
        return ""
    written = plan.regions_written or REGIONS
    omitted = [r for r in REGIONS if r not in written]
    unreliable = [r for r in written if (dice := plan.expected_dice(r)) is None or dice < UNRELIABLE_DICE]
    text = f"; fill {seg_fill_text(plan)}"
    if plan.expected:
        text += "; expected Dice " + " ".join(f"{r} {plan.expected_dice(r):.2f}" for r in REGIONS
                                              if plan.expected_dice(r) is not None)
    if omitted:
        text += f"; NOT WRITTEN (expected Dice < {UNRELIABLE_DICE:.2f}): {', '.join(omitted)}"
    return text + (f"; UNRELIABLE: {', '.join(unreliable)}" if unreliable else "")
