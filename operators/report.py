"""Build ``report.json``: what an orchestrator and a clinical engineer read after a run.

The report is assembled from the one-way results of the graph; each stage contributes its
own section. ``status`` is ``"ok"`` or ``"failed"``; a failed run has ``error`` (one line)
and ``error_code``.
"""
from __future__ import annotations

import datetime as _dt
import platform
from typing import Any

from operators.study_model import MODALITIES, MODALITY_DISPLAY, ModalitySelection

REPORT_SCHEMA_VERSION = 1


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def base_report(app_name: str, app_version: str) -> dict[str, Any]:
    return {
        "schema_version": REPORT_SCHEMA_VERSION,
        "application": {"name": app_name, "version": app_version},
        "created": _now(),
        "host": {"python": platform.python_version(), "machine": platform.machine()},
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
    }


def modalities_line(available: dict[str, bool]) -> str:
    used = ",".join(MODALITY_DISPLAY[m] for m in MODALITIES if available.get(m))
    missing = ",".join(MODALITY_DISPLAY[m] for m in MODALITIES if not available.get(m)) or "none"
    return f"used {used}; missing {missing}"
