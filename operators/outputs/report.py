"""Build ``report.json``: what an orchestrator and a clinical engineer read after a run.

The report is assembled from the values the operators emit (the report writer's named inputs);
each stage contributes its own section. ``status`` is ``"ok"`` or ``"failed"``; a failed run has ``error`` (one line)
and ``error_code``.
"""
from __future__ import annotations

import datetime as _dt
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engines.model.missing.strategies import SubsetPlan
from engines.runtimes.cpu_host import cpu_identity, denormals_record
from operators.study_model import (
    BREAKDOWN,
    MODALITIES,
    MODALITY_DISPLAY,
    OPERATOR_STAGES,
    ModalitySelection,
    RegistrationRecord,
    SegmentationRecord,
    Stage,
    Timings,
    WrittenOutputs,
)

REPORT_SCHEMA_VERSION = 1


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def base_report(app_name: str, app_version: str) -> dict[str, Any]:
    return {
        "schema_version": REPORT_SCHEMA_VERSION,
        "application": {"name": app_name, "version": app_version},
        "created": _now(),
        "host": {"python": platform.python_version(), "machine": platform.machine(),
                 "cpu": {k: v for k, v in cpu_identity().items() if k != "signature"},
                 "denormals_flushed": denormals_record()},
    }


def selection_section(selection: ModalitySelection) -> dict[str, Any]:
    """Series found, their detected modality, what was chosen and what is missing."""
    study = selection.study
    candidates = {c.series_instance_uid: c for c in selection.candidates}
    series = []
    for s in study.series:
        h = s.header
        c = candidates.get(h.series_instance_uid)
        series.append(
            {
                "series_instance_uid": h.series_instance_uid,
                "series_number": h.series_number,
                "series_description": h.series_description,
                "protocol_name": h.protocol_name,
                "sop_class_uid": h.sop_class_uid,
                "instances": h.number_of_instances,
                "frames": h.number_of_frames,
                "detected_modality": c.modality if c else "other",
                "scores": {k: (None if v == float("-inf") else round(v, 2)) for k, v in (c.scores if c else {}).items()},
                "reasons": c.reasons if c else [],
                "parameters": {
                    "repetition_time_ms": h.repetition_time_ms,
                    "echo_time_ms": h.echo_time_ms,
                    "inversion_time_ms": h.inversion_time_ms,
                    "scanning_sequence": list(h.scanning_sequence),
                    "contrast_bolus_agent": h.contrast_bolus_agent,
                    "slice_thickness_mm": h.slice_thickness_mm,
                },
            }
        )
    return {
        "study_instance_uid": study.study_instance_uid,
        "series": series,
        "ignored_files": study.ignored,
        "availability": selection.availability,
        "selected": {
            m: {
                "series_instance_uid": s.header.series_instance_uid,
                "series_number": s.header.series_number,
                "series_description": s.header.series_description,
            }
            for m, s in selection.selected.items()
        },
        "missing": [MODALITY_DISPLAY[m] for m in selection.missing],
        "reasons": selection.reasons,
        "contrast_phase": selection.contrast,
        "set_aside": selection.set_aside,
    }


def modalities_line(available: Mapping[str, bool]) -> str:
    used = ",".join(MODALITY_DISPLAY[m] for m in MODALITIES if available.get(m))
    missing = ",".join(MODALITY_DISPLAY[m] for m in MODALITIES if not available.get(m)) or "none"
    return f"used {used}; missing {missing}"


def _rounded(seconds: dict[str, float]) -> dict[str, float]:
    return {str(k): round(float(v), 3) for k, v in seconds.items()}


def registration_series(record: RegistrationRecord) -> dict[str, Any]:
    """Per series (display name): the reference's backend and brain extraction, each moving
    series' registration record."""
    reference = {"reference": True, "registration_backend": {"name": record.backend, "reason": record.backend_reason},
                 "brain_extraction": record.brain_extraction}
    series = {MODALITY_DISPLAY[record.reference_modality]: reference}
    series.update({MODALITY_DISPLAY[m]: r for m, r in record.moving.items()})
    return series


def finished_report(app_name: str, app_version: str, *, selection: ModalitySelection,
                    registration: RegistrationRecord, segmentation: SegmentationRecord, plan: SubsetPlan | None,
                    outputs: WrittenOutputs, timings: Timings, earlier_outputs: Path | None = None) -> dict[str, Any]:
    """The report of a finished run: the input section from the selection, then the pipeline
    sections (:func:`pipeline_sections`); ``earlier_outputs``: where an earlier run's outputs
    were moved (:func:`operators.outputs.staging.set_aside_earlier_outputs`)."""
    report = base_report(app_name, app_version)
    if earlier_outputs is not None:
        report["earlier_outputs_moved_to"] = earlier_outputs.name
    report["input"] = selection_section(selection)
    report.update(pipeline_sections(selection, registration, segmentation, plan, outputs, timings))
    return report


def pipeline_sections(selection: ModalitySelection, registration: RegistrationRecord,
                      segmentation: SegmentationRecord, plan: SubsetPlan | None, outputs: WrittenOutputs,
                      timings: Timings) -> dict[str, Any]:
    """Registration, segmentation, outputs and per-stage timings of a successful run.

    ``plan``: the missing-sequence plan (None with all four sequences); ``timings``: the run's,
    as the SEG writer emitted it (every stage but the report's own)."""
    available = selection.availability
    grid = registration.grid
    stage_timings = {s: timings.get(s, 0.0) for s in OPERATOR_STAGES}
    breakdown = {s: timings.get(s, 0.0) for s in BREAKDOWN}
    network = breakdown[Stage.NETWORK]
    total = sum(stage_timings.values())
    return {
        "modalities": {
            "used": [MODALITY_DISPLAY[m] for m in MODALITIES if available[m]],
            "missing": [MODALITY_DISPLAY[m] for m in MODALITIES if not available[m]],
            "imputed_for_network": segmentation.imputed_channels,
            "summary": modalities_line(available),
        },
        "registration": {
            "reference_modality": MODALITY_DISPLAY[registration.reference_modality],
            "reference_series_instance_uid": selection.selected[
                registration.reference_modality
            ].header.series_instance_uid,
            "model_grid": {
                "size_xyz": list(grid.GetSize()),
                "spacing_mm": [round(v, 4) for v in grid.GetSpacing()],
                "origin_lps_mm": [round(v, 3) for v in grid.GetOrigin()],
                "direction": [round(v, 6) for v in grid.GetDirection()],
            },
            "series": registration_series(registration),
            "timings_s": timings.detail(Stage.REGISTER_AND_RESAMPLE).rounded(),
        },
        "segmentation": {
            "engine": segmentation.engine,
            # Subset found, fills used, expected Dice / HD95 per region on held-out cases, warnings.
            "missing_sequences": plan.as_report() if plan is not None else None,
            "notes": segmentation.notes,
            "timings_s": timings.detail(Stage.SEGMENT).rounded(),
        },
        "result": {
            "seg_file": outputs.seg_file,
            "overlay_file": outputs.overlay_file,
            "seg_series_instance_uid": outputs.seg_series_instance_uid,
            "seg_sop_instance_uid": outputs.seg_sop_instance_uid,
            "sr_file": outputs.sr_file,
            "sr_sop_instance_uid": outputs.sr_sop_instance_uid,
            # Source attribute values that did not fit their VR: repaired, emptied or removed.
            "source_attribute_fixes": outputs.source_attribute_fixes,
            "tumour_volumes_ml": outputs.volumes_ml,
            "empty": outputs.empty,
            "empty_note": "no tumour voxel found: the SEG holds empty segments" if outputs.empty else "",
        },
        # Plain sentences a reader must see before using the result (regions unreliable with the
        # sequences found); empty when nothing is missing.
        "warnings": list(plan.warnings) if plan is not None else [],
        "timings_s": _rounded(stage_timings),
        # The same run, finer (seconds and share of the stages' total); "network": inside
        # engine.run only; amdahl_bound: the end-to-end speed-up an infinitely fast network gives.
        "stage_breakdown_s": _rounded(breakdown),
        "stage_share": {str(k): round(v / total, 4) if total > 0 else 0.0 for k, v in breakdown.items()},
        "amdahl_bound_zero_time_network": round(total / (total - network), 3) if total > network else None,
    }
