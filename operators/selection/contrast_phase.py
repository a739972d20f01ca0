"""Pre- or post-contrast: the phase of each series, from every piece of evidence there is.

Clinical exams often say nothing: the pre- and post-contrast T1 share one protocol name, no
ContrastBolus* attribute is written, only the acquisition order and the images differ. The
evidence, strongest first:

1. **Header** -- ContrastBolusAgent (or its Enhanced MR code sequence) on the series.
2. **Description** -- words such as ``post``, ``+C``, ``Gd`` (site-editable, see the rules).
   Any series acquired after a series with header or description evidence (or after
   ContrastBolusStartTime) is post-contrast too.
3. **Like-for-like images** -- with no header or description evidence at all, each later
   T1-weighted series is compared with the earlier one most like it (:func:`likeness`: the same
   protocol and description, then the same fat suppression, 2-D / 3-D, plane). A pair of the
   same kind (:func:`like_for_like`: same fat suppression, and the same protocol or the same
   2-D / 3-D and plane) decides: both on one coarse grid (3 mm; another frame of reference is
   registered rigidly first), each divided by its median inside the head, the difference
   ``later - earlier`` per voxel; structures that always enhance (vessels, dural sinuses,
   choroid plexus; and enhancing tumour) make its upper tail (99.5th percentile) much longer
   than its lower tail (0.5th). The index ``(up - down) / (up + down)`` >= ``enhanced_index``:
   post-contrast; otherwise pre-contrast, **whatever the acquisition order** (several
   pre-contrast T1s of different kinds are normal).
4. **Another kind** -- a series with no earlier series of its kind is compared with the latest
   earlier pre-contrast series of the **same fat suppression** (fat suppression changes a T1
   image more than gadolinium does: never compared across it); it is post-contrast when enhanced
   against it *and* acquired at least ``min_gap_minutes`` later (or at all later, once a
   like-for-like pair has shown that contrast was given), or when acquired after a like-for-like
   post-contrast series and nothing of its fat suppression came before.

Every comparison (pair, index, like-for-like or not, decision) is recorded. When no series is
found post-contrast the phase is **undetermined**: the earliest T1-weighted series fills the T1
slot (pre-contrast sequences are acquired first; the selector also takes the earliest FLAIR), no
later series ever does, T1ce is missing and the report says so -- never a silent guess. A single
T1-weighted series without evidence is taken as pre-contrast, stated.
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

__all__ = ["ContrastDecision", "SeriesKind", "SeriesPhase", "decide_phases", "enhancement_index", "like_for_like",
           "likeness", "seconds_of_day", "series_kind", "slice_plane"]

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
    enhancement: dict[str, dict[str, Any]] = field(default_factory=dict)
    """SeriesInstanceUID of a later T1-weighted series -> the image measurement against the earlier
    series it was compared with (``against_series``, ``like_for_like``, ``image``, ``gap_min``)."""
    comparisons: list[dict[str, Any]] = field(default_factory=list)
    """Every comparison made: series, against_series, index, like_for_like, image, decision."""

    def phase_of(self, uid: str) -> str:
        return self.phases[uid].phase if uid in self.phases else "pre"

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "statement": self.statement,
            "series": {u: {"phase": p.phase, "basis": p.basis, "reasons": list(p.reasons)} for u, p in self.phases.items()},
            "enhancement": self.enhancement,
            "comparisons": self.comparisons,
        }


#: Words of a description / protocol that say the fat signal is suppressed.
_FAT_WORDS = re.compile(r"(?i)(?<![a-z])(fs|spir|spair|stir|fat[ _-]?sat|fatsup)(?![a-z])")


@dataclass(frozen=True)
class SeriesKind:
    """What makes two T1-weighted series comparable image for image."""

    name: str  # SeriesDescription | ProtocolName, lower case
    fat_suppressed: bool
    acquisition: str  # "2D" | "3D" | ""
    plane: str  # "axial" | "coronal" | "sagittal" | "unknown"


def series_kind(h: SeriesHeader) -> SeriesKind:
    """The series' kind from its header: fat suppression from ScanOptions (``FS``, ``SFS``) or its
    description / protocol words (FS, fat sat, SPIR, SPAIR, STIR); 2-D / 3-D; the slice plane."""
    text = f"{h.series_description} {h.protocol_name}"
    fat = any(o.upper() in ("FS", "SFS", "FAT_SAT") for o in h.scan_options) or bool(_FAT_WORDS.search(text))
    return SeriesKind(f"{h.series_description}|{h.protocol_name}".strip().lower(), fat,
                      h.mr_acquisition_type.upper(), slice_plane(h))


def slice_plane(h: SeriesHeader) -> str:
    """'axial' / 'coronal' / 'sagittal' from the slice normal's dominant LPS axis ('unknown'
    without an orientation)."""
    if not h.image_orientation or len(h.image_orientation) != 6:
        return "unknown"
    normal = np.abs(np.cross(np.asarray(h.image_orientation[:3]), np.asarray(h.image_orientation[3:])))
    return ("sagittal", "coronal", "axial")[int(np.argmax(normal))]


def likeness(a: SeriesKind, b: SeriesKind) -> tuple[bool, bool, bool, bool]:
    """How alike two series are, most telling first: same protocol and description, same fat
    suppression (it changes a T1 image more than gadolinium does), same 2-D / 3-D, same plane."""
    return (a.name == b.name, a.fat_suppressed == b.fat_suppressed,
            bool(a.acquisition) and a.acquisition == b.acquisition, a.plane == b.plane)


def like_for_like(a: SeriesKind, b: SeriesKind) -> bool:
    """Whether an image comparison of the two decides the phase: the same fat suppression and
    the same protocol, or the same fat suppression, 2-D / 3-D and plane."""
    same_name, same_fat, same_acq, same_plane = likeness(a, b)
    return same_fat and (same_name or (same_acq and same_plane))


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
    _infer_from_images(decision, series, t1s, headers, times, image_of, rules)
    return decision


def _infer_from_images(decision: ContrastDecision, series: Sequence[LoadedSeries], t1s: Sequence[str],
                       headers: Mapping[str, SeriesHeader], times: Mapping[str, float | None],
                       image_of: Mapping[str, Any], rules: Mapping[str, Any]) -> None:
    """The phases of the T1-weighted series from like-for-like image comparisons (module doc)."""

    def order_key(u: str) -> tuple[float, int]:
        t = times[u]
        return (t if t is not None else math.inf, headers[u].series_number or 0)

    ordered = sorted(t1s, key=order_key)
    first = ordered[0]
    min_gap = float(rules.get("min_gap_minutes", 3.0)) * 60
    enhanced_at = float(rules.get("enhanced_index", 0.15))
    identical_tail = float(rules.get("identical_tail", 0.05))
    kinds = {u: series_kind(headers[u]) for u in ordered}
    number = {u: headers[u].series_number for u in ordered}

    def compare(earlier: str, later: str, like: bool) -> tuple[str, str, float | None]:
        h, e = headers[later], headers[earlier]
        try:
            same_frame = not (e.frame_of_reference_uid and h.frame_of_reference_uid
                              and e.frame_of_reference_uid != h.frame_of_reference_uid)
            m = enhancement_index(image_of[earlier], image_of[later], register=not same_frame)
        except Exception as exc:  # an image that cannot be compared is no evidence
            logger.warning("contrast check of series %s failed: %s", h.series_number, exc)
            m = {"up": 0.0, "down": 0.0, "index": 0.0, "voxels": 0, "error": str(exc)}
        if m["up"] < identical_tail and m["down"] < identical_tail:
            image = "identical"
        elif m["index"] >= enhanced_at:
            image = "enhanced"
        elif m["index"] <= -enhanced_at:
            image = "reversed"
        else:
            image = "inconclusive"
        gap = (times[later] - times[earlier]) if times[later] is not None and times[earlier] is not None else None
        gap_text = (f"{gap / 60:.1f} min after series {e.series_number}" if gap is not None
                    else "acquisition time unknown")
        decision.enhancement[later] = {**m, "against_series": e.series_number, "like_for_like": like,
                                       "image": image, "gap_min": round(gap / 60, 2) if gap is not None else None}
        text = (f"enhancement index {m['index']:+.2f} (tails {m['up']:.2f} / {m['down']:.2f}) vs series "
                f"{e.series_number} ({'same kind' if like else 'same fat suppression'}): {image}")
        return image, f"{gap_text}; {text}", gap

    # 1. Each later T1-weighted series against the earlier one most like it (same protocol, fat
    #    suppression, 2-D / 3-D, plane); only a like-for-like pair decides here.
    post: list[str] = []
    pre: set[str] = {first}
    pending: list[str] = []
    for i, u in enumerate(ordered[1:], start=1):
        earlier = ordered[:i]
        comparator = max(earlier, key=lambda e: (likeness(kinds[e], kinds[u]), order_key(e)))
        if not like_for_like(kinds[comparator], kinds[u]):
            pending.append(u)
            continue
        image, text, gap = compare(comparator, u, like=True)
        if image == "enhanced":
            basis = "order_and_image" if gap is not None and gap >= min_gap else "image"
            decision.phases[u] = SeriesPhase("post", basis, (
                f"T1-weighted, brighter in always-enhancing structures than series {number[comparator]} of the "
                f"same kind: post-contrast", text))
            post.append(u)
            pre.add(comparator)
        else:
            decision.phases[u] = SeriesPhase("pre", "like_for_like", (
                f"no enhancement against series {number[comparator]} of the same kind: pre-contrast, whatever "
                "the acquisition order", text))
            pre.add(u)
    # 2. A series of another kind: against the latest earlier pre-contrast series of the same fat
    #    suppression (fat suppression changes a T1 image more than gadolinium does: never across
    #    it), by acquisition order and image; after a like-for-like post-contrast series, by order.
    conflicts: list[str] = []
    shown = bool(post)  # a like-for-like pair shows that contrast was given in this exam
    for u in pending:
        if u in pre:
            continue  # the like-for-like pre-contrast series of a post-contrast one
        first_post = min((order_key(p) for p in post), default=None)
        same_fat = [e for e in pre if order_key(e) < order_key(u) and kinds[e].fat_suppressed == kinds[u].fat_suppressed]
        if not same_fat:
            if first_post is not None and order_key(u) > first_post:
                decision.phases[u] = SeriesPhase("post", "after_contrast", (
                    "acquired after a series judged post-contrast; no earlier pre-contrast series of its fat "
                    "suppression to compare with",))
                post.append(u)
                continue
            why = "no earlier pre-contrast series of the same fat suppression to compare with"
            conflicts.append(f"series {number[u]}: {why}")
            decision.phases[u] = SeriesPhase("undetermined", "none", (why,))
            continue
        comparator = max(same_fat, key=lambda e: (likeness(kinds[e], kinds[u]), order_key(e)))
        image, text, gap = compare(comparator, u, like=False)
        # acquired well after it, or (contrast shown given by a like-for-like pair) simply after it
        order_says_post = gap is not None and (gap >= min_gap or (shown and gap > 0))
        if image == "enhanced" and order_says_post:
            decision.phases[u] = SeriesPhase("post", "order_and_image", (
                f"T1-weighted, acquired {gap / 60:.1f} min after pre-contrast series {number[comparator]} of the same "
                "fat suppression and brighter in always-enhancing structures: post-contrast", text))
            post.append(u)
        elif image == "identical" and post:
            decision.phases[u] = SeriesPhase("pre", "image", (f"the same image as series {number[comparator]}", text))
            pre.add(u)
        else:
            why = (f"order says post-contrast but the images show no enhancement against series {number[comparator]}"
                   if order_says_post else f"no time gap to series {number[comparator]} of another kind")
            conflicts.append(f"series {number[u]}: {why}")
            decision.phases[u] = SeriesPhase("undetermined", "none", (why, text))
    decision.comparisons = [{"series": number[u], "against_series": m["against_series"], "index": m["index"],
                             "like_for_like": m["like_for_like"], "image": m["image"],
                             "decision": decision.phases[u].phase}
                            for u, m in decision.enhancement.items()]
    if post:
        decision.status = "inferred"
        nums = ", ".join(str(number[u]) for u in sorted(post, key=order_key))
        decision.statement = (f"no contrast attribute in the headers; series {nums} judged post-contrast from "
                              "acquisition order and image enhancement against earlier series of the same kind")
        injection = min((times[u] for u in post if times[u] is not None), default=math.inf)
        for u in headers:
            if u not in t1s and times[u] is not None and times[u] > injection:
                decision.phases[u] = SeriesPhase("post", "after_contrast", (
                    "acquired after the first series judged post-contrast",))
        if first not in post and decision.phases[first].basis == "none":
            decision.phases[first] = SeriesPhase("pre", "order_and_image", (
                "earliest T1-weighted series: pre-contrast",))
        for u in pre:
            if decision.phases[u].basis == "none":
                decision.phases[u] = SeriesPhase("pre", "like_for_like", (
                    "later series of its kind enhance against it: pre-contrast",))
        if conflicts:
            decision.statement += "; " + "; ".join(conflicts)
        return
    decision.status = "undetermined"
    decision.statement = ("contrast phase undetermined: " + ("; ".join(conflicts) or "no series enhances against an "
                          "earlier one of its kind") + f". The earliest T1-weighted series (series {number[first]}) is "
                          "used as T1 (pre-contrast sequences come first): T1ce missing, enhancing tumour not "
                          "assessed from contrast")
    decision.phases[first] = SeriesPhase("pre", "earliest", (decision.statement,))
    for u in ordered[1:]:
        if decision.phases[u].phase != "pre" or decision.phases[u].basis != "like_for_like":
            decision.phases[u] = SeriesPhase("undetermined", "none", (decision.statement,))
