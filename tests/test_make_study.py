"""Tests of ``samples.make_study``: the realistic DICOM study builder.

Each study is built once per module (fixtures into ``tmp_path_factory``) from one real BraTS
case; the checks then read the DICOM back with SimpleITK (GDCM-sorted) and with pydicom and
compare with the NIfTI sources.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from samples.make_study import (
    MODALITIES,
    StudyBuildError,
    StudyManifest,
    make_study,
    nifti_lps_affine,
)
from tests.conftest import REPO_ROOT

CASE = "Brats18_TCIA01_201_1"
MISALIGN_SEED = 3
GEOM_TOL = 1e-4  # mm / direction cosines
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def read_series_sitk(folder: Path) -> sitk.Image:
    """A series folder read the way the application reads it (GDCM-sorted file names)."""
    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(folder))
    assert len(names) == len(list(folder.glob("*.dcm")))
    reader.SetFileNames(names)
    return reader.Execute()


def read_series_pydicom(folder: Path) -> list[pydicom.Dataset]:
    """All files of a series, sorted by InstanceNumber."""
    datasets = [pydicom.dcmread(p) for p in folder.glob("*.dcm")]
    return sorted(datasets, key=lambda d: int(d.InstanceNumber))


def assert_same_geometry(a: sitk.Image, b: sitk.Image, tol: float = GEOM_TOL) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=tol)
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=tol)


def nifti_path(case_dir: Path, modality: str) -> Path:
    return case_dir / f"{case_dir.name}_{modality}.nii.gz"


def corr_inside_brain(reference: sitk.Image, moving: sitk.Image, tx: sitk.Transform) -> float:
    """Pearson correlation, inside the reference's non-zero voxels, of the reference with
    ``output(x) = moving(tx(x))`` resampled (linear) on the reference grid."""
    out = sitk.Resample(moving, reference, tx, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    a = sitk.GetArrayFromImage(reference).astype(np.float64)
    b = sitk.GetArrayFromImage(out).astype(np.float64)
    inside = a > 0
    return float(np.corrcoef(a[inside], b[inside])[0, 1])


def euler_from_json(entry: dict) -> sitk.Euler3DTransform:
    tx = sitk.Euler3DTransform()
    tx.SetCenter(entry["center_mm"])
    tx.SetRotation(*entry["angles_rad"])
    tx.SetTranslation(entry["translation_mm"])
    return tx


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "samples.make_study", *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )


# --------------------------------------------------------------------------------------------
# Fixtures: each study built once per module
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def case_dir(brats_dir: Path) -> Path:
    path = brats_dir / CASE
    if not path.is_dir():
        pytest.skip(f"BraTS case {CASE} not found under {brats_dir}")
    return path


@pytest.fixture(scope="module")
def aligned(case_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> StudyManifest:
    return make_study(case_dir, tmp_path_factory.mktemp("aligned"), seed=0)


@pytest.fixture(scope="module")
def aligned_again(case_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> StudyManifest:
    return make_study(case_dir, tmp_path_factory.mktemp("aligned_again"), seed=0)


@pytest.fixture(scope="module")
def dropped(case_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> StudyManifest:
    return make_study(case_dir, tmp_path_factory.mktemp("dropped"), drop=("t1", "flair"), seed=0)


@pytest.fixture(scope="module")
def misaligned(case_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> StudyManifest:
    return make_study(case_dir, tmp_path_factory.mktemp("misaligned"), misalign_seed=MISALIGN_SEED)


@pytest.fixture(scope="module")
def misaligned_no_t1ce(case_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> StudyManifest:
    return make_study(case_dir, tmp_path_factory.mktemp("mis_no_t1ce"), drop=("t1ce", "flair"),
                      misalign_seed=MISALIGN_SEED, seed=1)


# --------------------------------------------------------------------------------------------
# Aligned study
# --------------------------------------------------------------------------------------------
def test_layout_and_study_json(aligned: StudyManifest, case_dir: Path) -> None:
    out = aligned.out_dir
    assert sorted(p.name for p in out.iterdir()) == ["dicom", "ground_truth.nii.gz", "study.json"]
    assert (out / "ground_truth.nii.gz").read_bytes() == nifti_path(case_dir, "seg").read_bytes()
    doc = json.loads((out / "study.json").read_text())
    assert doc["case_id"] == CASE and doc["seed"] == 0
    assert doc["reference_modality"] == "t1ce" and doc["dropped"] == []
    assert sorted(s["modality"] for s in doc["series"]) == sorted(MODALITIES)
    folders = sorted(p.name for p in (out / "dicom").iterdir())
    assert folders == sorted(Path(s["folder"]).name for s in doc["series"])
    for s in doc["series"]:
        folder = out / s["folder"]
        assert re.fullmatch(rf"{s['series_number']}_[A-Za-z0-9_]+", folder.name)
        names = sorted(p.name for p in folder.iterdir())
        assert names == [f"IM_{k:04d}.dcm" for k in range(1, s["size"][2] + 1)]
        for key in ("series_instance_uid", "series_description", "spacing", "origin", "direction"):
            assert key in s
    assert Path(doc["series"][-1]["folder"]).name == "501_AX_T1_POST_GD"  # seed 0 naming


def test_sitk_readback_equals_nifti(aligned: StudyManifest, case_dir: Path) -> None:
    for m, s in aligned.series.items():
        dcm = read_series_sitk(s.folder)
        ref = sitk.ReadImage(str(nifti_path(case_dir, m)))
        assert dcm.GetPixelID() == sitk.sitkInt16
        np.testing.assert_array_equal(sitk.GetArrayFromImage(dcm), sitk.GetArrayFromImage(ref))
        assert_same_geometry(dcm, ref)
        np.testing.assert_allclose(s.origin, ref.GetOrigin(), atol=GEOM_TOL)
        np.testing.assert_allclose(s.direction, ref.GetDirection(), atol=GEOM_TOL)


def test_pydicom_readback_and_explicit_geometry(aligned: StudyManifest, case_dir: Path) -> None:
    """Independent of SimpleITK: pixel_array[j, i] == data[i, j, k] and
    ImagePositionPatient == A_lps @ (0, 0, k, 1), with A_lps from the nibabel affine."""
    for m, s in aligned.series.items():
        img = nib.load(str(nifti_path(case_dir, m)))
        data = np.asanyarray(img.dataobj)
        a_lps = nifti_lps_affine(img)
        dss = read_series_pydicom(s.folder)
        assert [int(d.InstanceNumber) for d in dss] == list(range(1, data.shape[2] + 1))
        stack = np.stack([d.pixel_array.T for d in dss], axis=-1)
        assert stack.dtype == np.int16
        np.testing.assert_array_equal(stack, data)
        spacing = np.linalg.norm(a_lps[:3, :3], axis=0)
        iop = np.concatenate([a_lps[:3, 0] / spacing[0], a_lps[:3, 1] / spacing[1]])
        for k, d in enumerate(dss):
            assert d.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
            assert d.file_meta.MediaStorageSOPClassUID == MR_IMAGE_STORAGE == d.SOPClassUID
            assert d.file_meta.MediaStorageSOPInstanceUID == d.SOPInstanceUID
            np.testing.assert_allclose([float(v) for v in d.ImagePositionPatient],
                                       (a_lps @ [0, 0, k, 1])[:3], atol=GEOM_TOL)
            np.testing.assert_allclose([float(v) for v in d.ImageOrientationPatient], iop,
                                       atol=GEOM_TOL)
            np.testing.assert_allclose([float(v) for v in d.PixelSpacing],
                                       [spacing[1], spacing[0]], atol=GEOM_TOL)
            assert (d.Rows, d.Columns) == (data.shape[1], data.shape[0])
            assert d.BitsAllocated == 16 and d.PixelRepresentation == 1


def test_one_patient_one_study(aligned: StudyManifest) -> None:
    firsts = {m: pydicom.dcmread(s.folder / "IM_0001.dcm", stop_before_pixels=True)
              for m, s in aligned.series.items()}
    shared = ("StudyInstanceUID", "PatientName", "PatientID", "StudyDate", "StudyTime",
              "AccessionNumber", "ReferringPhysicianName", "FrameOfReferenceUID",
              "Manufacturer", "StudyDescription")
    for key in shared:
        assert len({str(d.get(key)) for d in firsts.values()}) == 1, key
    d0 = firsts["t1ce"]
    assert d0.StudyInstanceUID == aligned.study_instance_uid
    assert str(d0.PatientName) == "BRATS^TCIA01_201" and d0.PatientID == CASE
    assert len({d.SeriesInstanceUID for d in firsts.values()}) == 4
    assert len({int(d.SeriesNumber) for d in firsts.values()}) == 4
    times = [firsts[m].AcquisitionTime for m in ("t1", "t2", "flair", "t1ce")]
    assert times == sorted(times) and len(set(times)) == 4  # contrast-enhanced T1 last
    for d in firsts.values():
        assert d.Modality == "MR" and d.PatientPosition == "HFS" and d.BodyPartExamined == "BRAIN"
        assert d.MRAcquisitionType == "2D" and float(d.MagneticFieldStrength) > 0


def test_modality_specific_headers(aligned: StudyManifest) -> None:
    hdr = {m: pydicom.dcmread(s.folder / "IM_0001.dcm", stop_before_pixels=True)
           for m, s in aligned.series.items()}
    for m, d in hdr.items():
        assert list(d.ImageType)[:2] == ["ORIGINAL", "PRIMARY"]
        raw = d.ScanningSequence
        seq = [raw] if isinstance(raw, str) else list(raw)
        assert "SE" in seq
        assert ("IR" in seq) == (m == "flair")
        assert ("InversionTime" in d) == (m == "flair")
        assert ("ContrastBolusAgent" in d) == (m == "t1ce")
        assert d.SeriesDescription and d.ProtocolName
    assert hdr["t1ce"].ContrastBolusAgent == "Gadobutrol"
    assert float(hdr["t1"].RepetitionTime) < 1000 and float(hdr["t1"].EchoTime) < 30
    assert float(hdr["t2"].EchoTime) > 60 and float(hdr["flair"].InversionTime) > 1500
    assert {m: d.SeriesDescription for m, d in hdr.items()} == {
        "flair": "AX FLAIR", "t1": "AX T1 SE", "t1ce": "AX T1 POST GD", "t2": "t2_tse_tra"}


def test_deterministic(aligned: StudyManifest, aligned_again: StudyManifest) -> None:
    a = json.loads(aligned.study_json.read_text())
    b = json.loads(aligned_again.study_json.read_text())
    assert a == b  # same UIDs, names, geometry
    rel = aligned.series["flair"].folder.relative_to(aligned.out_dir) / "IM_0077.dcm"
    assert (aligned.out_dir / rel).read_bytes() == (aligned_again.out_dir / rel).read_bytes()


def test_other_seed_changes_uids_and_vendor(case_dir: Path, aligned: StudyManifest,
                                            tmp_path: Path) -> None:
    """Seed 2 = Philips-style names (seed 1, GE style, is built by ``misaligned_no_t1ce``)."""
    other = make_study(case_dir, tmp_path, drop=("t1", "t2"), seed=2)
    assert other.study_instance_uid != aligned.study_instance_uid
    assert other.series["t1ce"].series_instance_uid != aligned.series["t1ce"].series_instance_uid
    assert other.manufacturer != aligned.manufacturer  # seed % 3 picks the vendor style
    hdr = {m: pydicom.dcmread(s.folder / "IM_0001.dcm", stop_before_pixels=True)
           for m, s in other.series.items()}
    assert "ContrastBolusAgent" in hdr["t1ce"] and "ContrastBolusAgent" not in hdr["flair"]
    assert hdr["t1ce"].SeriesDescription != aligned.series["t1ce"].series_description
    assert "InversionTime" in hdr["flair"]
    _assert_dciodvfy_clean([s.folder / "IM_0001.dcm" for s in other.series.values()])


def _assert_dciodvfy_clean(files: list[Path]) -> None:
    """No ``Error`` from dciodvfy (vendor-style defined-term warnings are expected)."""
    from tests.dicom_validation import DciodvfyMissingError, run_dciodvfy

    for f in files:
        try:
            errors, _ = run_dciodvfy(f)
        except DciodvfyMissingError as exc:
            pytest.skip(str(exc))
        assert errors == [], (f, errors)


def test_dciodvfy_no_errors(aligned: StudyManifest, misaligned: StudyManifest,
                            misaligned_no_t1ce: StudyManifest) -> None:
    files = [s.folder / "IM_0001.dcm" for s in aligned.series.values()]
    files += [s.folder / "IM_0002.dcm" for s in misaligned.series.values() if s.misaligned]
    files += [s.folder / "IM_0003.dcm" for s in misaligned_no_t1ce.series.values()]  # GE style
    _assert_dciodvfy_clean(files)


# --------------------------------------------------------------------------------------------
# --drop
# --------------------------------------------------------------------------------------------
def test_drop_keeps_exactly_the_rest(dropped: StudyManifest, aligned: StudyManifest) -> None:
    assert set(dropped.series) == {"t1ce", "t2"}
    assert dropped.dropped == ("flair", "t1")
    doc = json.loads(dropped.study_json.read_text())
    assert doc["dropped"] == ["flair", "t1"] and doc["present"] == ["t1ce", "t2"]
    folders = sorted(p.name for p in dropped.dicom_dir.iterdir())
    assert folders == sorted(s.folder.name for s in dropped.series.values())
    for m in ("t1ce", "t2"):  # the remaining series are the same series as in the full study
        assert dropped.series[m].series_instance_uid == aligned.series[m].series_instance_uid


def test_api_errors(case_dir: Path, tmp_path: Path, aligned: StudyManifest) -> None:
    with pytest.raises(StudyBuildError, match="all four"):
        make_study(case_dir, tmp_path, drop=MODALITIES)
    with pytest.raises(StudyBuildError, match="unknown modality"):
        make_study(case_dir, tmp_path, drop=("t1", "pd"))
    assert not (tmp_path / "dicom").exists()
    with pytest.raises(StudyBuildError, match="already holds a study"):  # no silent overwrite
        make_study(case_dir, aligned.out_dir)


# --------------------------------------------------------------------------------------------
# --misalign
# --------------------------------------------------------------------------------------------
def test_misalignment_json(misaligned: StudyManifest) -> None:
    assert misaligned.misalignment_json is not None
    doc = json.loads(misaligned.misalignment_json.read_text())
    assert doc["reference_modality"] == "t1ce" == misaligned.reference_modality
    conv = doc["convention"]
    assert "reference" in conv and "moving" in conv and "fixed=reference" in conv
    assert set(doc["series"]) == {"t1", "t2", "flair"}
    for e in doc["series"].values():
        assert len(e["angles_rad"]) == 3 and len(e["translation_mm"]) == 3
        assert max(abs(a) for a in e["angles_rad"]) <= np.radians(5) + 1e-9
        assert max(abs(t) for t in e["translation_mm"]) <= 5 + 1e-9
        # the 4x4 matrix is the same map as the Euler parameters
        tx, m4 = euler_from_json(e), np.asarray(e["matrix_4x4"])
        p = np.array([10.0, -150.0, 40.0])
        np.testing.assert_allclose(tx.TransformPoint(tuple(p)), (m4 @ np.append(p, 1))[:3],
                                   atol=1e-6)


def test_misaligned_reference_unchanged(misaligned: StudyManifest, case_dir: Path) -> None:
    ref = misaligned.series["t1ce"]
    dcm = read_series_sitk(ref.folder)
    nii = sitk.ReadImage(str(nifti_path(case_dir, "t1ce")))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(dcm), sitk.GetArrayFromImage(nii))
    assert_same_geometry(dcm, nii)
    for_uids = {s.frame_of_reference_uid for s in misaligned.series.values()}
    assert len(for_uids) == 4  # each separately positioned acquisition has its own frame


def test_misaligned_series_undone_by_recorded_transform(
    misaligned: StudyManifest, case_dir: Path
) -> None:
    """Resampling with the recorded T (output(x) = moving(T(x))) restores the original; the
    identity and the inverse (= the wrong convention) are clearly worse."""
    doc = json.loads(misaligned.misalignment_json.read_text())  # type: ignore[union-attr]
    reference = read_series_sitk(misaligned.series["t1ce"].folder)
    for m, e in doc["series"].items():
        moving = read_series_sitk(misaligned.out_dir / e["folder"])
        s = misaligned.series[m]
        assert moving.GetSize() == s.size
        np.testing.assert_allclose(moving.GetSpacing(), s.spacing, atol=GEOM_TOL)
        np.testing.assert_allclose(moving.GetOrigin(), s.origin, atol=GEOM_TOL)
        # its own acquisition grid
        assert moving.GetSize() != reference.GetSize()
        assert not np.allclose(moving.GetSpacing(), reference.GetSpacing())
        original = sitk.ReadImage(str(nifti_path(case_dir, m)))
        tx = euler_from_json(e)
        c_true = corr_inside_brain(original, moving, tx)
        c_identity = corr_inside_brain(original, moving, sitk.Euler3DTransform())
        c_inverse = corr_inside_brain(original, moving, tx.GetInverse())
        # Not 1.0: 2-3 mm slices and two linear interpolations lose detail; T1 (low in-brain
        # contrast) suffers most (measured for this case / seed: t1 0.885, t2 0.941,
        # flair 0.968; identity 0.39-0.60; inverse 0.16-0.39).
        assert c_true > (0.92 if m in ("t2", "flair") else 0.85), (m, c_true)
        assert c_true - c_identity > 0.2, (m, c_true, c_identity)
        assert c_true - c_inverse > 0.2, (m, c_true, c_inverse)
        # values: int16, zeros outside the brain stay zero
        arr = sitk.GetArrayFromImage(moving)
        assert arr.dtype == np.int16 and arr.min() >= 0 and (arr == 0).mean() > 0.3


def test_misaligned_reference_rule_without_t1ce(misaligned_no_t1ce: StudyManifest,
                                                case_dir: Path) -> None:
    assert misaligned_no_t1ce.reference_modality == "t1"
    assert misaligned_no_t1ce.manufacturer == "GE MEDICAL SYSTEMS"  # seed 1
    assert set(misaligned_no_t1ce.transforms) == {"t2"}
    dcm = read_series_sitk(misaligned_no_t1ce.series["t1"].folder)
    nii = sitk.ReadImage(str(nifti_path(case_dir, "t1")))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(dcm), sitk.GetArrayFromImage(nii))
    assert_same_geometry(dcm, nii)


# --------------------------------------------------------------------------------------------
# CLI errors
# --------------------------------------------------------------------------------------------
def test_cli_bad_input_one_line_error(case_dir: Path, tmp_path: Path) -> None:
    empty_case = tmp_path / "Brats18_NOPE_1"
    empty_case.mkdir()
    cases = [
        ((str(tmp_path / "no_such_case"), str(tmp_path / "o1")), "case folder not found"),
        ((str(empty_case), str(tmp_path / "o2")), "missing case file"),
        ((str(case_dir), str(tmp_path / "o3"), "--drop", "t1,t3"), "unknown modality"),
    ]
    for args, expected in cases:
        proc = run_cli(*args)
        assert proc.returncode != 0, args
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], proc.stderr
        assert not (Path(args[1]) / "dicom").exists()
