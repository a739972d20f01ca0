"""An exam with a single post-contrast T1 SE series of thick, gapped slices
(``make_study --clinical thick-post``).

What the app once turned into a 215 ml "whole tumour" on every slice (issue "Real clinical
exams III", exam 3): a 3 T study whose only diagnostic series is an axial T1 spin echo after
gadolinium, 5 mm slices every 6.5 mm (1.5 mm gaps), the contrast agent recorded in the header.

================  ======================================================  ====================
series            content                                                 the app should
================  ======================================================  ====================
localiser         3 slices of the BraTS t1                                set aside (size)
T1 SE +C          BraTS t1ce averaged over 5 mm slabs every 6.5 mm        pick as T1ce, then
                  (SliceThickness 5, SpacingBetweenSlices 6.5),          refuse: no region
                  ContrastBolusAgent / Ingredient recorded                 reaches the bar
================  ======================================================  ====================

FLAIR, T1 and T2 are absent: the subset is T1ce alone, for which the measured held-out Dice of
every region is below the app's bar, so the study must be refused with exit 2 and its one-line
reason, and nothing written. ``study.json`` ``clinical.expected`` names the series the app should
pick; the selector never reads it.
"""
from __future__ import annotations

import dataclasses
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from scipy.ndimage import uniform_filter1d

from samples.dicom_writer import SeriesPlan, deterministic_uid, sanitise, staged_dicom_folder, study_context, write_series
from samples.scanner_protocols import SequenceProtocol
from samples.volumes import (
    StudyBuildError,
    Volume,
    case_file,
    case_id_of,
    crop_slab,
    load_case,
    validate_slab,
    write_ground_truth,
)

__all__ = ["SLICE_SPACING_MM", "SLICE_THICKNESS_MM", "make_thick_post_study", "thick_gapped"]

#: Slice thickness of the post-contrast series (mm).
SLICE_THICKNESS_MM = 5.0
#: Distance between the centres of neighbouring slices (mm): 1.5 mm gaps.
SLICE_SPACING_MM = 6.5

_SE = ("ORIGINAL", "PRIMARY", "M", "NORM", "DIS2D")
_PROTOCOLS = {
    "localiser": SequenceProtocol("localizer", "localizer", ("GR",), ("SP",), (), "*fl2d1", 8.6, 4.0, None,
                                     20.0, 1, _SE, 20),
    "t1ce": SequenceProtocol("t1_se_tra_KM", "t1_se_tra_KM", ("SE",), ("SK", "SP"), (), "se2d1", 550.0, 10.0,
                                None, 90.0, 1, _SE, 182, contrast=True),
}


def thick_gapped(vol: Volume, thickness_mm: float = SLICE_THICKNESS_MM,
                 spacing_mm: float = SLICE_SPACING_MM) -> Volume:
    """Slices of ``thickness_mm`` every ``spacing_mm`` from a volume of thin slices.

    Each new slice is the mean of the original slices within its slab (a thick slice integrates
    the signal across its thickness); the first slab starts at the first original slice, the next
    ones follow every ``spacing_mm`` (centres between original slices are interpolated linearly).
    In-plane sampling is unchanged.

    Parameters
    ----------
    vol
        Data indexed (i, j, k), k the slice axis; ``thickness_mm`` must be an odd number of its
        slices.
    """
    dz = float(vol.spacing[2])
    width = int(round(thickness_mm / dz))
    if width < 1 or width % 2 == 0 or not np.isclose(width * dz, thickness_mm):
        raise StudyBuildError(f"{thickness_mm} mm is not an odd number of {dz} mm slices")
    n_k = vol.data.shape[2]
    if n_k < width:
        raise StudyBuildError(f"{n_k} slices are thinner than one {thickness_mm} mm slab")
    averaged = uniform_filter1d(vol.data.astype(np.float64), size=width, axis=2, mode="nearest")
    half = width // 2
    centres = np.arange(half, n_k - half, spacing_mm / dz)  # fractional slice indices
    below = np.floor(centres).astype(int)
    above = np.minimum(below + 1, n_k - 1)
    w = (centres - below)[None, None, :]
    data = np.rint((1.0 - w) * averaged[:, :, below] + w * averaged[:, :, above]).astype(np.int16)
    affine = vol.affine_lps.copy()
    affine[:3, 3] = (vol.affine_lps @ np.array([0.0, 0.0, float(half), 1.0]))[:3]
    affine[:3, 2] = vol.affine_lps[:3, 2] * (spacing_mm / dz)
    return Volume(data=data, affine_lps=affine)


def _set_thickness(folder: Path, thickness_mm: float) -> None:
    """SliceThickness is the slab, SpacingBetweenSlices the centre-to-centre distance."""
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.SliceThickness = f"{thickness_mm:g}"
        ds.save_as(path, enforce_file_format=True)


def make_thick_post_study(case_dir: str | Path, out_dir: str | Path, *, seed: int = 0,
                          slices: tuple[int, int] | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Write the single thick-slice post-contrast exam of one BraTS case (module docstring).

    Parameters
    ----------
    case_dir, out_dir, seed, slices, overwrite
        As :func:`samples.make_study.make_study` (``<out>/dicom``, ``<out>/ground_truth.nii.gz``
        on the BraTS 1 mm grid, ``<out>/study.json``).

    Returns
    -------
    dict
        The content of ``study.json``; ``clinical.expected``: ``{"t1ce": SeriesInstanceUID}``.
    """
    case_dir, out_dir = Path(case_dir), Path(out_dir)
    case_id = case_id_of(case_dir)
    vols = load_case(case_dir, ("t1", "t1ce"))
    seg_path = case_file(case_dir, "seg")
    slab = validate_slab(slices, vols["t1ce"].data.shape[2])
    if slab is not None:
        vols = {m: crop_slab(v, slab) for m, v in vols.items()}
    ctx = study_context(case_id, seed, None, slab)
    ctx = dataclasses.replace(ctx, study_uid=deterministic_uid(seed, ctx.uid_case, "thick-post", "study"))
    frame_of_reference = deterministic_uid(seed, ctx.uid_case, "thick-post", "frame-of-reference")
    n_k = vols["t1"].data.shape[2]
    localiser = crop_slab(vols["t1"], (n_k // 2 - 1, n_k // 2 + 2))
    written: list[dict[str, Any]] = []
    expected: dict[str, str] = {}
    with staged_dicom_folder(out_dir, overwrite) as staging:
        for key, number, vol, minute in (("localiser", 1, localiser, 0.0),
                                         ("t1ce", 2, thick_gapped(vols["t1ce"]), 6.0)):
            protocol = _PROTOCOLS[key]
            plan = SeriesPlan(modality=f"thick-post-{key}", protocol=protocol, series_number=number,
                                 series_uid=deterministic_uid(seed, ctx.uid_case, "thick-post", key, "series"),
                                 frame_of_reference_uid=frame_of_reference,
                                 start=ctx.study_start + timedelta(minutes=minute),
                                 folder_name=f"{number}_{sanitise(protocol.series_description)}",
                                 misaligned=False)
            folder = write_series(ctx, plan, vol, staging, seed, None)
            if key == "t1ce":
                _set_thickness(folder, SLICE_THICKNESS_MM)
                expected[key] = plan.series_uid
            written.append({"key": key, "series_number": number, "series_instance_uid": plan.series_uid,
                            "series_description": protocol.series_description, "n_slices": int(vol.data.shape[2]),
                            "folder": f"dicom/{folder.name}"})
    write_ground_truth(seg_path, out_dir / "ground_truth.nii.gz", slab)
    doc = {
        "generator": "samples.thick_post_exam 1.0", "case_id": case_id, "seed": seed,
        "slices": list(slab) if slab else None, "study_instance_uid": ctx.study_uid, "patient_id": ctx.case_id,
        "ground_truth": "ground_truth.nii.gz", "dicom_dir": "dicom",
        "clinical": {"profile": "thick-post", "expected": expected,
                     "slice_thickness_mm": SLICE_THICKNESS_MM, "slice_spacing_mm": SLICE_SPACING_MM},
        "series": written,
    }
    (out_dir / "study.json").write_text(json.dumps(doc, indent=2) + "\n")
    return doc
