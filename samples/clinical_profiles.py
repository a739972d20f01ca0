"""Clinical-looking MR exams built from one BraTS case (``make_study --clinical PROFILE``).

What real brain-tumour exams hold and a BraTS-built study does not:

* 11 to 12 series: a localiser, T1 / T2 / FLAIR before contrast, DWI and its ADC map, SWI,
  then after contrast a 3-D T1 (1 mm isotropic), FLAIR again and the 2-D T1 again, and a MIP
  of the 3-D T1;
* **the pre- and post-contrast 2-D T1 share one SeriesDescription and ProtocolName, and no
  series carries a ContrastBolus* attribute or a contrast word**: only acquisition times and
  the images tell them apart (as on the Philips exam of issue 15);
* vendor-typical names, image types and parameters (``philips``, ``siemens``, ``ge``);
* source attribute faults that make a copied SEG invalid (``PatientAge`` ``NA``, a retired
  time form, non-ASCII text without SpecificCharacterSet, six name components, ``75kg``, an
  impossible date, ``male``, control characters, an over-long description).

Which series holds what (the ground truth of the selection; ``study.json`` ``clinical``):

================  ==========================================  ============================
series            content                                     the app should
================  ==========================================  ============================
T1 pre (2-D)      BraTS t1, 1 mm                              pick as T1
T2, FLAIR         BraTS t2 / flair, 1 mm                      pick as T2 / FLAIR
DWI               BraTS t2, 5 mm slices                       lose to T2 (resolution)
ADC, MIP          derived                                     leave out (ImageType)
SWI, localiser    gradient echo / 3 slices                    leave out (parameters, size)
3-D T1 post       BraTS t1ce, 1 mm, no contrast attribute     pick as T1ce
FLAIR post        BraTS flair, 1 mm, same name as the pre     lose to the pre FLAIR
T1 post (2-D)     BraTS t1ce, 3 mm, same name as the T1 pre   T1ce candidate, loses (resolution)
================  ==========================================  ============================

``philips`` is the 1.5 T exam of issue "Real clinical exams III": a 3-D FFE T1, coronal and not
fat-suppressed, comes first (the T1 to pick: 3-D at equal resolution); the 2-D T1 is an SE FS 15
minutes later, the post-contrast 3-D T1 is FS iso (T1ce), and both 2-D SE FS share one name. The
fat-suppressed series get another tissue contrast (:func:`_fat_suppressed_look`), so against the
earliest T1 they look darker, contrast or not: only the like-for-like pair (the two SE FS) shows
the enhancement.

Options: ``mask_series`` adds a viewer-saved lesion mask (values 0 / 1, ORIGINAL\\PRIMARY, the
FLAIR's description, parameters and times, the highest series number) that the app must set
aside; ``contrast_evidence=False`` removes every trace of contrast (the post-contrast T1 series
hold the pre-contrast T1's images and follow it without a gap): the app must say the phase is
undetermined and use the earliest T1 and the earliest FLAIR.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

from engines.model.modalities import MODALITIES
from samples.dicom_writer import SeriesPlan, deterministic_uid, sanitise, staged_dicom_folder, study_context, write_series
from samples.make_study import resample_moving
from samples.scanner_protocols import VENDORS, SequenceProtocol
from samples.volumes import (
    Grid,
    RigidTransform,
    StudyBuildError,
    Volume,
    case_file,
    case_id_of,
    crop_slab,
    load_case,
    load_volume,
    validate_slab,
    volume_center,
    write_ground_truth,
)

__all__ = ["PROFILES", "make_clinical_study"]


@dataclass(frozen=True)
class ClinicalSeries:
    """One series of a clinical exam: what it is, what it holds, when it was acquired."""

    key: str
    protocol: SequenceProtocol
    source: str  # BraTS modality whose image it holds
    slice_mm: float = 1.0  # slice thickness of its grid (in-plane stays 1 mm)
    n_slices: int | None = None  # keep only this many slices around the centre (localiser)
    acquisition: str = "2D"
    post_contrast: bool = False  # the truth; never written into the header
    derived_mip: bool = False
    fat_suppressed: bool = False  # appearance of a fat-suppressed T1 (see _fat_suppressed_look)
    plane: str = "axial"  # "axial" or "coronal" slices


def _p(desc: str, protocol: str, seq: tuple[str, ...], tr: float, te: float, ti: float | None,
       image_type: tuple[str, ...], duration_s: int, name: str = "") -> SequenceProtocol:
    return SequenceProtocol(desc, protocol, seq, (), (), name, tr, te, ti, 90.0, 1, image_type, duration_s)


def _philips() -> dict[str, Any]:
    """The Philips 1.5 T contrast exam of issue "Real clinical exams III": two pre-contrast T1s of
    different kinds (a 3-D FFE, coronal, not fat-suppressed, first; a 2-D SE FS axial 13 min
    later), then a 3-D T1 FS iso and the 2-D SE FS again under the same name after contrast."""
    it_se, it_ir = ("ORIGINAL", "PRIMARY", "M_SE", "M", "SE"), ("ORIGINAL", "PRIMARY", "M_IR", "M", "IR")
    it_ffe = ("ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE")
    t1 = _p("T1W_SE-TRA_FS", "T1W_SE-TRA_FS", ("SE",), 500.0, 8.0, None, it_se, 175)
    flair = _p("T2W_FLAIR_TRA", "T2W_FLAIR_TRA", ("SE", "IR"), 11000.0, 125.0, 2800.0, it_ir, 264)
    return {
        "localiser": _p("SURVEY", "SURVEY", ("GR",), 11.0, 4.6, None, it_ffe, 25),
        "t1": t1, "flair": flair,
        "t1_pre_3d": _p("3D_T1W_FFE_COR", "3D_T1W_FFE_COR", ("GR",), 25.0, 4.6, None, it_ffe, 290),
        "t1_fat_suppressed": True,
        "t2": _p("T2W_TSE_TRA", "T2W_TSE_TRA", ("SE",), 4500.0, 100.0, None, it_se, 140),
        "dwi": _p("DWI_TRA", "DWI_TRA", ("SE", "EP"), 3200.0, 90.0, None, it_se, 95),
        "adc": _p("dADC_TRA", "DWI_TRA", ("SE", "EP"), 3200.0, 90.0, None,
                  ("DERIVED", "PRIMARY", "ADC_UNSPECIFIED", "ADC"), 0),
        "swi": _p("SWIp_TRA", "SWIp_TRA", ("GR",), 31.0, 7.2, None, it_ffe, 210),
        "t1_3d": _p("3D_T1W_TFE_FS_ISO", "3D_T1W_TFE_FS_ISO", ("GR",), 8.1, 3.7, None, it_ffe, 300),
        "mip": _p("MIP_3D_T1W_TFE_FS_ISO", "3D_T1W_TFE_FS_ISO", ("GR",), 8.1, 3.7, None,
                  ("DERIVED", "PRIMARY", "PROJECTION IMAGE", "MIP"), 0),
        "faults": {"PatientAge": b"NA", "StudyTime": b"14:03:22",
                   "InstitutionName": "Universitätsklinikum Süd".encode("latin-1")},
    }


def _siemens() -> dict[str, Any]:
    it = ("ORIGINAL", "PRIMARY", "M", "NORM", "DIS2D")
    return {
        "localiser": _p("localizer", "localizer", ("GR",), 8.6, 4.0, None, it, 20),
        "t1": _p("t1_se_tra", "t1_se_tra", ("SE",), 550.0, 10.0, None, it, 182),
        "t2": _p("t2_tse_tra", "t2_tse_tra", ("SE",), 5000.0, 100.0, None, it, 165),
        "flair": _p("t2_tirm_tra_dark-fluid", "t2_tirm_tra_dark-fluid", ("SE", "IR"), 9000.0, 81.0, 2500.0, it, 272),
        "dwi": _p("ep2d_diff_3scan_trace", "ep2d_diff_3scan_trace", ("EP",), 6000.0, 89.0, None,
                  ("ORIGINAL", "PRIMARY", "DIFFUSION", "TRACEW", "ND"), 110),
        "adc": _p("ep2d_diff_3scan_trace_ADC", "ep2d_diff_3scan_trace", ("EP",), 6000.0, 89.0, None,
                  ("DERIVED", "PRIMARY", "DIFFUSION", "ADC", "ND"), 0),
        "swi": _p("Mag_Images", "swi_tra", ("GR",), 28.0, 20.0, None, ("ORIGINAL", "PRIMARY", "M", "ND"), 250),
        "t1_3d": _p("t1_mprage_tra_p2_iso", "t1_mprage_tra_p2_iso", ("GR", "IR"), 2300.0, 2.3, 900.0,
                    ("ORIGINAL", "PRIMARY", "M", "ND", "NORM"), 320),
        "mip": _p("t1_mprage_tra_p2_iso_MIP_TRA", "t1_mprage_tra_p2_iso", ("GR", "IR"), 2300.0, 2.3, 900.0,
                  ("DERIVED", "PRIMARY", "MIP", "ND"), 0),
        "faults": {"PatientName": b"MUSTER^MAX^^^^JR", "PatientWeight": b"75kg",
                   "StudyDescription": ("Kopf^Neuro Tumorprotokoll mit und ohne KM " * 2).encode()},
    }


def _ge() -> dict[str, Any]:
    it = ("ORIGINAL", "PRIMARY", "OTHER")
    proto = "BRAIN TUMOR W/WO"
    return {
        "localiser": _p("3Plane Loc SSFSE", proto, ("SE",), 1500.0, 80.0, None,
                        ("ORIGINAL", "PRIMARY", "LOCALIZER"), 25),
        "t1": _p("Ax T1 SE", proto, ("SE",), 600.0, 9.5, None, it, 190),
        "t2": _p("Ax T2 FSE", proto, ("SE",), 5200.0, 102.0, None, it, 150),
        "flair": _p("Ax T2 FLAIR", proto, ("SE", "IR"), 9000.0, 81.5, 2250.0, it, 240),
        "dwi": _p("Ax DWI 1000b", proto, ("SE", "EP"), 6000.0, 80.0, None, it, 60),
        "adc": _p("Apparent Diffusion Coefficient (mm2/s)", proto, ("SE", "EP"), 6000.0, 80.0, None,
                  ("DERIVED", "PRIMARY", "ADC"), 0),
        "swi": _p("Ax SWAN", proto, ("GR",), 40.0, 25.0, None, it, 240),
        "t1_3d": _p("Ax 3D BRAVO", proto, ("GR",), 8.2, 3.2, 450.0, it, 270),
        "mip": _p("Ax 3D BRAVO MIP", proto, ("GR",), 8.2, 3.2, 450.0, ("DERIVED", "SECONDARY", "REFORMATTED"), 0),
        "faults": {"PatientBirthDate": b"19701340", "PatientSex": b"male",
                   "ReferringPhysicianName": b"DR\x01WHO", "PatientSize": b"1,80"},
    }


#: Profile name -> vendor naming (``--clinical PROFILE``).
PROFILES = {"philips": _philips, "siemens": _siemens, "ge": _ge}
_VENDOR_INDEX = {"siemens": 0, "ge": 1, "philips": 2}  # samples.scanner_protocols.VENDORS' order


def _exam(names: Mapping[str, Any], contrast_evidence: bool) -> list[tuple[ClinicalSeries, float]]:
    """The exam's series with their start minute (after the study start), in acquisition order."""
    post_t1_source = "t1ce" if contrast_evidence else "t1"
    t1_3d = names["t1_3d"]
    fs = bool(names.get("t1_fat_suppressed"))
    two_pre = "t1_pre_3d" in names  # Philips: a 3-D FFE first, the 2-D SE FS after the SWI
    series = [
        (ClinicalSeries("localiser", names["localiser"], "t1", n_slices=3), 0.0),
        (ClinicalSeries("t1", names["t1"], "t1", fat_suppressed=fs), 15.5 if two_pre else 1.0),
        (ClinicalSeries("t2", names["t2"], "t2"), 4.5),
        (ClinicalSeries("flair", names["flair"], "flair"), 7.5),
        (ClinicalSeries("dwi", names["dwi"], "t2", slice_mm=5.0), 12.0),
        (ClinicalSeries("adc", names["adc"], "t2", slice_mm=5.0), 12.0),
        (ClinicalSeries("swi", names["swi"], "t2", slice_mm=2.0), 14.0 if not two_pre else 12.5),
        # contrast injected at minute 18 (nothing in any header says so)
        (ClinicalSeries("t1ce_3d", t1_3d, post_t1_source, acquisition="3D", post_contrast=contrast_evidence,
                        fat_suppressed=fs), 18.5),
        (ClinicalSeries("mip", names["mip"], post_t1_source, derived_mip=True, fat_suppressed=fs), 18.5),
        (ClinicalSeries("flair_post", names["flair"], "flair", post_contrast=contrast_evidence), 24.0),
        (ClinicalSeries("t1ce_2d", names["t1"], post_t1_source, slice_mm=3.0, post_contrast=contrast_evidence,
                        fat_suppressed=fs), 29.0),
    ]
    if two_pre:
        series.insert(1, (ClinicalSeries("t1_pre_3d", names["t1_pre_3d"], "t1", acquisition="3D", plane="coronal"), 0.5))
    if not contrast_evidence:  # back to back with the pre-contrast T1: no time gap either
        t1_start = next(t for s, t in series if s.key == "t1")
        series = [(s, {"t1ce_3d": t1_start + 0.5, "mip": t1_start + 0.5, "t1ce_2d": t1_start + 1.0}.get(s.key, t))
                  for s, t in series]
    series.sort(key=lambda st: st[1])
    return series


def _fat_suppressed_look(vol: Volume, t1: Volume) -> Volume:
    """A fat-suppressed T1's look, as far as a skull-stripped brain can show it: the tissue that is
    brightest on the plain pre-contrast T1 (``t1`` above its 97th percentile inside the head, the
    place of fat on a real head) is dark (0.3 x the median), in every series of this look, pre- or
    post-contrast alike; the rest, enhancement included, is unchanged. Against a plain T1 such a
    series then looks darker in its brightest structures, contrast or not (the trap of issue
    "Real clinical exams III"); against another of its look, only gadolinium differs."""
    ref = t1.data.astype(np.float64)
    inside = ref > 0
    if not inside.any():
        return vol
    bright = ref > np.percentile(ref[inside], 97)
    data = vol.data.astype(np.float64)
    dark = 0.3 * float(np.median(data[data > 0])) if (data > 0).any() else 0.0
    return Volume(data=np.where(bright, np.rint(dark), data).astype(np.int16), affine_lps=vol.affine_lps)


def _coronal(vol: Volume) -> Volume:
    """The same voxels with coronal slices (slice axis = the original j axis; right-handed)."""
    n_j = vol.data.shape[1]
    a = vol.affine_lps
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = a[:3, 0], a[:3, 2], -a[:3, 1]
    affine[:3, 3] = a[:3, 3] + a[:3, 1] * (n_j - 1)
    data = np.ascontiguousarray(vol.data.transpose(0, 2, 1)[:, :, ::-1])
    return Volume(data=data, affine_lps=affine)


def _thick(vol: Volume, slice_mm: float) -> Volume:
    """The same field of view with thicker slices (in-plane unchanged), linear interpolation."""
    n_i, n_j, n_k = vol.data.shape
    sp = vol.spacing
    n_new = max(1, int(round(n_k * sp[2] / slice_mm)))
    size, spacing = (n_i, n_j, n_new), (sp[0], sp[1], slice_mm)
    d = vol.direction
    half = d @ ((np.asarray(size, dtype=float) - 1.0) / 2.0 * np.asarray(spacing))
    grid = Grid(size=size, spacing=spacing, origin=tuple(float(o) for o in volume_center(vol) - half),
                   direction=tuple(float(v) for v in d.ravel()))
    identity = RigidTransform((0.0, 0.0, 0.0), (0.0, 0.0, 0.0), tuple(float(c) for c in volume_center(vol)))
    return resample_moving(vol, identity, grid)


def _centre_slices(vol: Volume, n: int) -> Volume:
    k0 = max(vol.data.shape[2] // 2 - n // 2, 0)
    return crop_slab(vol, (k0, min(k0 + n, vol.data.shape[2])))


def sliding_mip(vol: Volume, slab: int = 10) -> Volume:
    """Sliding maximum-intensity projection over ``slab`` slices (a derived MIP series)."""
    data = np.stack([vol.data[:, :, max(k - slab // 2, 0):k + slab // 2 + 1].max(axis=2)
                     for k in range(vol.data.shape[2])], axis=2)
    return Volume(data=data, affine_lps=vol.affine_lps)


def _raw(ds: pydicom.Dataset, keyword: str, value: bytes) -> None:
    """Put a value into ``ds`` as the bytes a faulty scanner wrote (no pydicom conversion)."""
    tag = Tag(tag_for_keyword(keyword))
    if len(value) % 2:
        value += b" "
    ds[tag] = RawDataElement(tag, dictionary_VR(tag), len(value), value, 0, False, True)


def make_clinical_study(
    case_dir: str | Path, out_dir: str | Path, profile: str, *, seed: int = 0,
    slices: tuple[int, int] | None = None, mask_series: bool = False, contrast_evidence: bool = True,
    faults: bool = True, overwrite: bool = False,
) -> dict[str, Any]:
    """Write a clinical-looking exam of one BraTS case (see the module docstring).

    Parameters
    ----------
    case_dir, out_dir, seed, slices, overwrite
        As :func:`samples.make_study.make_study` (``<out>/dicom``, ``<out>/ground_truth.nii.gz``,
        ``<out>/study.json``).
    profile
        ``philips``, ``siemens`` or ``ge``: names, image types, parameters and faults.
    mask_series
        Add a viewer-saved lesion mask that looks like the best FLAIR.
    contrast_evidence
        False: the post-contrast T1 series hold the pre-contrast images, without a time gap.
    faults
        Write the profile's invalid source attribute values (and no SpecificCharacterSet).

    Returns
    -------
    dict
        The content of ``study.json``; ``clinical.expected`` maps each modality to the
        SeriesInstanceUID the app should pick (T1ce absent when ``contrast_evidence`` is False).
    """
    if profile not in PROFILES:
        raise StudyBuildError(f"unknown clinical profile {profile!r}; expected one of {', '.join(PROFILES)}")
    case_dir, out_dir = Path(case_dir), Path(out_dir)
    names = PROFILES[profile]()
    case_id = case_id_of(case_dir)
    vols = load_case(case_dir, MODALITIES)
    seg_path = case_file(case_dir, "seg")
    slab = validate_slab(slices, next(iter(vols.values())).data.shape[2])
    if slab is not None:
        vols = {m: crop_slab(v, slab) for m, v in vols.items()}
    ctx = study_context(case_id, seed, None, slab)
    ctx = dataclasses.replace(ctx, vendor=VENDORS[_VENDOR_INDEX[profile]](),
                              study_uid=deterministic_uid(seed, ctx.uid_case, "clinical", profile, mask_series,
                                                contrast_evidence, "study"))
    frame_of_reference = deterministic_uid(seed, ctx.uid_case, "clinical", profile, "frame-of-reference")
    written: list[dict[str, Any]] = []
    expected: dict[str, str] = {}
    exam = _exam(names, contrast_evidence)
    if mask_series:
        flair_start = next(t for s, t in exam if s.key == "flair")
        mask_proto = dataclasses.replace(names["flair"], image_type=("ORIGINAL", "PRIMARY"))
        exam.append((ClinicalSeries("mask", mask_proto, "mask"), flair_start))
    with staged_dicom_folder(out_dir, overwrite) as staging:
        for number, (spec, minute) in enumerate(exam, start=1):
            if spec.source == "mask":
                truth = load_volume(seg_path)
                truth = crop_slab(truth, slab) if slab is not None else truth
                vol = Volume(data=(truth.data > 0).astype(np.int16), affine_lps=truth.affine_lps)
                series_number = 9001
            else:
                vol = vols[spec.source]
                series_number = 100 * number + 1
            if spec.fat_suppressed:
                vol = _fat_suppressed_look(vol, vols["t1"])
            if spec.derived_mip:
                vol = sliding_mip(vol)
            if spec.plane == "coronal":
                vol = _coronal(vol)
            if spec.slice_mm != 1.0:
                vol = _thick(vol, spec.slice_mm)
            if spec.n_slices:
                vol = _centre_slices(vol, spec.n_slices)
            start = ctx.study_start + timedelta(minutes=minute)
            plan = SeriesPlan(
                modality=f"clinical-{profile}-{spec.key}-{contrast_evidence}", protocol=spec.protocol,
                series_number=series_number,
                series_uid=deterministic_uid(seed, ctx.uid_case, "clinical", profile, spec.key, contrast_evidence, "series"),
                frame_of_reference_uid=frame_of_reference, start=start,
                folder_name=f"{series_number}_{sanitise(spec.protocol.series_description)}", misaligned=False,
            )
            folder = write_series(ctx, plan, vol, staging, seed, None)
            _finish_files(folder, spec, names["faults"] if faults else {})
            written.append({"key": spec.key, "series_number": series_number, "series_instance_uid": plan.series_uid,
                            "series_description": spec.protocol.series_description, "source": spec.source,
                            "slice_mm": spec.slice_mm, "post_contrast": spec.post_contrast,
                            "folder": f"dicom/{folder.name}"})
            # Without contrast evidence the phase is undetermined: the earliest T1 and the earliest
            # FLAIR fill their slots (pre-contrast sequences come first). Philips: the 3-D FFE is
            # the earliest T1, and with contrast the best pre-contrast T1 (3-D at equal resolution).
            earliest_t1 = "t1_pre_3d" if "t1_pre_3d" in names else "t1"
            role = {"t1ce_3d": "t1ce" if contrast_evidence else None, earliest_t1: "t1",
                    "flair": "flair", "t2": "t2"}.get(spec.key)
            if role:
                expected[role] = plan.series_uid
    write_ground_truth(seg_path, out_dir / "ground_truth.nii.gz", slab)
    doc = {
        "generator": "samples.clinical_profiles 1.0", "case_id": case_id, "seed": seed,
        "slices": list(slab) if slab else None, "study_instance_uid": ctx.study_uid,
        "patient_id": ctx.case_id, "ground_truth": "ground_truth.nii.gz", "dicom_dir": "dicom",
        "clinical": {"profile": profile, "mask_series": mask_series, "contrast_evidence": contrast_evidence,
                     "faults": sorted(names["faults"]) if faults else [], "expected": expected},
        "series": written,
    }
    (out_dir / "study.json").write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def _finish_files(folder: Path, spec: ClinicalSeries, faults: Mapping[str, bytes]) -> None:
    """Per file: acquisition type, no contrast attributes, the profile's faulty values."""
    settings = pydicom.config.settings
    saved = settings.reading_validation_mode, settings.writing_validation_mode
    settings.reading_validation_mode = settings.writing_validation_mode = pydicom.config.IGNORE  # deliberate faults
    try:
        for path in sorted(folder.glob("*.dcm")):
            _finish_file(path, spec, faults)
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = saved


def _finish_file(path: Path, spec: ClinicalSeries, faults: Mapping[str, bytes]) -> None:
    ds = pydicom.dcmread(path)
    ds.MRAcquisitionType = spec.acquisition
    for keyword in [k for k in ds.dir() if k.startswith("ContrastBolus")]:
        delattr(ds, keyword)
    if faults:
        del ds.SpecificCharacterSet
        for keyword, value in faults.items():
            _raw(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
