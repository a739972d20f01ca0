"""Is a study already skull-stripped? Decided from what stripping leaves, on every series.

The fraction of exactly-zero voxels alone is not evidence: a fat-suppressed or
background-suppressed scanner image can be 30-50 % exact zeros with the skull on, and a wide
field of view makes any image mostly background. Stripping leaves a specific pattern; a series counts as stripped only when all of
these hold (thresholds in :data:`CRITERIA`, measured values recorded in ``report.json``):

``zero_fraction``
    >= 0.30 of the voxels are exactly 0 (necessary, not sufficient).
``largest_component_fraction``
    the nonzero voxels form ONE connected region (>= 99.9 % of them in the largest
    6-connected component): air noise, a scalp separated from the brain by a dark skull, or
    zero-filled background with scattered noise each break this.
``fov_side_nonzero_fraction``
    that region stays clear of the field of view's left-right and front-back sides (<= 1 % of
    the voxels on the 4 faces of the volume whose normals lie closest to the patient's x and y
    axes are nonzero): a brain sits inside a margin of zeros, a skull-on image has air noise or
    the head at the sides. The two faces toward head and feet do not count: an acquisition, a
    crop or a slab cuts the head there whatever the slice orientation (the first / last slice
    of an axial series, the top / bottom rows of a coronal or sagittal one).
``region_ml``
    the region (holes filled) is brain-sized, <= 2100 ml (an adult brain is about 1.0-1.8 l);
    a head with its scalp is larger.
``dark_band_fraction``
    no tissue layer outside a signal-void layer: at 3-13 mm inside the region's outer surface
    (the first / last slice does not count as surface) <= 3 % of the voxels are darker than
    0.15 x the median deeper than 15 mm. On a stripped brain that band is cortex and white
    matter; with the scalp kept it holds the skull's signal void.

The study is "stripped" only when every series is (``consistent``: all series agree);
anything else runs brain extraction (on a stripped brain HD-BET returns the brain again, so
a wrong "not stripped" costs time, a wrong "stripped" feeds the scalp to the network).

The thresholds were set on the shared data (BraTS cases, a skull-on TCGA exam, real scanner
T1 series); ``python -m operators.spatial.skull_stripped [shared folder]`` prints the values
there, README.md ("Brain extraction") quotes them.

Arrays are ``(Z, Y, X)`` (``sitk.GetArrayViewFromImage``); axis 0 is the slice axis of a
series read from DICOM, so the "side faces" are the faces of axes 1 and 2.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

__all__ = ["CRITERIA", "assess_study", "series_evidence"]

#: name -> (comparison, threshold): a series is stripped when every criterion holds.
CRITERIA: dict[str, tuple[str, float]] = {
    "zero_fraction": (">=", 0.30),
    "largest_component_fraction": (">=", 0.999),
    "fov_side_nonzero_fraction": ("<=", 0.01),
    "region_ml": ("<=", 2100.0),
    "dark_band_fraction": ("<=", 0.03),
}
_BAND_MM = (3.0, 13.0)
_DEEP_MM = 15.0
_DARK = 0.15


def _holds(name: str, value: float) -> bool:
    op, thr = CRITERIA[name]
    return bool(value >= thr) if op == ">=" else bool(value <= thr)


def _side_faces(mask: np.ndarray, image: sitk.Image) -> np.ndarray:
    """The voxels of ``mask`` ((Z, Y, X) array of ``image``) on the 4 faces across the patient's
    x and y: the faces of the two array axes other than the one closest to the patient's z."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)  # columns: image i, j, k
    along_z = [abs(direction[2, 2 - a]) for a in range(3)]  # array axis a is image axis 2 - a
    head_feet = int(np.argmax(along_z))
    faces = [np.take(mask, index, axis=a).ravel() for a in range(3) if a != head_feet for index in (0, -1)]
    return np.concatenate(faces)


def series_evidence(image: sitk.Image) -> dict[str, Any]:
    """The criteria's values for one series and its verdict (``stripped``; ``failed``: names;
    ``None``: not evaluated).

    Cheap criteria first; the distance-map one (``dark_band_fraction``) is computed only
    when the others hold (otherwise recorded as ``None``), on a grid of >= 2 mm in-plane.
    """
    a = sitk.GetArrayViewFromImage(image)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)[::-1]  # (Z, Y, X) order
    nz = a != 0
    ev: dict[str, Any] = {"zero_fraction": float(1.0 - np.count_nonzero(nz) / nz.size)}
    lab, n = ndi.label(nz)
    sizes = np.bincount(lab.ravel())[1:]
    n_nz = int(sizes.sum())
    ev["components"] = int(n)
    ev["largest_component_fraction"] = float(sizes.max() / n_nz) if n_nz else 0.0
    ev["fov_side_nonzero_fraction"] = float(_side_faces(nz, image).mean())
    region = ndi.binary_fill_holes(lab == (int(np.argmax(sizes)) + 1)) if n_nz else nz
    ev["region_ml"] = float(np.count_nonzero(region) * np.prod(spacing) / 1000.0)
    ev["dark_band_fraction"] = None
    if all(_holds(k, ev[k]) for k in CRITERIA if k != "dark_band_fraction"):
        step = tuple(max(1, int(2.0 // s)) for s in spacing)  # >= 2 mm: the band is 10 mm wide
        r = region[:: step[0], :: step[1], :: step[2]]
        v = np.asarray(a[:: step[0], :: step[1], :: step[2]], dtype=np.float32)
        # edge padding: the first / last slice (and any side the region touches) is no surface
        depth = ndi.distance_transform_edt(np.pad(r, 1, mode="edge"),
                                           sampling=spacing * np.asarray(step))[1:-1, 1:-1, 1:-1]
        deep = r & (depth > _DEEP_MM)
        ref = float(np.median(v[deep])) if np.any(deep) else float(np.median(v[r]))
        band = r & (depth > _BAND_MM[0]) & (depth <= _BAND_MM[1])
        ev["dark_band_fraction"] = (float(np.mean(v[band] < _DARK * ref)) if np.any(band) else 1.0)
    ev["failed"] = [k for k in CRITERIA if ev[k] is not None and not _holds(k, ev[k])]
    ev["stripped"] = not ev["failed"] and ev["dark_band_fraction"] is not None
    return ev


def assess_study(images: Mapping[str, sitk.Image]) -> tuple[bool, dict[str, Any]]:
    """Stripped decision for a study: every series must show the pattern (see module doc).

    Returns
    -------
    stripped, evidence
        ``evidence`` (JSON-able): ``criteria`` (thresholds), ``series`` (per modality: the
        values, ``failed``, ``stripped``), ``consistent`` (all series agree), ``decision``
        ("stripped" / "not stripped") and ``reason`` (one line).
    """
    per = {m: series_evidence(img) for m, img in images.items()}
    verdicts = [e["stripped"] for e in per.values()]
    stripped = bool(verdicts) and all(verdicts)
    if stripped:
        reason = f"all {len(per)} series show the stripped pattern"
    else:
        bad = {m: e["failed"] for m, e in per.items() if not e["stripped"]}
        reason = "not stripped: " + "; ".join(f"{m} fails {', '.join(f)}" for m, f in bad.items())
    return stripped, {
        "criteria": {k: f"{op} {thr:g}" for k, (op, thr) in CRITERIA.items()},
        "series": per,
        "consistent": len(set(verdicts)) <= 1,
        "decision": "stripped" if stripped else "not stripped",
        "reason": reason,
    }


if __name__ == "__main__":  # the measured values quoted in the module docstring
    import sys
    from pathlib import Path

    shared = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[3] / "shared"
    for case in sorted((shared / "data" / "brats18").glob("Brats18_*")):
        imgs = {m: sitk.ReadImage(str(case / f"{case.name}_{m}.nii.gz")) for m in ("t1ce", "t1", "t2", "flair")}
        s, e = assess_study(imgs)
        print(case.name, e["decision"], {m: {k: (round(v, 4) if isinstance(v, float) else v)
                                             for k, v in x.items() if k in CRITERIA} for m, x in e["series"].items()})
    native = shared / "data" / "native-space" / "TCGA-FG-6692"
    s, e = assess_study({m: sitk.ReadImage(str(native / f"{m}.nii.gz")) for m in ("t1c", "t1", "t2", "flair")})
    print("TCGA-FG-6692", e["decision"], e["reason"])
    import pydicom

    from operators.dicom.series_volume import series_to_image

    for d in sorted((shared / "data" / "real-mr-dicom").iterdir()):
        img = series_to_image([pydicom.dcmread(p) for p in sorted(d.iterdir())]).image
        s, e = assess_study({"t1": img})
        print(d.name, e["decision"], {k: (round(v, 4) if isinstance(v, float) else v)
                                      for k, v in e["series"]["t1"].items() if k in CRITERIA})
