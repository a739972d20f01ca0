"""Classify MR series as FLAIR / T1 / T1ce / T2 / other and pick one series per modality.

The rules live in a JSON file a site can edit (``app/modality_rules.json``), in the MONAI
Deploy SDK selector's format (``{"selections": [{"name": ..., "conditions": {...}}]}``)
extended with scoring. Every series is scored for every modality from

* its SeriesDescription / ProtocolName (regular expressions),
* its sequence parameters: RepetitionTime, EchoTime, InversionTime (ms) and ScanningSequence,
* its contrast phase, decided for the whole study by :mod:`operators.selection.contrast_phase`
  (header, description, acquisition order, image enhancement; "undetermined" said plainly).

Parameters outweigh a description that disagrees with them: a series described "FLAIR"
with TR 550 / TE 10 and no inversion time scores higher as T1 than as FLAIR.

When several series qualify for one modality, the ``preference`` list of the rules decides
(default: pre-contrast over post-contrast (FLAIR), finest resolution (largest voxel edge),
3-D over 2-D, axial over other planes, most slices, latest acquisition, highest series
number). A preferred series that cannot serve as an image (:mod:`operators.selection.usability`:
a mask stored as an image, constant values, another patient position) is set aside with its
reason and the next one is used. Every decision is written down as a reason for the report.
"""
from __future__ import annotations

import json
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from operators.selection.contrast_phase import ContrastDecision, decide_phases, seconds_of_day, slice_plane
from operators.selection.usability import image_problem, majority_patient_position
from operators.study_model import (
    MODALITIES,
    LoadedSeries,
    LoadedStudy,
    Modality,
    ModalitySelection,
    SeriesCandidate,
    SeriesHeader,
)

logger = logging.getLogger(__name__)

DEFAULT_RULES_PATH = Path(__file__).resolve().parents[2] / "app" / "modality_rules.json"
_PARAMETER_FIELDS = {
    "RepetitionTime": "repetition_time_ms",
    "EchoTime": "echo_time_ms",
    "InversionTime": "inversion_time_ms",
}
_CONTRAST_IN_TEXT = re.compile(r"(?i)(post|\+c\b|\bgd\b|gad|contrast|\bce\b|\bkm\b)")


@dataclass(frozen=True)
class SelectionRules:
    """Parsed, validated selection rules (see ``app/modality_rules.json``)."""

    raw: Mapping[str, Any]

    @classmethod
    def load(cls, path: Path | None = None) -> "SelectionRules":
        path = Path(path) if path else DEFAULT_RULES_PATH
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read selection rules {path}: {exc}") from exc
        names = [s.get("name") for s in raw.get("selections", [])]
        unknown = set(names) - set(MODALITIES)
        if unknown or not names:
            raise ValueError(f"selection rules {path}: selections must be named from {MODALITIES}, got {names}")
        return cls(raw)

    @property
    def selections(self) -> list[Mapping[str, Any]]:
        return list(self.raw["selections"])

    @property
    def weights(self) -> Mapping[str, float]:
        return self.raw["weights"]


#: ImageType values -> the kind of series they mark, for the reason a series is set aside.
_IMAGE_TYPE_KINDS: tuple[tuple[frozenset[str], str], ...] = (
    (frozenset({"LOCALIZER", "SCOUT"}), "localiser"),
    (frozenset({"PROJECTION IMAGE", "MIP", "MINIP", "MNIP"}), "projection"),
    (frozenset({"ADC", "TRACEW", "FA", "SUBTRACTION", "DIFFUSION", "PERFUSION"}), "map"),
    (frozenset({"SCREEN SAVE"}), "screen capture"),
)


def _image_type_kind(hit: set[str]) -> str:
    kinds = [kind for values, kind in _IMAGE_TYPE_KINDS if values & hit]
    return ", ".join(kinds) if kinds else "derived, not a reformat"


def is_reformat(header: SeriesHeader, rules: SelectionRules) -> bool:
    """Whether the series is a reformat (MPR) of an acquisition: its ImageType holds a value of
    the rules' ``series_filter.reformat_image_type``."""
    values = {t.upper() for t in rules.raw.get("series_filter", {}).get("reformat_image_type", [])}
    return bool(values.intersection(t.upper() for t in header.image_type))


def is_usable_image_series(header: SeriesHeader, rules: SelectionRules) -> tuple[bool, str]:
    """Whether a series can be an input channel at all, and why not."""
    flt = rules.raw.get("series_filter", {})
    modality_re = flt.get("Modality")
    if modality_re and not re.search(modality_re, header.modality or ""):
        return False, f"Modality {header.modality or '(none)'} is not MR"
    image_type = {t.upper() for t in header.image_type}
    excluded = {t.upper() for t in flt.get("exclude_image_type", [])}
    if is_reformat(header, rules):  # an MPR of an acquisition is an image, even if DERIVED / SECONDARY
        excluded -= {t.upper() for t in flt.get("reformat_may_also_be", [])}
    hit = excluded.intersection(image_type)
    if hit:
        return False, f"ImageType contains {'/'.join(sorted(hit))} ({_image_type_kind(hit)})"
    projection = flt.get("projection_description_pattern")
    text = f"{header.series_description} {header.protocol_name}"
    if projection and is_reformat(header, rules) and re.search(projection, text):
        return False, f"a reformat whose description '{header.series_description}' names a projection (MIP / MinIP)"
    if header.number_of_frames < int(flt.get("min_slices", 1)):
        return False, f"only {header.number_of_frames} slice(s)"
    return True, ""


def score_series(
    header: SeriesHeader, rules: SelectionRules, *, post_contrast: bool | None = False, phase_note: str = ""
) -> tuple[dict[str, float], list[str]]:
    """Score one series for every modality of the rules.

    ``post_contrast``: the series' contrast phase (see :mod:`operators.selection.contrast_phase`);
    None leaves the contrast rules out (used to find the T1-weighted series).

    Returns
    -------
    scores
        ``{modality: score}``; higher is more likely.
    reasons
        Human-readable notes on what contributed.
    """
    weights = rules.weights
    text = f"{header.series_description} | {header.protocol_name}"
    has_contrast = post_contrast
    scores: dict[str, float] = {}
    notes: list[str] = [phase_note] if phase_note else []
    for selection in rules.selections:
        name = selection["name"]
        conditions = selection.get("conditions", {})
        # SDK semantics: every condition regex must match its attribute.
        ok = all(
            re.search(str(pattern), str(getattr_header(header, key) or "")) for key, pattern in conditions.items()
        )
        if not ok:
            scores[name] = -math.inf
            continue
        score = 0.0
        if any(re.search(p, text) for p in selection.get("description_patterns", [])):
            score += weights["description"]
            notes.append(f"{name}: description matches")
        for key, (low, high) in selection.get("parameters", {}).items():
            value = getattr(header, _PARAMETER_FIELDS[key])
            if value is None:
                # No TI where TR is recorded: not an inversion-recovery series. Without any timing
                # (reformats often drop TR / TE / TI) the description and sequence decide.
                if key == "InversionTime" and header.repetition_time_ms is not None:
                    score += weights["parameter_out_of_range"]
                continue
            if low <= value <= high:
                score += weights["parameter_in_range"]
            else:
                score += weights["parameter_out_of_range"]
        for key in selection.get("parameters_absent", []):
            value = getattr(header, _PARAMETER_FIELDS[key])
            if value is not None and value > 0:
                score += weights["parameter_out_of_range"]
        codes = set(selection.get("scanning_sequence", []))
        if codes and codes.intersection(header.scanning_sequence):
            score += weights["scanning_sequence"]
        contrast_rule = selection.get("contrast", "any") if has_contrast is not None else "any"
        if contrast_rule == "required":
            score += weights["contrast_match"] if has_contrast else weights["contrast_violation"]
        elif contrast_rule == "forbidden" and has_contrast:
            score += weights["contrast_violation"]
        scores[name] = score
    return scores, notes


def getattr_header(header: SeriesHeader, dicom_keyword: str) -> Any:
    mapping = {
        "Modality": header.modality,
        "SeriesDescription": header.series_description,
        "ProtocolName": header.protocol_name,
        "MRAcquisitionType": header.mr_acquisition_type,
    }
    return mapping.get(dicom_keyword, "")


def classify(
    header: SeriesHeader, rules: SelectionRules, *, after_contrast: bool | None = None, phase_note: str = ""
) -> SeriesCandidate:
    """Decide the modality of one series (or ``"other"``) with reasons.

    ``after_contrast``: the series' contrast phase (True = post-contrast); None = judge it from
    this header alone (ContrastBolusAgent or a post-contrast description), as for a series
    seen on its own.
    """
    usable, why_not = is_usable_image_series(header, rules)
    if not usable:
        return SeriesCandidate(header.series_instance_uid, header.series_description, "other", {}, [why_not])
    if after_contrast is None:
        after_contrast = bool(header.contrast_bolus_agent.strip()) or bool(
            contrast_words(rules).search(f"{header.series_description} {header.protocol_name}"))
    scores, notes = score_series(header, rules, post_contrast=after_contrast, phase_note=phase_note)
    ranked = sorted(scores.items(), key=lambda kv: kv[1], reverse=True)
    best, best_score = ranked[0]
    runner_up = ranked[1][1] if len(ranked) > 1 else -math.inf
    params = (
        f"TR={header.repetition_time_ms} TE={header.echo_time_ms} TI={header.inversion_time_ms} "
        f"seq={'/'.join(header.scanning_sequence) or '-'}"
    )
    if best_score < float(rules.raw.get("min_score", 0.0)):
        reason = f"no modality scored high enough (best {best} {best_score:.1f}; {params})"
        return SeriesCandidate(header.series_instance_uid, header.series_description, "other", scores, [reason, *notes])
    if best_score - runner_up < float(rules.raw.get("min_margin", 0.0)):
        reason = f"ambiguous: {best} {best_score:.1f} vs {ranked[1][0]} {runner_up:.1f} ({params})"
        return SeriesCandidate(header.series_instance_uid, header.series_description, "other", scores, [reason, *notes])
    reason = f"classified {best} (score {best_score:.1f}, next {ranked[1][0]} {runner_up:.1f}; {params})"
    return SeriesCandidate(header.series_instance_uid, header.series_description, best, scores, [reason, *notes])


def _largest_voxel_edge(h: SeriesHeader) -> float:
    """The coarsest of the voxel's three edges (mm); 99 when unknown."""
    edges = [*(h.pixel_spacing_mm or (99.0, 99.0)), h.slice_thickness_mm or 99.0]
    return float(max(edges))


def _preference_key(series: LoadedSeries, preference: Sequence[str], phases: ContrastDecision,
                    rules: SelectionRules | None = None) -> tuple:
    h = series.header
    key: list[float] = []
    for rule in preference:
        if rule == "pre_contrast":  # known pre-contrast, then undetermined, then post-contrast
            key.append({"pre": 0, "undetermined": 1, "post": 2}.get(phases.phase_of(h.series_instance_uid), 1))
        elif rule == "earliest_acquisition":
            key.append(seconds_of_day(h.acquisition_time) or seconds_of_day(h.series_time) or 0.0)
        elif rule == "original_over_reformat":
            key.append(1 if rules is not None and is_reformat(h, rules) else 0)
        elif rule == "finest_resolution":
            key.append(round(_largest_voxel_edge(h), 1))
        elif rule == "axial":
            key.append(0 if slice_plane(h) == "axial" else 1)
        elif rule == "3d":
            key.append(0 if h.mr_acquisition_type.upper() == "3D" else 1)
        elif rule == "thinnest_slices":
            key.append(h.slice_thickness_mm if h.slice_thickness_mm else 99.0)
        elif rule == "most_slices":
            key.append(-h.number_of_frames)
        elif rule == "latest_acquisition":
            key.append(-(seconds_of_day(h.acquisition_time) or seconds_of_day(h.series_time) or 0.0))
        elif rule == "highest_series_number":
            key.append(-(h.series_number or 0))
    return tuple(key)


def contrast_words(rules: SelectionRules) -> re.Pattern[str]:
    """The description pattern that means post-contrast (rules ``contrast_phase.description_pattern``)."""
    pattern = rules.raw.get("contrast_phase", {}).get("description_pattern")
    return re.compile(pattern) if pattern else _CONTRAST_IN_TEXT


class _LazyImages(dict):
    """SeriesInstanceUID -> sitk.Image, built on first use (only the contrast check needs pixels).

    The :class:`~operators.dicom.series_volume.SeriesImage` built are kept in ``built`` and
    handed on with the selection, so that the registration does not build them again.
    """

    def __init__(self, series: Sequence[LoadedSeries]) -> None:
        super().__init__()
        self._series = {s.header.series_instance_uid: s for s in series}
        self.built: dict[str, Any] = {}

    def __missing__(self, uid: str) -> Any:
        from operators.dicom.series_volume import series_to_image

        s = self._series[uid]
        self.built[uid] = series_to_image(s.datasets, s.header.series_description)
        self[uid] = self.built[uid].image
        return self[uid]


def _t1_weighted(series: Sequence[LoadedSeries], rules: SelectionRules) -> list[str]:
    """UIDs of usable series that score best as T1 / T1ce with the contrast rules left out."""
    found = []
    for s in series:
        if not is_usable_image_series(s.header, rules)[0]:
            continue
        scores, _ = score_series(s.header, rules, post_contrast=None)
        best = max(scores, key=scores.get)
        if best in (Modality.T1, Modality.T1CE) and scores[best] >= float(rules.raw.get("min_score", 0.0)):
            found.append(s.header.series_instance_uid)
    return found


def select_usable_modalities(study: LoadedStudy, rules: SelectionRules) -> ModalitySelection:
    """:func:`select_modalities`, refusing a study in which no series is usable
    (:class:`operators.errors.NoUsableSeriesError`, one line naming each candidate's reason)."""
    from operators.errors import NoUsableSeriesError

    selection = select_modalities(study, rules)
    if not selection.selected:
        described = "; ".join(f"'{c.series_description}': {c.reasons[0]}" for c in selection.candidates)
        raise NoUsableSeriesError(
            f"none of the {len(study.series)} series is a usable FLAIR/T1/T1ce/T2 MR series ({described})")
    return selection


def select_modalities(study: LoadedStudy, rules: SelectionRules) -> ModalitySelection:
    """Classify every series of the study and pick at most one usable series per modality."""
    start = time.perf_counter()
    position = majority_patient_position(study.series)
    set_aside: dict[str, str] = {}
    usable_series = []
    for series in study.series:
        header_ok = is_usable_image_series(series.header, rules)[0]
        problem = image_problem(series, position) if header_ok else ""
        if problem:
            set_aside[series.header.series_instance_uid] = problem
        else:
            usable_series.append(series)
    images = _LazyImages(usable_series)
    phases = decide_phases(
        usable_series, _t1_weighted(usable_series, rules), images,
        rules.raw.get("contrast_phase", {}), contrast_words(rules),
    )
    if phases.status in ("undetermined", "inferred", "single_t1"):
        log = logger.warning if phases.status != "inferred" else logger.info
        log("Contrast phase: %s", phases.statement)

    candidates: list[SeriesCandidate] = []
    by_modality: dict[str, list[LoadedSeries]] = {m: [] for m in MODALITIES}
    for series in study.series:
        uid = series.header.series_instance_uid
        if uid in set_aside:
            candidate = SeriesCandidate(uid, series.header.series_description, "other", {},
                                        [f"set aside: {set_aside[uid]}"])
        else:
            phase = phases.phases.get(uid)
            note = f"contrast phase {phase.phase} ({phase.basis}): {'; '.join(phase.reasons)}" if phase else ""
            candidate = classify(series.header, rules, after_contrast=phases.phase_of(uid) == "post", phase_note=note)
        candidates.append(candidate)
        logger.info(
            "Series %s '%s': %s", series.header.series_number, series.header.series_description, candidate.reasons[0]
        )
        if candidate.modality in by_modality:
            by_modality[candidate.modality].append(series)

    preference = rules.raw.get("preference", [])
    selected: dict[Modality, LoadedSeries] = {}
    reasons: dict[Modality, str] = {}
    for modality in MODALITIES:
        options = by_modality[modality]
        if not options:
            reasons[modality] = "missing: no series classified as this modality"
            if modality == Modality.T1CE and phases.status == "undetermined":
                reasons[modality] = f"missing: {phases.statement}"
            continue
        order = list(preference)
        if phases.status == "undetermined" and modality in (Modality.T1, Modality.FLAIR):
            # !! contrast phase unknown: pre-contrast sequences are acquired first, so the earliest
            # series fills the T1 / FLAIR slot (never one that may follow the injection)
            order = ["earliest_acquisition", *order]
        options = sorted(options, key=lambda s: _preference_key(s, order, phases, rules))
        chosen = options[0]
        selected[modality] = chosen
        desc = (f"series {chosen.header.series_number} '{chosen.header.series_description}'"
                + (" (a reformat)" if is_reformat(chosen.header, rules) else ""))
        if len(options) > 1:
            others = ", ".join(f"{s.header.series_number}" for s in options[1:])
            reasons[modality] = f"{desc} chosen over series {others} by preference {'>'.join(order)}"
        else:
            reasons[modality] = f"{desc} (only candidate)"
    if set_aside:
        for series in study.series:
            uid = series.header.series_instance_uid
            if uid in set_aside:
                logger.warning("Series %s '%s' set aside: %s", series.header.series_number,
                               series.header.series_description, set_aside[uid])
    duration = time.perf_counter() - start
    logger.info(
        "Selected %s; missing %s (%.3f s)",
        {m: s.header.series_number for m, s in selected.items()},
        [m for m in MODALITIES if m not in selected] or "none",
        duration,
    )
    chosen = {s.header.series_instance_uid for s in selected.values()}
    return ModalitySelection(study, selected, candidates, reasons, duration, contrast=phases.as_dict(),
                             set_aside=dict(set_aside),
                             images={u: im for u, im in images.built.items() if u in chosen})
