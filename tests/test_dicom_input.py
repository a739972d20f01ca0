"""DICOM input as scanners and PACS deliver it: what the loader and the series volumes accept,
ignore or refuse (function level, on slab studies of a real case); which series the selector
leaves out.

* non-DICOM / empty files, non-image objects, duplicated SOP instances: ignored (listed in
  the report); a *DICOM* file that cannot be parsed or has truncated pixel data: refused;
* two studies / two patients: refused;
* missing slice, uneven spacing, mixed orientation / pixel spacing in a used series: refused
  (``inconsistent_geometry``), never interpolated;
* 4D / multi-echo series (several instances at one position): left out with a reason;
* localisers / derived images: not selected (reason in the report);
* compressed transfer syntaxes (RLE, JPEG-LS, JPEG 2000): decoded; no codec: refused;
* constant / blank / non-finite / huge intensities: refused (``degenerate_intensities``).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless, generate_uid

from operators import errors
from operators.dicom.study_loader import load_study
from tests.slab_studies import CASE, SMALL_SLAB, add_series, copy_study, files_of, rewrite, series_dir, to_image


def test_slab_study_keeps_exact_geometry(small_study: Path, brats_dir: Path) -> None:
    """``make_study(slices=(start, end))``: slice k of the slab sits where NIfTI slice
    start + k is; the cropped ground truth has the same grid; UIDs differ from a full study."""
    import nibabel as nib

    from samples.make_study import nifti_lps_affine

    affine = nifti_lps_affine(nib.load(str(brats_dir / CASE / f"{CASE}_t1ce.nii.gz")))
    files = files_of(series_dir(small_study, "t1ce"))
    assert len(files) == SMALL_SLAB[1] - SMALL_SLAB[0]
    for k in (0, len(files) - 1):
        ds = pydicom.dcmread(files[k], stop_before_pixels=True)
        expected = (affine @ np.array([0.0, 0.0, SMALL_SLAB[0] + k, 1.0]))[:3]
        np.testing.assert_allclose(np.asarray(ds.ImagePositionPatient, float), expected, atol=1e-4)
    truth = nib.load(str(small_study.parent / "ground_truth.nii.gz"))
    assert truth.shape == (240, 240, len(files))
    np.testing.assert_allclose(nifti_lps_affine(truth), affine @ np.array(
        [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, SMALL_SLAB[0]], [0, 0, 0, 1]], float), atol=1e-4)
    study = json.loads((small_study.parent / "study.json").read_text())
    assert study["slices"] == list(SMALL_SLAB)
    from samples.make_study import study_context

    assert study["study_instance_uid"] == study_context(CASE, 0, None, SMALL_SLAB).study_uid
    assert study["study_instance_uid"] != study_context(CASE, 0, None).study_uid


# ----------------------------------------------------------------------------- loader
def test_non_dicom_empty_and_non_image_files_are_ignored(small_study: Path, shared_dir: Path, tmp_path: Path) -> None:
    study = copy_study(small_study, tmp_path / "s")
    (study / "empty.dcm").write_bytes(b"")
    (study / "notes.txt").write_text("radiographer's notes\n")
    (study / "garbage.bin").write_bytes(os.urandom(4096))
    (study / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + os.urandom(100))
    shutil.copy(shared_dir / "data/dicom-seg-reference/dcmqi/liver.dcm", study / "old_seg.dcm")
    loaded = load_study(study)
    assert len(loaded.series) == 4 and all(s.header.number_of_instances == 12 for s in loaded.series)
    reasons = {Path(i["what"]).name: i["reason"] for i in loaded.ignored}
    assert reasons["empty.dcm"] == "empty file"
    assert reasons["notes.txt"].startswith("not a readable DICOM file")
    assert reasons["garbage.bin"].startswith("not a readable DICOM file")
    assert "not an image object" in reasons["old_seg.dcm"]


@pytest.mark.parametrize(
    "cut, error",
    [
        pytest.param(-5000, errors.UnreadablePixelDataError, id="pixel-data-cut"),
        pytest.param(1000, errors.UnreadablePixelDataError, id="cut-before-pixel-data"),
        pytest.param(300, errors.UnreadablePixelDataError, id="only-file-meta-left"),  # meta says MR image
        pytest.param(150, errors.CorruptDicomFileError, id="cut-in-file-meta"),
    ],
)
def test_truncated_file_is_refused(small_study: Path, tmp_path: Path, cut: int, error: type) -> None:
    study = copy_study(small_study, tmp_path / "s")
    victim = files_of(series_dir(study, "t2"))[5]
    raw = victim.read_bytes()
    victim.write_bytes(raw[:cut])
    with pytest.raises(error) as info:
        load_study(study)
    assert victim.name in info.value.one_line()


def test_two_studies_or_two_patients_are_refused(small_study: Path, tmp_path: Path) -> None:
    study = copy_study(small_study, tmp_path / "two_studies", only=("t1", "t2"))
    rewrite(series_dir(study, "t2"), lambda ds, k: setattr(ds, "StudyInstanceUID", "1.2.3.4.5.6.7.8"))
    with pytest.raises(errors.MultipleStudiesError, match="2 studies"):
        load_study(study)
    study = copy_study(small_study, tmp_path / "two_patients", only=("t1", "t2"))
    rewrite(series_dir(study, "t2"), lambda ds, k: setattr(ds, "PatientID", "SOMEONE_ELSE"))
    with pytest.raises(errors.MultipleStudiesError, match="2 patient"):
        load_study(study)


def test_duplicated_instances_are_used_once(small_study: Path, tmp_path: Path) -> None:
    study = copy_study(small_study, tmp_path / "s", only=("t1ce",))
    folder = series_dir(study, "t1ce")
    for path in files_of(folder)[:3]:
        shutil.copy(path, study / f"copy_of_{path.name}")  # same SOP Instance UID elsewhere
    loaded = load_study(study)
    assert loaded.series[0].header.number_of_instances == 12
    assert sum("duplicate SOPInstanceUID" in i["reason"] for i in loaded.ignored) == 3
    assert to_image(study, "t1ce").image.GetSize() == (240, 240, 12)


def test_missing_slice_or_uneven_spacing_is_refused(small_study: Path, tmp_path: Path) -> None:
    study = copy_study(small_study, tmp_path / "missing", only=("t1ce",))
    files_of(series_dir(study, "t1ce"))[6].unlink()
    with pytest.raises(errors.InconsistentGeometryError, match="regular volume"):
        to_image(study, "t1ce")

    study = copy_study(small_study, tmp_path / "uneven", only=("t1ce",))

    def shift(ds: pydicom.Dataset, k: int) -> None:
        if k >= 6:  # a 1.5 mm gap between slices 5 and 6, 1 mm elsewhere
            ds.ImagePositionPatient = [float(ds.ImagePositionPatient[0]), float(ds.ImagePositionPatient[1]),
                                       float(ds.ImagePositionPatient[2]) + 0.5]

    rewrite(series_dir(study, "t1ce"), shift)
    with pytest.raises(errors.InconsistentGeometryError):
        to_image(study, "t1ce")


@pytest.mark.parametrize("attribute", ["ImageOrientationPatient", "PixelSpacing"])
def test_series_with_mixed_orientation_or_pixel_spacing_is_refused(small_study: Path, tmp_path: Path, attribute: str) -> None:
    study = copy_study(small_study, tmp_path / "s", only=("t1ce",))

    def change(ds: pydicom.Dataset, k: int) -> None:
        if k == 4:
            if attribute == "PixelSpacing":
                ds.PixelSpacing = [1.2, 1.2]
            else:
                c, s = np.cos(np.radians(10)), np.sin(np.radians(10))
                ds.ImageOrientationPatient = [-c, -s, 0.0, s, -c, 0.0]

    rewrite(series_dir(study, "t1ce"), change)
    with pytest.raises(errors.InconsistentGeometryError):
        to_image(study, "t1ce")


def test_localiser_is_set_aside_and_a_reformat_loses_to_its_original(small_study: Path, tmp_path: Path) -> None:
    from operators.selection.modality_selector import SelectionRules, select_modalities

    study = copy_study(small_study, tmp_path / "s")

    def localiser(ds: pydicom.Dataset, k: int) -> None:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.SeriesDescription = "AAHead_Scout T1"

    def derived(ds: pydicom.Dataset, k: int) -> None:
        ds.ImageType = ["DERIVED", "SECONDARY", "MPR"]
        ds.SeriesDescription = "AX T1 POST GD MPR"

    add_series(study, "t1", "1_localiser", 1, localiser)
    add_series(study, "t1ce", "601_mpr", 601, derived)
    selection = select_modalities(load_study(study), SelectionRules.load())
    assert selection.missing == []
    chosen = {m: s.header.series_number for m, s in selection.selected.items()}
    assert chosen == {"t1": 201, "t2": 301, "flair": 401, "t1ce": 501}
    reasons = {c.series_description: c for c in selection.candidates}
    assert reasons["AAHead_Scout T1"].modality == "other" and "LOCALIZER" in reasons["AAHead_Scout T1"].reasons[0]
    # a reformat is an image (a candidate), but the original acquisition of its kind is preferred
    assert reasons["AX T1 POST GD MPR"].modality == "t1ce"
    assert "chosen over series 601" in selection.reasons["t1ce"]


def test_multi_echo_series_is_left_out_never_mixed(small_study: Path, tmp_path: Path) -> None:
    """A dual-echo series (the same positions at TE 15 and TE 100, one SeriesInstanceUID)."""
    from operators.selection.modality_selector import SelectionRules, select_modalities

    study = copy_study(small_study, tmp_path / "s")
    t2 = series_dir(study, "t2")
    series_uid = str(pydicom.dcmread(files_of(t2)[0]).SeriesInstanceUID)
    echo1 = study / "301_echo1"
    echo1.mkdir()
    for k, path in enumerate(files_of(t2)):
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.EchoTime, ds.EchoNumbers, ds.InstanceNumber = 15, 1, 100 + k
        ds.pixel_array  # noqa: B018
        ds.save_as(echo1 / path.name, enforce_file_format=True)
    assert str(pydicom.dcmread(files_of(echo1)[0]).SeriesInstanceUID) == series_uid
    loaded = load_study(study)
    assert series_uid not in {s.header.series_instance_uid for s in loaded.series}
    (entry,) = [i for i in loaded.ignored if "multi-echo" in i["reason"]]
    assert "24 instances at 12 positions" in entry["reason"] and "EchoTime" in entry["reason"]
    selection = select_modalities(loaded, SelectionRules.load())
    assert selection.missing == ["t2"]  # reported missing, never a mixed volume


# ----------------------------------------------------------------------------- pixel data
@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless], ids=["rle", "jpeg-ls", "jpeg2000"])
def test_compressed_series_decode_to_the_same_volume(small_study: Path, tmp_path: Path, syntax) -> None:
    import SimpleITK as sitk

    plain = to_image(small_study, "t1ce")
    study = copy_study(small_study, tmp_path / "s", only=("t1ce",))
    rewrite(series_dir(study, "t1ce"), lambda ds, k: ds.compress(syntax))
    assert pydicom.dcmread(files_of(series_dir(study, "t1ce"))[0]).file_meta.TransferSyntaxUID == syntax
    compressed = to_image(study, "t1ce")
    assert np.array_equal(sitk.GetArrayFromImage(plain.image), sitk.GetArrayFromImage(compressed.image))
    assert compressed.image.GetOrigin() == plain.image.GetOrigin()


def test_unknown_codec_and_corrupt_stream_are_refused(small_study: Path, tmp_path: Path) -> None:
    study = copy_study(small_study, tmp_path / "codec", only=("t1ce",))

    def mpeg4(ds: pydicom.Dataset, k: int) -> None:
        ds.compress(RLELossless)
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.102"  # MPEG-4 AVC: no decoder here

    for path in files_of(series_dir(study, "t1ce")):
        ds = pydicom.dcmread(path)
        mpeg4(ds, 0)
        pydicom.dcmwrite(path, ds, implicit_vr=False, little_endian=True)
    with pytest.raises(errors.UnsupportedTransferSyntaxError, match="MPEG-4"):
        to_image(study, "t1ce")

    study = copy_study(small_study, tmp_path / "corrupt", only=("t1ce",))
    rewrite(series_dir(study, "t1ce"), lambda ds, k: ds.compress(JPEG2000Lossless))
    victim = files_of(series_dir(study, "t1ce"))[3]
    ds = pydicom.dcmread(victim)
    frames = pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1)
    frame = next(frames)
    ds.PixelData = pydicom.encaps.encapsulate([frame[:64] + b"\xff" * (len(frame) - 64)])
    ds.save_as(victim, enforce_file_format=True)
    with pytest.raises(errors.UnreadablePixelDataError, match="instance 4"):
        to_image(study, "t1ce")


@pytest.mark.parametrize(
    "kind, match",
    [("constant", "constant intensity"), ("blank", "no pixel value above 0"), ("huge", "not plausible")],
)
def test_degenerate_intensities_are_refused(small_study: Path, tmp_path: Path, kind: str, match: str) -> None:
    study = copy_study(small_study, tmp_path / "s", only=("t1ce",))

    def change(ds: pydicom.Dataset, k: int) -> None:
        pixels = ds.pixel_array
        if kind == "constant":
            pixels = np.full_like(pixels, 300)
        elif kind == "blank":
            pixels = np.zeros_like(pixels)
        else:
            ds.RescaleSlope, ds.RescaleIntercept = "1e30", "0"
        ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()

    rewrite(series_dir(study, "t1ce"), change)
    with pytest.raises(errors.DegenerateIntensityError, match=match):
        to_image(study, "t1ce")




def test_lying_series_description_is_outvoted_by_parameters(small_study: Path, tmp_path: Path) -> None:
    from operators.selection.modality_selector import SelectionRules, select_modalities

    study = copy_study(small_study, tmp_path / "s")
    rewrite(series_dir(study, "t1"), lambda ds, k: setattr(ds, "SeriesDescription", "AX FLAIR"))
    selection = select_modalities(load_study(study), SelectionRules.load())
    assert selection.selected["t1"].header.series_number == 201  # says FLAIR, TR 550 / TE 10: T1
    assert selection.selected["flair"].header.series_number == 401
