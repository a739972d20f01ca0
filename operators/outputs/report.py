"""Build ``report.json``: what an orchestrator and a clinical engineer read after a run.

The report is assembled from the one-way results of the graph; each stage contributes its
own section. ``status`` is ``"ok"`` or ``"failed"``; a failed run has ``error`` (one line)
and ``error_code``.
"""
from __future__ import annotations

import datetime as _dt
import platform
from typing import Any

from engines.runtimes.cpu_host import cpu_identity, denormals_record
from operators.study_model import MODALITIES, MODALITY_DISPLAY, ModalitySelection, PipelineResult

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


def modalities_line(available: dict[str, bool]) -> str:
    used = ",".join(MODALITY_DISPLAY[m] for m in MODALITIES if available.get(m))
    missing = ",".join(MODALITY_DISPLAY[m] for m in MODALITIES if not available.get(m)) or "none"
    return f"used {used}; missing {missing}"


def _rounded(timings: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 3) for k, v in timings.items()}


def pipeline_sections(result: PipelineResult) -> dict[str, Any]:
    """Registration, segmentation, outputs and per-stage timings of a successful run."""
    outcome = result.outcome
    model_input = outcome.model_input
    available = dict(zip(MODALITIES, model_input.available))
    grid = model_input.grid
    study = model_input.selection.study
    stage_timings = {
        "load": study.duration_s,
        "select": model_input.selection.duration_s,
        "register_and_resample": model_input.timings.get("total", 0.0),
        "segment": outcome.timings.get("operator_total", 0.0),
        "write_seg": result.timings.get("total", 0.0),
    }
    reg, seg_t, out_t = model_input.timings, outcome.timings, result.timings
    network = float(seg_t.get("network", 0.0))
    breakdown = {
        "load": study.duration_s,
        "select": model_input.selection.duration_s,
        "series_to_volume": reg.get("series_to_volume", 0.0),
        "registration": reg.get("register_all", 0.0),
        "resampling": sum(v for k, v in reg.items() if k.startswith("resample_")),
        "brain_extraction": reg.get("brain_extraction", 0.0),
        "network": network,
        "cascade_other": max(seg_t.get("operator_total", 0.0) - network, 0.0),
        "back_to_reference": out_t.get("to_reference_grid", 0.0),
        "seg": out_t.get("seg_build_write", 0.0),
        "sr": out_t.get("sr_build_write", 0.0),
        "overlay": out_t.get("overlay", 0.0),
    }
    total = sum(stage_timings.values())
    return {
        "modalities": {
            "used": [MODALITY_DISPLAY[m] for m in MODALITIES if available[m]],
            "missing": [MODALITY_DISPLAY[m] for m in MODALITIES if not available[m]],
            "imputed_for_network": outcome.imputed_channels,
            "summary": modalities_line(available),
        },
        "registration": {
            "reference_modality": MODALITY_DISPLAY[model_input.reference_modality],
            "reference_series_instance_uid": model_input.selection.selected[
                model_input.reference_modality
            ].header.series_instance_uid,
            "model_grid": {
                "size_xyz": list(grid.GetSize()),
                "spacing_mm": [round(v, 4) for v in grid.GetSpacing()],
                "origin_lps_mm": [round(v, 3) for v in grid.GetOrigin()],
                "direction": [round(v, 6) for v in grid.GetDirection()],
            },
            "series": {MODALITY_DISPLAY[m]: r for m, r in model_input.registrations.items()},
            "timings_s": _rounded(model_input.timings),
        },
        "segmentation": {
            "engine": outcome.engine,
            # Subset found, fills used, expected Dice / HD95 per region on held-out cases, warnings.
            "missing_sequences": outcome.missing_sequences,
            "notes": outcome.notes,
            "timings_s": _rounded(outcome.timings),
        },
        "result": {
            "seg_file": result.seg_file,
            "overlay_file": result.overlay_file,
            "seg_series_instance_uid": result.seg_series_instance_uid,
            "seg_sop_instance_uid": result.seg_sop_instance_uid,
            "sr_file": result.sr_file,
            "sr_sop_instance_uid": result.sr_sop_instance_uid,
            # Source attribute values that did not fit their VR: repaired, emptied or removed.
            "source_attribute_fixes": result.source_attribute_fixes,
            "tumour_volumes_ml": result.volumes_ml,
            "empty": result.empty,
            "empty_note": "no tumour voxel found: the SEG holds empty segments" if result.empty else "",
        },
        # Plain sentences a reader must see before using the result (regions unreliable with the
        # sequences found); empty when nothing is missing.
        "warnings": list((outcome.missing_sequences or {}).get("warnings", [])),
        "timings_s": _rounded(stage_timings),
        # The same run, finer (seconds and share of the stages' total); "network": inside
        # engine.run only; amdahl_bound: the end-to-end speed-up an infinitely fast network gives.
        "stage_breakdown_s": _rounded(breakdown),
        "stage_share": {k: round(v / total, 4) if total > 0 else 0.0 for k, v in breakdown.items()},
        "amdahl_bound_zero_time_network": round(total / (total - network), 3) if total > network else None,
    }
