"""Valid but odd studies through the real app: every oddity at once (compressed series,
non-ASCII text, lying descriptions, localisers, junk files, duplicates), an empty result, an
Enhanced MR reference, a multi-echo series. The full valid run is on a 20-slice slab."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless, generate_uid

from tests.app_runner import AppRun, run_app
from tests.slab_studies import (
    FOLDERS,
    HEALTHY_CASE,
    HEALTHY_SLAB,
    RUN_SLAB,
    add_series,
    copy_study,
    files_of,
    make_slab_study,
    rewrite,
    series_dir,
)


def _odd_study(brats_dir: Path, shared_dir: Path, root: Path) -> Path:
    """A 20-slice study with every valid oddity at once (see the test below)."""
    study = make_slab_study(brats_dir, root / "build", RUN_SLAB)
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
    add_series(study, "t1", "1_loc", 1, lambda ds, k: setattr(ds, "ImageType", ["ORIGINAL", "PRIMARY", "LOCALIZER"]))
    add_series(study, "t1ce", "601_sub", 601, lambda ds, k: setattr(ds, "ImageType", ["DERIVED", "SECONDARY", "SUBTRACTION"]))
    (study / "empty").write_bytes(b"")
    (study / "README.txt").write_text("exported by PACS\n")
    shutil.copy(shared_dir / "data/dicom-seg-reference/dcmqi/liver.dcm", study / "old_seg.dcm")
    for path in files_of(series_dir(study, "t2"))[:2]:
        shutil.copy(path, study / f"dup_{path.name}")
    return study


@pytest.mark.slow  # a full app run (~1 min on 2 cores); its readers are unit-tested in test_dicom_input
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
    assert run.files() == ["overlay.png", "report.json", "segmentation.dcm", "volumes_sr.dcm"]
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
from operators.segmentation.segment import SegmentationOutcome
from operators.study_model import SegmentationRecord, Timings

def nothing_found(model_input, model_dir, engine_name, seed, logger, **remote):  # the engine finds no tumour
    labels = np.zeros(model_input.volumes.shape[1:], dtype=np.uint8)
    return SegmentationOutcome(labels, None, SegmentationRecord({"runtime": "stub"}, [], []), Timings())

so.segment = nothing_found
from app.main import main
sys.exit(main(sys.argv))
"""


def _check_empty_result(run: AppRun) -> None:
    from tests.dicom_validation import run_dciodvfy

    assert run.returncode == 0, run.log[-4000:]
    assert run.files() == ["overlay.png", "report.json", "segmentation.dcm", "volumes_sr.dcm"]
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

    study = make_slab_study(brats_dir, tmp_path / "build", HEALTHY_SLAB, case=HEALTHY_CASE)
    run = run_app(study, tmp_path / "out", models_dir)
    assert run.returncode == 0, run.log[-4000:]
    errs, _ = run_dciodvfy(run.output_dir / "segmentation.dcm")
    assert errs == []
    seg = pydicom.dcmread(run.output_dir / "segmentation.dcm")
    assert run.report["result"]["empty"] == (not np.asarray(seg.pixel_array).any())
    print(f"\nhealthy slab: whole tumour {run.report['result']['tumour_volumes_ml']['whole_tumor']} ml")


@pytest.mark.slow  # reason: registration and HD-BET on a real scanner's 3D T1
def test_app_enhanced_mr_study_is_read_and_refused_as_t1_alone(shared_dir: Path, models_dir: Path,
                                                               tmp_path: Path) -> None:
    """A real Enhanced MR (multi-frame) 3D T1, alone: read frame by frame and taken as T1, then
    refused (T1 alone supports no region); the SEG of a multi-frame source and its frame
    references are checked in tests/test_seg_writer.py."""
    study = tmp_path / "in"
    shutil.copytree(shared_dir / "data/real-mr-dicom/siemens-xa30-enhanced-t1", study)
    run = run_app(study, tmp_path / "out", models_dir)
    assert run.returncode == 2, run.log[-4000:]
    assert run.files() == ["report.json"]
    assert run.report["error_code"] == "insufficient_sequences" and "only T1 found" in run.report["error"]
    (series,) = run.report["input"]["series"]
    assert series["frames"] > 1 and series["instances"] == 1 and series["detected_modality"] == "t1"
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
