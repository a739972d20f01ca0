"""An exam whose only usable series are reformats of 3-D acquisitions (``make_study --clinical reformats``).

What a PACS often receives from a 3-D protocol, and what the app once refused
(``no_usable_mr_series ... ImageType contains MPR``):

================  =====================================================  ======================
series            content                                                the app should
================  =====================================================  ======================
T1 post MPR       BraTS t1ce, 1 mm, axial-oblique tilted 21 deg about    pick as T1ce (its
                  left-right, ImageType ORIGINAL\\PRIMARY\\MPR              description says post)
T2 SPACE MPR      BraTS t2, 1 mm, tilted 28 deg, another grid, same MPR  pick as T2
T1 post MIP       a MIP of the T1 post, DERIVED\\SECONDARY\\REFORMATTED     set aside (projection)
manual SEG        the expert labels on the T1 post reformat, a DICOM-SEG  ignore (not an image)
================  =====================================================  ======================

Every image file: no RepetitionTime / EchoTime / InversionTime, implicit VR little endian,
positions about 1 m from the isocentre (every position shifted by :data:`FAR_OFF_MM` along the
patient's z; the ground truth NIfTI written with the same shift, so it stays in register). FLAIR
and pre-contrast T1 are absent: the subset is T1ce+T2.

``study.json`` ``clinical.expected`` names the series the app should pick; the selector never
reads it.
"""
from __future__ import annotations

import dataclasses
import json
import math
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.uid import ImplicitVRLittleEndian

from samples.clinical_profiles import sliding_mip
from samples.dicom_writer import SeriesPlan, deterministic_uid, sanitise, staged_dicom_folder, study_context, write_series
from samples.make_study import resample_moving
from samples.scanner_protocols import SequenceProtocol
from samples.volumes import (
    Grid,
    RigidTransform,
    Volume,
    case_file,
    case_id_of,
    crop_slab,
    load_case,
    load_volume,
    validate_slab,
    volume_center,
)

__all__ = ["FAR_OFF_MM", "TILTS_DEG", "make_reformat_study"]

#: Every position of the exam is this far from the isocentre along LPS z (mm).
FAR_OFF_MM = 1000.0
#: Tilt of each reformat's slice plane about the LPS x (left-right) axis, degrees.
TILTS_DEG = {"t1ce": 21.0, "t2": 28.0}

_REFORMAT = ("ORIGINAL", "PRIMARY", "MPR")
_PROTOCOLS = {
    "t1ce": SequenceProtocol("T1 MPRAGE post KM 1mm ax MPR", "t1_mprage_sag_p2_iso", ("GR", "IR"), ("SP", "MP"),
                                ("IR",), "*tfl3d1_16ns", 0.0, 0.0, None, 8.0, 1, _REFORMAT, 300),
    "t2": SequenceProtocol("T2 SPACE 1mm ax MPR", "t2_space_sag_p2_iso", ("SE",), ("SK", "SP"), (),
                              "*spc_314ns", 0.0, 0.0, None, 120.0, 1, _REFORMAT, 330),
    "mip": SequenceProtocol("T1 post KM MIP ax", "t1_mprage_sag_p2_iso", ("GR", "IR"), ("SP", "MP"), ("IR",),
                               "*tfl3d1_16ns", 0.0, 0.0, None, 8.0, 1, ("DERIVED", "SECONDARY", "REFORMATTED"), 0),
}


def _far_off(vol: Volume) -> Volume:
    affine = vol.affine_lps.copy()
    affine[2, 3] += FAR_OFF_MM
    return Volume(data=vol.data, affine_lps=affine)


def _tilted_grid(vol: Volume, tilt_deg: float, spacing_mm: float = 1.0) -> Grid:
    """A grid of ``spacing_mm`` voxels whose axes are ``vol``'s rotated by ``tilt_deg`` about LPS x,
    centred on ``vol``'s centre and covering its extent."""
    t = math.radians(tilt_deg)
    rot = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(t), -math.sin(t)], [0.0, math.sin(t), math.cos(t)]])
    direction = rot @ vol.direction
    idx = np.array([vol.affine_lps @ np.array([i * (n - 1) for i, n in zip(c, vol.data.shape)] + [1.0])
                    for c in np.ndindex(2, 2, 2)])[:, :3]
    centre = volume_center(vol)
    local = (idx - centre) @ direction  # extent along the new axes
    half = np.abs(local).max(axis=0)
    size = tuple(int(np.ceil(2 * h / spacing_mm)) + 1 for h in half)
    origin = centre - direction @ ((np.asarray(size, dtype=float) - 1.0) / 2.0 * spacing_mm)
    return Grid(size=size, spacing=(spacing_mm,) * 3, origin=tuple(float(o) for o in origin),
                   direction=tuple(float(v) for v in direction.ravel()))


def _reformat_on(vol: Volume, grid: Grid) -> Volume:
    """``vol`` resampled (linear) onto ``grid``, the patient unmoved."""
    identity = RigidTransform((0.0, 0.0, 0.0), (0.0, 0.0, 0.0), tuple(float(c) for c in volume_center(vol)))
    return resample_moving(vol, identity, grid)


def _reformat(vol: Volume, tilt_deg: float) -> Volume:
    return _reformat_on(vol, _tilted_grid(vol, tilt_deg))


def _finish_series(folder: Path) -> None:
    """No timing parameters, implicit VR little endian (what the archive this mimics sends)."""
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        for keyword in ("RepetitionTime", "EchoTime", "InversionTime", "SpacingBetweenSlices"):
            if keyword in ds:
                delattr(ds, keyword)
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds.save_as(path, enforce_file_format=True)


def _manual_seg(folder: Path, truth: Volume, tilt_deg: float, out: Path) -> None:
    """The expert labels on the T1 post reformat's grid as a DICOM-SEG (a reader's manual SEG)."""
    from operators.dicom.seg import build_segmentation

    grid = _tilted_grid(truth, tilt_deg)
    labels = None
    for value in (2, 1, 4):  # each class resampled as a 0 / 1000 image, inner classes last
        indicator = Volume(data=(truth.data == value).astype(np.int16) * 1000, affine_lps=truth.affine_lps)
        inside = _reformat_on(indicator, grid).data > 500
        labels = np.zeros(inside.shape, np.uint8) if labels is None else labels
        labels[inside] = value
    sources = sorted((pydicom.dcmread(p) for p in folder.glob("*.dcm")), key=lambda d: int(d.InstanceNumber))
    labels = np.ascontiguousarray(labels.transpose(2, 1, 0))  # (i, j, k) -> (slice k, row j, column i)
    seg = build_segmentation(labels, sources, used_modalities=["T1ce"], missing_modalities=[],
                             algorithm_name="manual", algorithm_version="1", series_number=990,
                             series_description="Tumour manual SEG")
    seg.save_as(out, enforce_file_format=True)


def make_reformat_study(case_dir: str | Path, out_dir: str | Path, *, seed: int = 0,
                        slices: tuple[int, int] | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Write the reformats exam of one BraTS case (see the module docstring).

    Returns
    -------
    dict
        The content of ``study.json``; ``clinical.expected``: modality -> SeriesInstanceUID.
    """
    case_dir, out_dir = Path(case_dir), Path(out_dir)
    case_id = case_id_of(case_dir)
    vols = load_case(case_dir, ("t1ce", "t2"))
    truth = load_volume(case_file(case_dir, "seg"))
    slab = validate_slab(slices, vols["t1ce"].data.shape[2])
    if slab is not None:
        vols = {m: crop_slab(v, slab) for m, v in vols.items()}
        truth = crop_slab(truth, slab)
    vols = {m: _far_off(v) for m, v in vols.items()}
    truth = _far_off(truth)
    ctx = study_context(case_id, seed, None, slab)
    ctx = dataclasses.replace(ctx, study_uid=deterministic_uid(seed, ctx.uid_case, "reformats", "study"))
    frame_of_reference = deterministic_uid(seed, ctx.uid_case, "reformats", "frame-of-reference")
    expected: dict[str, str] = {}
    written: list[dict[str, Any]] = []
    with staged_dicom_folder(out_dir, overwrite) as staging:
        t1_post = _reformat(vols["t1ce"], TILTS_DEG["t1ce"])
        series = [("t2", 401, _reformat(vols["t2"], TILTS_DEG["t2"]), 6.0),
                  ("t1ce", 701, t1_post, 20.0),
                  ("mip", 702, sliding_mip(t1_post), 20.0)]
        for key, number, vol, minute in series:
            plan = SeriesPlan(modality=f"reformats-{key}", protocol=_PROTOCOLS[key], series_number=number,
                                 series_uid=deterministic_uid(seed, ctx.uid_case, "reformats", key, "series"),
                                 frame_of_reference_uid=frame_of_reference,
                                 start=ctx.study_start + timedelta(minutes=minute),
                                 folder_name=f"{number}_{sanitise(_PROTOCOLS[key].series_description)}",
                                 misaligned=False)
            folder = write_series(ctx, plan, vol, staging, seed, None)
            _finish_series(folder)
            if key in ("t1ce", "t2"):
                expected[key] = plan.series_uid
            written.append({"key": key, "series_number": number, "series_instance_uid": plan.series_uid,
                            "series_description": _PROTOCOLS[key].series_description,
                            "tilt_deg": TILTS_DEG.get(key, TILTS_DEG["t1ce"]), "folder": f"dicom/{folder.name}"})
        t1_folder = next(staging.glob("701_*"))
        _manual_seg(t1_folder, truth, TILTS_DEG["t1ce"], staging / "manual_seg.dcm")
    import nibabel as nib

    # the expert labels in the exam's (far-off) patient space: LPS -> RAS affine for NIfTI
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ truth.affine_lps
    nib.save(nib.Nifti1Image(truth.data.astype(np.int16), ras), str(out_dir / "ground_truth.nii.gz"))
    doc = {
        "generator": "samples.reformat_exam 1.0", "case_id": case_id, "seed": seed,
        "slices": list(slab) if slab else None, "study_instance_uid": ctx.study_uid, "patient_id": ctx.case_id,
        "ground_truth": "ground_truth.nii.gz", "dicom_dir": "dicom", "far_off_mm": FAR_OFF_MM,
        "clinical": {"profile": "reformats", "expected": expected, "manual_seg": "dicom/manual_seg.dcm"},
        "series": written,
    }
    (out_dir / "study.json").write_text(json.dumps(doc, indent=2) + "\n")
    return doc

