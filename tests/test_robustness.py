"""Robustness (issue 7): malformed studies, faults and odd-but-valid inputs.

Inputs are built here from the shared BraTS data (``samples.make_study`` with a thin slab of
slices, then mutated with pydicom). Decisions checked (and documented in the README):

* malformed input -> exit 2 (input), 3 (output folder), 4 (model folder), 1 (bug), 143
  (SIGTERM); one line in the log and in ``report.json`` (``status: failed``, ``error_code``);
  nothing else in the output folder (no SEG, no staging folder, no partial file);
* non-DICOM / empty files, non-image objects, duplicated SOP instances: ignored (listed in
  the report); a *DICOM* file that cannot be parsed or has truncated pixel data: refused;
* two studies / two patients: refused;
* missing slice, uneven spacing, mixed orientation / pixel spacing in a used series: refused
  (``inconsistent_geometry``), never interpolated;
* 4D / multi-echo series (several instances at one position): left out of the study with
  a reason (never mixed, not split);
* localisers / derived images: not selected (reason in the report);
* compressed transfer syntaxes (RLE, JPEG-LS, JPEG 2000): decoded; no codec: refused
  (``unsupported_transfer_syntax``);
* Enhanced MR (multi-frame) reference: the SEG references its frames;
* constant / blank / non-finite / huge intensities: refused (``degenerate_intensities``);
* an explicitly requested engine that cannot run here: falls back to ``auto``, the warning
  is in ``report.json`` (``segmentation.notes``).

Most malformed cases are checked at the function level (fast); a few through the real app
(``python -m app``) prove the exit code / report / no-partial-output contract. The full
valid run is on a 20-slice slab; other full runs are marked slow.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless, generate_uid

from operators import errors
from operators.study_loader import load_study
from tests.app_runner import REPO_ROOT, AppRun, run_app

CASE = "Brats18_TCIA01_201_1"  # tumour in NIfTI slices 58..131
SMALL_SLAB = (95, 107)  # 12 slices through the tumour: quick to build, load, register
RUN_SLAB = (92, 112)  # 20 slices through the tumour: the full valid run
HEALTHY_CASE, HEALTHY_SLAB = "Brats18_CBICA_ABM_1", (110, 126)  # tumour in 35..88, brain up to 137
FOLDERS = {"t1": "201_", "t2": "301_", "flair": "401_", "t1ce": "501_"}  # seed 0 (Siemens names)


# ----------------------------------------------------------------------------- helpers
def _make(brats_dir: Path, out: Path, slices: tuple[int, int], case: str = CASE, **kwargs) -> Path:
    from samples.make_study import make_study

    make_study(brats_dir / case, out, slices=slices, **kwargs)
    return out / "dicom"


@pytest.fixture(scope="session")
def small_study(brats_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-series, 12-slice study (never modified: tests copy it)."""
    return _make(brats_dir, tmp_path_factory.mktemp("small_study"), SMALL_SLAB)


def copy_study(src: Path, dst: Path, only: tuple[str, ...] | None = None) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for folder in sorted(src.iterdir()):
        if only is None or any(folder.name.startswith(FOLDERS[m]) for m in only):
            shutil.copytree(folder, dst / folder.name)
    return dst


def series_dir(study: Path, modality: str) -> Path:
    (folder,) = [p for p in study.iterdir() if p.name.startswith(FOLDERS[modality])]
    return folder


def files_of(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.dcm"))


def rewrite(folder: Path, change: Callable[[pydicom.Dataset, int], None]) -> None:
    """Apply ``change(ds, k)`` to every file of a series (k = index in file order)."""
    for k, path in enumerate(files_of(folder)):
        ds = pydicom.dcmread(path)
        change(ds, k)
        ds.save_as(path, enforce_file_format=True)


def series_of(study_dir: Path, modality: str):
    study = load_study(study_dir)
    uid = str(pydicom.dcmread(files_of(series_dir(study_dir, modality))[0], stop_before_pixels=True).SeriesInstanceUID)
    (series,) = [s for s in study.series if s.header.series_instance_uid == uid]
    return series


def to_image(study_dir: Path, modality: str):
    from operators.series_volume import series_to_image

    series = series_of(study_dir, modality)
    return series_to_image(series.datasets, series.header.series_description)


def assert_failed_cleanly(run: AppRun, exit_code: int, error_code: str) -> dict:
    assert run.returncode == exit_code, run.log[-3000:]
    assert run.files() == ["report.json"], run.files()
    report = run.report
    assert report["status"] == "failed" and report["error_code"] == error_code, report
    assert "\n" not in report["error"] and report["error"].startswith(error_code)
    error_lines = [ln for ln in run.log.splitlines() if f"- {error_code}:" in ln]
    assert error_lines, run.log[-3000:]
    return report



def write_valid_seg(labels: np.ndarray, image, used: list[str], missing: list[str], tmp_path: Path) -> pydicom.Dataset:
    """Build a SEG on ``image``'s instances, write it, assert dciodvfy finds 0 errors, read it back."""
    from operators.seg_builder import build_segmentation
    from tests.dicom_validation import run_dciodvfy

    seg = build_segmentation(
        labels, image.slice_datasets, used_modalities=used, missing_modalities=missing,
        algorithm_name="test", algorithm_version="1", source_frames=image.slice_frames,
    )
    out = tmp_path / "seg.dcm"
    seg.save_as(out, enforce_file_format=True)
    errs, _ = run_dciodvfy(out)
    assert errs == []
    return pydicom.dcmread(out)

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


def _add_series(study: Path, src_modality: str, name: str, number: int, change) -> Path:
    """Copy a series under a new SeriesInstanceUID / SOP UIDs, then ``change(ds, k)``."""
    src = series_dir(study, src_modality)
    dst = study / name
    shutil.copytree(src, dst)
    series_uid = generate_uid()

    def renew(ds: pydicom.Dataset, k: int) -> None:
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SeriesNumber = number
        change(ds, k)

    rewrite(dst, renew)
    return dst


def test_localiser_and_derived_series_are_not_selected(small_study: Path, tmp_path: Path) -> None:
    from operators.modality_selector import SelectionRules, select_modalities

    study = copy_study(small_study, tmp_path / "s")

    def localiser(ds: pydicom.Dataset, k: int) -> None:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.SeriesDescription = "AAHead_Scout T1"

    def derived(ds: pydicom.Dataset, k: int) -> None:
        ds.ImageType = ["DERIVED", "SECONDARY", "MPR"]
        ds.SeriesDescription = "AX T1 POST GD MPR"

    _add_series(study, "t1", "1_localiser", 1, localiser)
    _add_series(study, "t1ce", "601_mpr", 601, derived)
    selection = select_modalities(load_study(study), SelectionRules.load())
    assert selection.missing == []
    chosen = {m: s.header.series_number for m, s in selection.selected.items()}
    assert chosen == {"t1": 201, "t2": 301, "flair": 401, "t1ce": 501}
    reasons = {c.series_description: c for c in selection.candidates}
    assert reasons["AAHead_Scout T1"].modality == "other" and "LOCALIZER" in reasons["AAHead_Scout T1"].reasons[0]
    assert reasons["AX T1 POST GD MPR"].modality == "other" and "DERIVED" in reasons["AX T1 POST GD MPR"].reasons[0]


def test_multi_echo_series_is_left_out_never_mixed(small_study: Path, tmp_path: Path) -> None:
    """A dual-echo series (the same positions at TE 15 and TE 100, one SeriesInstanceUID)."""
    from operators.modality_selector import SelectionRules, select_modalities

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


# ----------------------------------------------------------------------------- SEG writer
def test_enhanced_mr_reference_gets_a_seg_that_references_its_frames(shared_dir: Path, tmp_path: Path) -> None:
    import SimpleITK as sitk

    from operators.series_volume import series_to_image

    (path,) = (shared_dir / "data/real-mr-dicom/siemens-xa30-enhanced-t1").glob("*.dcm")
    source = pydicom.dcmread(path)
    image = series_to_image([source], "enhanced")
    shape = sitk.GetArrayViewFromImage(image.image).shape
    labels = np.zeros(shape, dtype=np.uint8)
    labels[40:50, 50:70, 50:70] = 2
    labels[43:47, 60:65, 60:65] = 4
    labels[44:46, 55:60, 55:60] = 1
    back = write_valid_seg(labels, image, ["T1"], ["FLAIR", "T1CE", "T2"], tmp_path)
    slice_of_frame = {f: k for k, f in enumerate(image.slice_frames)}
    per_frame = source.PerFrameFunctionalGroupsSequence
    n_checked = 0
    for i, group in enumerate(back.PerFrameFunctionalGroupsSequence):
        ref = group.DerivationImageSequence[0].SourceImageSequence[0]
        assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
        frame = int(ref.ReferencedFrameNumber)
        np.testing.assert_allclose(
            np.asarray(group.PlanePositionSequence[0].ImagePositionPatient, float),
            np.asarray(per_frame[frame - 1].PlanePositionSequence[0].ImagePositionPatient, float), atol=1e-3,
        )
        segment = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        label = {1: 1, 2: 2, 3: 4}[segment]
        mask = np.asarray(back.pixel_array).reshape(-1, *shape[1:])[i].astype(bool)
        assert np.array_equal(mask, labels[slice_of_frame[frame]] == label)
        n_checked += 1
    assert n_checked == int(back.NumberOfFrames) > 0


def test_non_ascii_and_long_text_give_a_valid_seg(small_study: Path, tmp_path: Path) -> None:
    study = copy_study(small_study, tmp_path / "s", only=("t1ce",))
    long_description = "T1 post Gd — Kontrastmittel " + "x" * 200  # > 64 chars: invalid LO, seen in the wild

    def text(ds: pydicom.Dataset, k: int) -> None:
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName = "Müller^Zoë^José=山田^太郎"
        ds.SeriesDescription = long_description
        ds.StudyDescription = "Hirn – Tumor ✓ " + "lang " * 30  # > 64 bytes: the SEG copies it

    rewrite(series_dir(study, "t1ce"), text)
    series = series_of(study, "t1ce")
    assert series.header.series_description == long_description
    labels = np.zeros((12, 240, 240), dtype=np.uint8)
    labels[3:6, 100:120, 100:120] = 2
    from operators.series_volume import series_to_image

    image = series_to_image(series.datasets, series.header.series_description)
    back = write_valid_seg(labels, image, ["T1CE"], ["FLAIR", "T1", "T2"], tmp_path)
    assert str(back.PatientName) == "Müller^Zoë^José=山田^太郎"
    assert back.StudyDescription.startswith("Hirn – Tumor ✓ lang")
    assert len(back.StudyDescription.encode("utf-8")) <= 64


def test_lying_series_description_is_outvoted_by_parameters(small_study: Path, tmp_path: Path) -> None:
    from operators.modality_selector import SelectionRules, select_modalities

    study = copy_study(small_study, tmp_path / "s")
    rewrite(series_dir(study, "t1"), lambda ds, k: setattr(ds, "SeriesDescription", "AX FLAIR"))
    selection = select_modalities(load_study(study), SelectionRules.load())
    assert selection.selected["t1"].header.series_number == 201  # says FLAIR, TR 550 / TE 10: T1
    assert selection.selected["flair"].header.series_number == 401


# ----------------------------------------------------------------------------- faults
def test_unavailable_engine_falls_back_to_auto_with_a_note(models_dir: Path) -> None:
    from operators.segmentation_operator import resolve_engine

    engine, notes = resolve_engine("tensorrt", models_dir)
    assert engine is not None
    assert notes and "tensorrt" in notes[0] and "fell back" in notes[0], notes


def test_engine_fallback_logs_hold_no_exception_objects(models_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A log record that keeps an exception keeps its traceback and with it every calling
    frame (the study's volumes): in a process that handles many studies under a handler that
    retains records (pytest's, a memory handler) that was ~0.8 GB per study (soak test)."""
    import logging as logging_

    from operators.segmentation_operator import resolve_engine

    with caplog.at_level(logging_.WARNING):
        # An engine that exists nowhere: the requested-engine fallback logs on every machine
        # (and auto's failed candidates where there is no GPU).
        resolve_engine("no-such-engine", models_dir)
    fallbacks = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert fallbacks, [r.getMessage() for r in caplog.records]
    for record in caplog.records:
        args = record.args if isinstance(record.args, tuple) else (record.args,)
        assert not any(isinstance(a, BaseException) for a in args), record.getMessage()
        assert record.exc_info is None, record.getMessage()


def test_degenerate_channel_on_the_model_grid_is_a_typed_error(models_dir: Path) -> None:
    """engines.cascade.preprocess raises ValueError on a channel without spread: mapped."""
    import logging
    from types import SimpleNamespace

    from operators.segmentation_operator import segment

    blank = SimpleNamespace(volumes=np.zeros((4, 8, 8, 8), dtype=np.float32), available=(True, False, False, False))
    with pytest.raises(errors.DegenerateIntensityError, match="model grid"):
        segment(blank, models_dir, "auto", 0, logging.getLogger("test"))
    constant = SimpleNamespace(volumes=np.full((4, 8, 8, 8), 7.0, dtype=np.float32), available=(True, True, False, False))
    with pytest.raises(errors.DegenerateIntensityError, match="spread"):
        segment(constant, models_dir, "auto", 0, logging.getLogger("test"))


def test_output_names_never_come_from_dicom_text(tmp_path: Path) -> None:
    from operators.output_staging import OutputStaging

    staging = OutputStaging(tmp_path / "out")
    for bad in ("../../etc/passwd", "a/b.dcm", "/etc/passwd", ".hidden", ".."):
        with pytest.raises(ValueError):
            staging.path(bad)
    staging.discard()
    assert list((tmp_path / "out").iterdir()) == []


def test_staging_discard_removes_files_already_published(tmp_path: Path) -> None:
    from operators.output_staging import OutputStaging

    staging = OutputStaging(tmp_path / "out")
    staging.path("segmentation.dcm").write_bytes(b"x")
    staging.publish()
    assert (tmp_path / "out" / "segmentation.dcm").exists()
    staging.discard()  # a failure after publishing (report not written)
    assert list((tmp_path / "out").iterdir()) == []


# ----------------------------------------------------------------------------- through the app
def test_app_truncated_study_fails_fast_and_leaves_only_the_report(
    small_study: Path, models_dir: Path, tmp_path: Path
) -> None:
    study = copy_study(small_study, tmp_path / "s")
    victim = files_of(series_dir(study, "flair"))[7]
    victim.write_bytes(victim.read_bytes()[:-3000])
    run = run_app(study, tmp_path / "out", models_dir)
    report = assert_failed_cleanly(run, 2, "unreadable_pixel_data")
    assert victim.name in report["error"]


def test_app_inconsistent_reference_fails_in_the_graph_and_leaves_only_the_report(
    small_study: Path, models_dir: Path, tmp_path: Path
) -> None:
    """Fails in the registration operator (after the staging folder exists)."""
    study = copy_study(small_study, tmp_path / "s")
    files_of(series_dir(study, "t1ce"))[6].unlink()
    run = run_app(study, tmp_path / "out", models_dir)
    assert_failed_cleanly(run, 2, "inconsistent_geometry")


_LATE_FAILURE = """
import sys
import numpy as np
import operators.segmentation_operator as so
import operators.report_writer_operator as rw
from operators.study_model import SegmentationOutcome

def fast_segment(model_input, model_dir, engine_name, seed, logger, **remote):  # no inference: a blob
    labels = np.zeros(model_input.volumes.shape[1:], dtype=np.uint8)
    z, y, x = (n // 2 for n in labels.shape)
    labels[z - 2:z + 2, y - 10:y + 10, x - 10:x + 10] = 2
    return SegmentationOutcome(model_input, labels, {"runtime": "fake"}, [], [], {"operator_total": 0.0})

def disk_full(*args, **kwargs):
    raise OSError(28, "No space left on device")

so.segment = fast_segment
rw.write_json_atomically = disk_full  # the SEG and PNG are already published when this runs
from app.main import main
sys.exit(main(sys.argv))
"""


def test_app_failure_after_publishing_leaves_no_seg(small_study: Path, models_dir: Path, tmp_path: Path) -> None:
    """The last step (report.json) fails after segmentation.dcm / overlay.png were moved into
    the output folder: they are removed again, only the failed report remains."""
    study = copy_study(small_study, tmp_path / "s", only=("t1ce",))
    run = run_app(study, tmp_path / "out", models_dir, entry=["-c", _LATE_FAILURE])
    assert "Wrote report.json" not in run.log
    assert "SEG segmentation.dcm" in run.log, run.log[-3000:]  # the SEG had been written
    assert_failed_cleanly(run, 1, "internal_error")


def test_earlier_outputs_are_set_aside_unchanged_and_other_files_kept(tmp_path: Path) -> None:
    from operators.output_staging import RUN_OUTPUT_NAMES, set_aside_earlier_outputs

    out = tmp_path / "out"
    out.mkdir()
    assert set_aside_earlier_outputs(out) is None  # nothing there: nothing moved
    contents = {name: f"earlier {name}".encode() for name in RUN_OUTPUT_NAMES}
    for name, data in contents.items():
        (out / name).write_bytes(data)
    (out / "notes.txt").write_text("a user's file")
    first = set_aside_earlier_outputs(out)
    assert first is not None and first.parent == out and first.name.startswith("earlier-run-")
    assert {p.name: p.read_bytes() for p in first.iterdir()} == contents
    assert sorted(p.name for p in out.iterdir()) == sorted([first.name, "notes.txt"])
    # A second earlier run with the same time stamp gets its own folder (nothing overwritten).
    newest = max(p.stat().st_mtime for p in first.iterdir())  # renames keep mtimes
    (out / "report.json").write_bytes(b"second")
    os.utime(out / "report.json", (newest, newest))
    second = set_aside_earlier_outputs(out)
    assert second is not None and second != first and second.name.startswith(first.name)
    assert (second / "report.json").read_bytes() == b"second"
    assert (first / "report.json").read_bytes() == contents["report.json"]


def test_app_failed_rerun_sets_the_earlier_seg_aside(small_study: Path, models_dir: Path, tmp_path: Path) -> None:
    """A failed run into a folder that holds an earlier run's SEG must not leave that SEG
    next to its ``failed`` report (an orchestrator would ship it); nor may it delete it."""
    out = tmp_path / "out"
    out.mkdir()
    earlier = {"segmentation.dcm": b"DICM earlier seg", "overlay.png": b"png", "report.json": b'{"status": "ok"}'}
    for name, data in earlier.items():
        (out / name).write_bytes(data)
    study = copy_study(small_study, tmp_path / "s")
    victim = files_of(series_dir(study, "flair"))[3]
    victim.write_bytes(victim.read_bytes()[:-3000])
    run = run_app(study, out, models_dir)
    assert run.returncode == 2, run.log[-3000:]
    report = run.report
    assert report["status"] == "failed" and report["error_code"] == "unreadable_pixel_data"
    moved = out / report["earlier_outputs_moved_to"]
    assert sorted(p.name for p in out.iterdir()) == sorted(["report.json", moved.name])
    assert {p.name: p.read_bytes() for p in moved.iterdir()} == earlier
    assert "earlier run's outputs" in run.log


def test_app_output_folder_under_a_regular_file_is_refused(small_study: Path, models_dir: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    run = run_app(small_study, blocker / "out", models_dir)
    assert run.returncode == 3, run.log[-3000:]
    assert "output_not_writable" in run.log and "Traceback" not in run.log
    assert blocker.read_text() == "x"


def test_app_output_folder_not_writable_is_refused_before_any_work(small_study: Path, models_dir: Path, tmp_path: Path) -> None:
    """An existing output folder nobody may write into (immutable: even root cannot; as root
    a permission bit would not stop us, and the interpreter is not reachable as 'nobody')."""
    out = tmp_path / "out"
    out.mkdir()
    if subprocess.run(["chattr", "+i", str(out)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i not supported here")
    try:
        run = run_app(small_study, out, models_dir)
    finally:
        subprocess.run(["chattr", "-i", str(out)], check=True)
    assert run.returncode == 3, run.log[-3000:]
    assert "output_not_writable" in run.log and "Loaded study" not in run.log
    assert list(out.iterdir()) == []


def test_app_sigterm_mid_run_leaves_only_a_failed_report(small_study: Path, models_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "app", "-i", str(small_study), "-o", str(out), "-m", str(models_dir)]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    log: list[str] = []
    try:
        deadline = time.monotonic() + 300
        for line in proc.stdout:  # type: ignore[union-attr]
            log.append(line)
            if "Reference t1ce" in line:  # registration has started
                assert any(p.name.startswith(".staging-") for p in out.iterdir())
                proc.send_signal(signal.SIGTERM)
                break
            assert time.monotonic() < deadline, "".join(log[-50:])
        rest, _ = proc.communicate(timeout=300)
        log.append(rest)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = "".join(log)
    run = AppRun(proc.returncode, text, out)
    report = assert_failed_cleanly(run, 143, "terminated")
    assert "SIGTERM" in report["error"]


# ----------------------------------------------------------------------------- valid but odd, end to end
def _odd_study(brats_dir: Path, shared_dir: Path, root: Path) -> Path:
    """A 20-slice study with every valid oddity at once (see the test below)."""
    study = _make(brats_dir, root / "build", RUN_SLAB)
    # Compressed series: RLE, JPEG-LS, JPEG 2000 (T1ce, the reference, stays uncompressed
    # except for one slice each way, so all three codecs feed the SEG path too).
    rewrite(series_dir(study, "t1"), lambda ds, k: ds.compress(RLELossless))
    rewrite(series_dir(study, "t2"), lambda ds, k: ds.compress(JPEGLSLossless))
    rewrite(series_dir(study, "flair"), lambda ds, k: ds.compress(JPEG2000Lossless))
    rewrite(series_dir(study, "t1ce"),
            lambda ds, k: ds.compress((RLELossless, JPEGLSLossless, JPEG2000Lossless)[k]) if k < 3 else None)

    def text(ds: pydicom.Dataset, k: int) -> None:
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName = "Müller^Zoë=山田^太郎"
        ds.StudyDescription = "MR Schädel — " + "lang " * 30

    for modality in FOLDERS:
        rewrite(series_dir(study, modality), text)
    # T1 described as FLAIR (parameters say T1); T1ce described as a path.
    rewrite(series_dir(study, "t1"), lambda ds, k: setattr(ds, "SeriesDescription", "AX FLAIR"))
    rewrite(series_dir(study, "t1ce"), lambda ds, k: setattr(ds, "SeriesDescription", "../../etc/passwd/T1 POST GD"))
    # A localiser, a derived series, junk files and duplicated instances.
    _add_series(study, "t1", "1_loc", 1, lambda ds, k: setattr(ds, "ImageType", ["ORIGINAL", "PRIMARY", "LOCALIZER"]))
    _add_series(study, "t1ce", "601_sub", 601, lambda ds, k: setattr(ds, "ImageType", ["DERIVED", "SECONDARY", "SUBTRACTION"]))
    (study / "empty").write_bytes(b"")
    (study / "README.txt").write_text("exported by PACS\n")
    shutil.copy(shared_dir / "data/dicom-seg-reference/dcmqi/liver.dcm", study / "old_seg.dcm")
    for path in files_of(series_dir(study, "t2"))[:2]:
        shutil.copy(path, study / f"dup_{path.name}")
    return study


def test_app_valid_odd_study_gives_a_valid_seg(brats_dir: Path, shared_dir: Path, models_dir: Path, tmp_path: Path) -> None:
    """Compressed (RLE, JPEG-LS, JPEG 2000), non-ASCII and long text, a lying description, a
    path-like description, a localiser, a derived series, junk and duplicated files, and an
    engine that cannot run here (BRATS_ENGINE=tensorrt): exit 0, a valid SEG, a report that
    says all of it, and nothing written outside the output folder."""
    from tests.dicom_validation import run_dciodvfy

    study = _odd_study(brats_dir, shared_dir, tmp_path)
    before = {p for p in tmp_path.rglob("*")}
    work = tmp_path / "work"
    run = run_app(study, tmp_path / "out", models_dir, env={"BRATS_ENGINE": "tensorrt", "HOLOSCAN_WORKDIR": str(work)})
    assert run.returncode == 0, run.log[-4000:]
    assert run.files() == ["overlay.png", "report.json", "segmentation.dcm"]
    errs, _ = run_dciodvfy(run.output_dir / "segmentation.dcm")
    assert errs == []
    report = run.report
    assert report["status"] == "ok" and report["modalities"]["missing"] == []
    selected = report["input"]["selected"]
    assert selected["t1"]["series_description"] == "AX FLAIR"  # the lie is outvoted
    assert selected["t1ce"]["series_description"] == "../../etc/passwd/T1 POST GD"
    by_number = {s["series_number"]: s for s in report["input"]["series"]}
    assert by_number[1]["detected_modality"] == "other" and by_number[601]["detected_modality"] == "other"
    ignored = " ".join(i["reason"] for i in report["input"]["ignored_files"])
    assert "empty file" in ignored and "not an image object" in ignored and "duplicate SOPInstanceUID" in ignored
    notes = " ".join(report["segmentation"]["notes"])
    assert "tensorrt" in notes and "fell back" in notes
    assert report["result"]["tumour_volumes_ml"]["whole_tumor"] > 1
    seg = pydicom.dcmread(run.output_dir / "segmentation.dcm")
    assert str(seg.PatientName) == "Müller^Zoë=山田^太郎"
    # Nothing written outside the output and work folders (no path from DICOM text).
    after = {p for p in tmp_path.rglob("*")}
    new = {p for p in after - before if not (p.is_relative_to(tmp_path / "out") or p.is_relative_to(work))}
    assert new == set(), new
    assert not Path("/etc/passwd/T1 POST GD").exists()


_NOTHING_FOUND = """
import sys
import numpy as np
import operators.segmentation_operator as so
from operators.study_model import SegmentationOutcome

def nothing_found(model_input, model_dir, engine_name, seed, logger, **remote):  # the engine finds no tumour
    labels = np.zeros(model_input.volumes.shape[1:], dtype=np.uint8)
    return SegmentationOutcome(model_input, labels, {"runtime": "stub"}, [], [], {"operator_total": 0.0})

so.segment = nothing_found
from app.main import main
sys.exit(main(sys.argv))
"""


def _check_empty_result(run: AppRun) -> None:
    from tests.dicom_validation import run_dciodvfy

    assert run.returncode == 0, run.log[-4000:]
    assert run.files() == ["overlay.png", "report.json", "segmentation.dcm"]
    result = run.report["result"]
    assert result["empty"] is True and "no tumour" in result["empty_note"]
    assert result["tumour_volumes_ml"]["whole_tumor"] == 0
    errs, _ = run_dciodvfy(run.output_dir / "segmentation.dcm")
    assert errs == []
    seg = pydicom.dcmread(run.output_dir / "segmentation.dcm")
    assert len(seg.SegmentSequence) == 3 and not np.asarray(seg.pixel_array).any()


def test_app_empty_result_writes_a_valid_seg_and_says_so(small_study: Path, models_dir: Path, tmp_path: Path) -> None:
    """No voxel segmented (the engine stubbed to find nothing; the real network is run on a
    healthy slab in the slow test below): a valid SEG with three empty segments, and the
    report says so."""
    study = copy_study(small_study, tmp_path / "s", only=("t1ce",))
    run = run_app(study, tmp_path / "out", models_dir, entry=["-c", _NOTHING_FOUND])
    _check_empty_result(run)


@pytest.mark.slow  # reason: a full inference run (~2 min on 2 idle CPU cores, ~10 min under load)
def test_app_healthy_slab_gives_a_valid_seg_consistent_with_the_report(
    brats_dir: Path, models_dir: Path, tmp_path: Path
) -> None:
    """The real network on 16 slices far from the tumour. It may still label a few voxels
    (false positives); whatever it finds, the SEG is valid and the report agrees with it."""
    from tests.dicom_validation import run_dciodvfy

    study = _make(brats_dir, tmp_path / "build", HEALTHY_SLAB, case=HEALTHY_CASE)
    run = run_app(study, tmp_path / "out", models_dir)
    assert run.returncode == 0, run.log[-4000:]
    errs, _ = run_dciodvfy(run.output_dir / "segmentation.dcm")
    assert errs == []
    seg = pydicom.dcmread(run.output_dir / "segmentation.dcm")
    assert run.report["result"]["empty"] == (not np.asarray(seg.pixel_array).any())
    print(f"\nhealthy slab: whole tumour {run.report['result']['tumour_volumes_ml']['whole_tumor']} ml")


@pytest.mark.slow  # reason: a full inference run on a real scanner's 3D T1
def test_app_enhanced_mr_study_end_to_end(shared_dir: Path, models_dir: Path, tmp_path: Path) -> None:
    from tests.dicom_validation import run_dciodvfy

    study = tmp_path / "in"
    shutil.copytree(shared_dir / "data/real-mr-dicom/siemens-xa30-enhanced-t1", study)
    run = run_app(study, tmp_path / "out", models_dir)
    assert run.returncode == 0, run.log[-4000:]
    errs, _ = run_dciodvfy(run.output_dir / "segmentation.dcm")
    assert errs == []
    seg = pydicom.dcmread(run.output_dir / "segmentation.dcm")
    ref = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
    assert "ReferencedFrameNumber" in ref
    assert run.report["modalities"]["used"] == ["T1"]


@pytest.mark.slow  # reason: a full run on a study whose multi-echo T2 is left out
def test_app_multi_echo_study_end_to_end(small_study: Path, models_dir: Path, tmp_path: Path) -> None:
    from tests.dicom_validation import run_dciodvfy

    study = copy_study(small_study, tmp_path / "s")
    t2 = series_dir(study, "t2")
    echo1 = study / "301_echo1"
    echo1.mkdir()
    for k, path in enumerate(files_of(t2)):
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.EchoTime, ds.InstanceNumber = 15, 100 + k
        ds.save_as(echo1 / path.name, enforce_file_format=True)
    run = run_app(study, tmp_path / "out", models_dir)
    assert run.returncode == 0, run.log[-4000:]
    assert run.report["modalities"]["missing"] == ["T2"]
    assert any("multi-echo" in i["reason"] for i in run.report["input"]["ignored_files"])
    errs, _ = run_dciodvfy(run.output_dir / "segmentation.dcm")
    assert errs == []
