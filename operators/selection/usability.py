"""Can a series serve as the image of its modality? Checks on its pixels and position.

Headers say what a series claims to be; a viewer's lesion mask saved back as an MR series
(ORIGINAL\\PRIMARY, a FLAIR-like description, the highest series number) claims to be the
best FLAIR. What it holds gives it away: a handful of distinct values (a mask or label map),
or one value (blank). A series acquired in another patient position than the rest of the
exam (feet first among head first) cannot be combined with them either.

Such a series is set aside with its reason; the selector then takes the next-best series of
that modality.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from operators.study_model import LoadedSeries

__all__ = ["MIN_DISTINCT_VALUES", "image_problem", "majority_patient_position"]

#: Fewer distinct pixel values than this (over the sampled slices) is a mask / label map,
#: not an MR image (real MR magnitude images hold hundreds to thousands).
MIN_DISTINCT_VALUES = 16
#: Slices sampled per series for the check (evenly spread).
_SAMPLED_SLICES = 12


def _sampled_pixels(series: LoadedSeries) -> np.ndarray | None:
    datasets = series.datasets
    if not datasets:
        return None
    if len(datasets) == 1 and int(datasets[0].get("NumberOfFrames", 1) or 1) > 1:
        frames = datasets[0].pixel_array
        picks = np.linspace(0, frames.shape[0] - 1, min(_SAMPLED_SLICES, frames.shape[0])).round().astype(int)
        return np.asarray(frames[picks])
    picks = np.linspace(0, len(datasets) - 1, min(_SAMPLED_SLICES, len(datasets))).round().astype(int)
    return np.stack([np.asarray(datasets[int(k)].pixel_array) for k in sorted(set(picks.tolist()))])


def majority_patient_position(series: Sequence[LoadedSeries]) -> str:
    """The PatientPosition most series of the study were acquired in ("" when none says)."""
    counts = Counter(s.header.patient_position for s in series if s.header.patient_position)
    return counts.most_common(1)[0][0] if counts else ""


def image_problem(series: LoadedSeries, study_position: str = "") -> str:
    """Why ``series`` cannot serve as an MR image of its modality; "" when it can.

    Parameters
    ----------
    series
        The series with its datasets (pixel data is decoded for up to 12 slices).
    study_position
        The exam's PatientPosition (e.g. ``HFS``); a series in another position is refused.
    """
    position = series.header.patient_position
    if study_position and position and position != study_position:
        return f"patient position {position} differs from the exam's {study_position}"
    try:
        pixels = _sampled_pixels(series)
    except Exception:  # undecodable pixels: the volume builder refuses them with its own message
        return ""
    if pixels is None:
        return ""
    distinct = np.unique(pixels)
    if distinct.size == 1:
        return f"constant pixel value {distinct[0]:g}: a blank image"
    if distinct.size < MIN_DISTINCT_VALUES:
        shown = ", ".join(f"{v:g}" for v in distinct[:6]) + (" ..." if distinct.size > 6 else "")
        return (f"only {distinct.size} distinct pixel values ({shown}): a mask, label map or overlay "
                "stored as an image")
    return ""
