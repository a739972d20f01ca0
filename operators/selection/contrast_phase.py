"""Pre- or post-contrast: the phase of each series, from every piece of evidence there is.

Clinical exams often say nothing: the pre- and post-contrast T1 share one protocol name, no
ContrastBolus* attribute is written, only the acquisition order and the images differ. The
evidence, strongest first:

1. **Header** -- ContrastBolusAgent (or its Enhanced MR code sequence) on the series.
2. **Description** -- words such as ``post``, ``+C``, ``Gd`` (site-editable, see the rules).
   Any series acquired after a series with header or description evidence (or after
   ContrastBolusStartTime) is post-contrast too.
3. **Acquisition order** -- with no header or description evidence at all, the T1-weighted
   series are ordered by acquisition time: the earliest is the pre-contrast candidate, a
   T1-weighted series acquired at least ``min_gap_minutes`` later is a post-contrast
   candidate.
4. **Image evidence** -- for each such later series, enhancement relative to the earliest:
   both on one coarse grid (3 mm; series of another frame of reference registered rigidly
   first, those of the same one compared as they lie), each divided by
   its median inside the head, the difference ``later - earliest`` per voxel; structures that
   always enhance (vessels, dural sinuses, choroid plexus; and enhancing tumour) make its
   upper tail (99.5th percentile) much longer than its lower tail (0.5th). The index
   ``(up - down) / (up + down)`` is > 0 when the later series enhances, < 0 when the earlier
   one does, ~0 when both are alike; when both tails are tiny the images are identical.

Order and image must agree for a series to be called post-contrast without header help;
image evidence alone (no time gap) also decides, and says so. When they conflict or there is
no evidence, the phase is **undetermined**: every T1-weighted series is then treated as
pre-contrast (T1ce missing, enhancing tumour not assessed) and the report says so -- never a
silent guess. A single T1-weighted series without evidence is taken as pre-contrast, stated.
"""
from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from operators.study_model import LoadedSeries, SeriesHeader

__all__ = ["ContrastDecision", "SeriesPhase", "decide_phases", "enhancement_index", "seconds_of_day"]

logger = logging.getLogger(__name__)

_COARSE_MM = 3.0
_SMOOTH_FACTOR = 0.5  # Gaussian sigma = _COARSE_MM * this (mm)
_EDGE_VOXELS = 2  # coarse voxels left out along the head's edge


@dataclass(frozen=True)
class SeriesPhase:
    """The contrast phase of one series and the evidence for it."""

    phase: str  # "pre" | "post" | "undetermined"
    basis: str  # "header" | "description" | "after_contrast" | "order_and_image" | "image" | "none"
    reasons: tuple[str, ...]


@dataclass
class ContrastDecision:
    """Phases of every series of a study, and the study-level statement."""

    phases: dict[str, SeriesPhase] = field(default_factory=dict)
    """SeriesInstanceUID -> phase."""
    status: str = "not_needed"
    """``header`` (explicit evidence), ``inferred`` (order / image), ``undetermined``,
    ``single_t1`` (one T1-weighted series, no evidence) or ``not_needed`` (no T1-weighted series)."""
    statement: str = ""
    enhancement: dict[str, dict[str, float]] = field(default_factory=dict)
    """SeriesInstanceUID of a later T1-weighted series -> the image measurement against the earliest."""

    def phase_of(self, uid: str) -> str:
        return self.phases[uid].phase if uid in self.phases else "pre"

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "statement": self.statement,
            "series": {u: {"phase": p.phase, "basis": p.basis, "reasons": list(p.reasons)} for u, p in self.phases.items()},
            "enhancement": self.enhancement,
        }


def seconds_of_day(text: str) -> float | None:
    """Seconds since midnight of a DICOM TM (``HHMMSS.FFFFFF``) or DT value; None if absent."""
    digits = re.sub(r"[^0-9.]", "", text or "")
    if len(digits.split(".")[0]) >= 14:  # DT: YYYYMMDDHHMMSS...
        digits = digits[8:]
    m = re.match(r"(\d{2})(\d{2})?(\d{2})?(\.\d+)?", digits)
    if not m:
        return None
    return int(m.group(1)) * 3600 + int(m.group(2) or 0) * 60 + int(m.group(3) or 0) + float(m.group(4) or 0)


def _time_of(header: SeriesHeader) -> float | None:
    return seconds_of_day(header.acquisition_time) or seconds_of_day(header.series_time)


def _coarse(image: sitk.Image, grid: sitk.Image, transform: sitk.Transform | None = None) -> np.ndarray:
    smoothed = sitk.SmoothingRecursiveGaussian(image, _COARSE_MM * _SMOOTH_FACTOR)
    return sitk.GetArrayFromImage(sitk.Resample(smoothed, grid, transform or sitk.Transform(), sitk.sitkLinear, 0.0))


def enhancement_index(earlier: sitk.Image, later: sitk.Image, *, register: bool = False) -> dict[str, float]:
    """How much brighter the later series' bright structures are than the earlier one's.

    Both images in LPS mm. Series of one frame of reference are compared as they lie
    (``register=False``); otherwise the later one is first rigidly registered to the earlier
    (:func:`operators.spatial.registration.register_rigid`). Returns ``up`` (99.5th percentile
    of ``later/median - earlier/median`` inside the head), ``down`` (minus its 0.5th
    percentile) and ``index = (up - down) / (up + down)`` (0 when both are ~0), and
    ``registered``.
    """
    transform: sitk.Transform = sitk.Transform()
    if register:
        from operators.spatial.registration import register_rigid

        transform = register_rigid(earlier, later, seed=1, initializer="identity").transform
    size = [max(int(round(n * s / _COARSE_MM)), 1) for n, s in zip(earlier.GetSize(), earlier.GetSpacing())]
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetOrigin(earlier.GetOrigin())
    grid.SetDirection(earlier.GetDirection())
    grid.SetSpacing([_COARSE_MM] * 3)
    a = _coarse(sitk.Cast(earlier, sitk.sitkFloat32), grid)
    b = _coarse(sitk.Cast(later, sitk.sitkFloat32), grid, transform)
    head = (a > 0.1 * np.percentile(a, 99)) & (b > 0.1 * np.percentile(b, 99))
    # !! away from the head's edge: where the image falls to the background, a slight shift
    # or a thicker slice makes large differences of both signs that are not enhancement
    head = ndimage.binary_erosion(head, iterations=_EDGE_VOXELS)
    if head.sum() < 100:
        return {"up": 0.0, "down": 0.0, "index": 0.0, "voxels": int(head.sum()), "registered": register}
    d = b[head] / np.median(b[head]) - a[head] / np.median(a[head])
    up, down = float(np.percentile(d, 99.5)), float(-np.percentile(d, 0.5))
    up, down = max(up, 0.0), max(down, 0.0)
    index = (up - down) / (up + down) if up + down > 1e-6 else 0.0
    return {"up": round(up, 4), "down": round(down, 4), "index": round(index, 4), "voxels": int(head.sum()),
            "registered": register}


def _explicit(header: SeriesHeader, contrast_words: re.Pattern[str]) -> tuple[str, str] | None:
    if header.contrast_bolus_agent.strip():
        return "header", f"ContrastBolusAgent '{header.contrast_bolus_agent.strip()}'"
    text = f"{header.series_description} {header.protocol_name}"
    if contrast_words.search(text):
        return "description", f"description '{header.series_description}' says post-contrast"
    return None


def decide_phases(
    series: Sequence[LoadedSeries],
    t1_weighted: Sequence[str],
    image_of: Mapping[str, Any],
    rules: Mapping[str, Any],
    contrast_words: re.Pattern[str],
) -> ContrastDecision:
    """The contrast phase of every series.

    Parameters
    ----------
    series
        All image series of the study.
    t1_weighted
        SeriesInstanceUIDs of the series whose parameters make them T1-weighted (candidates
        for T1 / T1ce).
    image_of
        Callable-like mapping ``uid -> sitk.Image`` (built lazily by the caller); used only
        for T1-weighted pairs when the headers say nothing.
    rules
        The ``contrast_phase`` section of the selection rules: ``min_gap_minutes``,
        ``enhanced_index`` (index above which the later series enhances), ``identical_tail``
        (tails below which two series count as identical).
    contrast_words
        The description pattern for post-contrast.
    """
    decision = ContrastDecision()
    headers = {s.header.series_instance_uid: s.header for s in series}
    times = {u: _time_of(h) for u, h in headers.items()}

    explicit = {u: e for u, h in headers.items() if (e := _explicit(h, contrast_words)) is not None}
    if explicit:
        starts = [seconds_of_day(str(ds.get("ContrastBolusStartTime", "")))
                  for s in series if s.header.series_instance_uid in explicit for ds in s.datasets[:1]]
        post_times = [times[u] for u in explicit if times[u] is not None] + [t for t in starts if t is not None]
        injection = min(post_times) if post_times else math.inf
        for u in headers:
            if u in explicit:
                basis, why = explicit[u]
                decision.phases[u] = SeriesPhase("post", basis, (why,))
            elif times[u] is not None and times[u] > injection:
                decision.phases[u] = SeriesPhase("post", "after_contrast", ("acquired after the first post-contrast series",))
            else:
                decision.phases[u] = SeriesPhase("pre", "header", ("no contrast agent recorded; acquired before contrast",))
        decision.status = "header"
        decision.statement = "contrast phase from the headers / descriptions"
        return decision

    t1s = [u for u in t1_weighted if u in headers]
    for u in headers:
        decision.phases[u] = SeriesPhase("pre", "none", ("no contrast evidence",))
    if not t1s:
        return decision
    if len(t1s) == 1:
        decision.status = "single_t1"
        decision.statement = ("one T1-weighted series and no contrast evidence: taken as pre-contrast T1 "
                              "(T1ce missing)")
        decision.phases[t1s[0]] = SeriesPhase("pre", "none", (decision.statement,))
        return decision

    def order_key(u: str) -> tuple[float, int]:
        t = times[u]
        return (t if t is not None else math.inf, headers[u].series_number or 0)

    ordered = sorted(t1s, key=order_key)
    first = ordered[0]
    min_gap = float(rules.get("min_gap_minutes", 3.0)) * 60
    enhanced_at = float(rules.get("enhanced_index", 0.15))
    identical_tail = float(rules.get("identical_tail", 0.05))
    post: list[str] = []
    conflicts: list[str] = []
    for u in ordered[1:]:
        h = headers[u]
        gap = (times[u] - times[first]) if times[u] is not None and times[first] is not None else None
        order_says_post = gap is not None and gap >= min_gap
        try:
            same_frame = not (headers[first].frame_of_reference_uid and h.frame_of_reference_uid
                              and headers[first].frame_of_reference_uid != h.frame_of_reference_uid)
            m = enhancement_index(image_of[first], image_of[u], register=not same_frame)
        except Exception as exc:  # an image that cannot be compared is no evidence
            logger.warning("contrast check of series %s failed: %s", h.series_number, exc)
            m = {"up": 0.0, "down": 0.0, "index": 0.0, "voxels": 0, "error": str(exc)}
        decision.enhancement[u] = m
        gap_text = f"{gap / 60:.1f} min after series {headers[first].series_number}" if gap is not None \
            else "acquisition time unknown"
        if m["up"] < identical_tail and m["down"] < identical_tail:
            image = "identical"
        elif m["index"] >= enhanced_at:
            image = "enhanced"
        elif m["index"] <= -enhanced_at:
            image = "reversed"
        else:
            image = "inconclusive"
        image_text = (f"enhancement index {m['index']:+.2f} (tails {m['up']:.2f} / {m['down']:.2f}) "
                      f"vs series {headers[first].series_number}: {image}")
        if image == "enhanced" and order_says_post:
            decision.phases[u] = SeriesPhase("post", "order_and_image", (
                f"T1-weighted, acquired {gap_text} and brighter in always-enhancing structures: post-contrast",
                image_text))
            post.append(u)
        elif image == "enhanced":
            decision.phases[u] = SeriesPhase("post", "image", (
                f"T1-weighted, {gap_text} (no gap to go by); the images show enhancement: post-contrast",
                image_text))
            post.append(u)
        else:
            why = ("order says post-contrast but the images show no enhancement" if order_says_post
                   else "no time gap and no enhancement")
            conflicts.append(f"series {h.series_number}: {why}")
            decision.phases[u] = SeriesPhase("undetermined", "none", (f"{why} ({gap_text})", image_text))
    if post:
        decision.status = "inferred"
        nums = ", ".join(str(headers[u].series_number) for u in post)
        decision.statement = (f"no contrast attribute in the headers; series {nums} judged post-contrast from "
                              f"acquisition order and image enhancement against series {headers[first].series_number}")
        decision.phases[first] = SeriesPhase("pre", "order_and_image", (
            f"earliest T1-weighted series; later series {nums} enhance against it: pre-contrast",))
        injection = min(times[u] for u in post if times[u] is not None) if any(times[u] is not None for u in post) \
            else math.inf
        for u in headers:
            if u not in t1s and times[u] is not None and times[u] > injection:
                decision.phases[u] = SeriesPhase("post", "after_contrast", (
                    "acquired after the first series judged post-contrast",))
        for u in t1s:
            if decision.phases[u].phase == "undetermined":  # alike the pre series: pre
                decision.phases[u] = SeriesPhase("pre", "none", decision.phases[u].reasons)
        if conflicts:
            decision.statement += "; " + "; ".join(conflicts)
        return decision
    decision.status = "undetermined"
    decision.statement = ("contrast phase undetermined: " + "; ".join(conflicts)
                          + ". All T1-weighted series are treated as pre-contrast: T1ce missing, "
                          "enhancing tumour not assessed from contrast")
    for u in t1s:
        decision.phases[u] = SeriesPhase("undetermined", "none", (decision.statement,))
    return decision
