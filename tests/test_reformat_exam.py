"""The exam of reformats only (samples.reformat_exam; issue "Real clinical exams III"): the
study holds what such an exam holds, and the app picks its reformats, ignores the MIP and the
manual SEG, writes the regions T1ce+T2 support and finds the tumour where the expert did."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from tests.app_runner import run_app
from tests.dicom_validation import run_dciodvfy

CASE = "Brats18_TCIA01_201_1"
SLAB = (50, 110)  # 60 of 155 slices through the tumour: the default suite's budget


@pytest.fixture(scope="module")
def reformat_study(brats_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from samples.reformat_exam import make_reformat_study

    out = tmp_path_factory.mktemp("reformats")
    make_reformat_study(brats_dir / CASE, out, slices=SLAB)
    return out


def test_the_exam_holds_reformats_without_timing_far_from_the_isocentre(reformat_study: Path) -> None:
    from samples.reformat_exam import FAR_OFF_MM, TILTS_DEG

    doc = json.loads((reformat_study / "study.json").read_text())
    by_key = {s["key"]: s for s in doc["series"]}
    for key in ("t1ce", "t2"):
        first = pydicom.dcmread(sorted((reformat_study / by_key[key]["folder"]).glob("*.dcm"))[0])
        assert list(first.ImageType) == ["ORIGINAL", "PRIMARY", "MPR"]
        assert first.file_meta.TransferSyntaxUID == pydicom.uid.ImplicitVRLittleEndian
        assert not {"RepetitionTime", "EchoTime", "InversionTime"} & set(first.dir())
        row, col = np.asarray(first.ImageOrientationPatient[:3], float), np.asarray(first.ImageOrientationPatient[3:], float)
        tilt = np.degrees(np.arccos(abs(np.cross(row, col)[2])))
        assert tilt == pytest.approx(TILTS_DEG[key], abs=0.01)
        assert float(first.ImagePositionPatient[2]) > FAR_OFF_MM - 300
    mip = pydicom.dcmread(sorted((reformat_study / by_key["mip"]["folder"]).glob("*.dcm"))[0])
    assert "REFORMATTED" in mip.ImageType and "MIP" in mip.SeriesDescription
    manual = pydicom.dcmread(reformat_study / doc["clinical"]["manual_seg"])
    assert manual.Modality == "SEG" and manual.StudyInstanceUID == doc["study_instance_uid"]


def test_the_selector_picks_the_reformats_and_the_plan_writes_what_t1ce_t2_support(reformat_study: Path) -> None:
    """The app's own load, selection and missing-sequence plan (the functions its operators
    call), without the networks: the reformats picked, the MIP and the manual SEG passed over,
    the regions T1ce+T2 support. The whole app run on the exam runs under -m slow below."""
    import logging

    from app.settings import APP_DIR
    from operators.dicom.study_loader import load_study
    from operators.outputs.report import selection_section
    from operators.segmentation.segment import missing_sequence_plan
    from operators.selection.modality_selector import SelectionRules, select_usable_modalities

    doc = json.loads((reformat_study / "study.json").read_text())
    selection = select_usable_modalities(load_study(reformat_study / "dicom"),
                                         SelectionRules.load(APP_DIR / "modality_rules.json"))
    section = selection_section(selection)
    chosen = {s["detected_modality"]: s["series_instance_uid"] for s in section["series"]
              if s["series_instance_uid"] in set(doc["clinical"]["expected"].values())}
    assert chosen == doc["clinical"]["expected"]
    assert sorted(selection.selected) == ["t1ce", "t2"]
    mip = next(s for s in section["series"] if s["series_number"] == 702)
    assert mip["detected_modality"] == "other" and "projection" in mip["reasons"][0]
    assert any(f["what"] == "manual_seg.dcm" and "Segmentation" in f["reason"] for f in section["ignored_files"])
    plan, _ = missing_sequence_plan(tuple(selection.availability.values()), logging.getLogger("test"))
    assert plan is not None and plan.regions_written == ("TC", "ET")


@pytest.mark.slow  # the whole app on the 60-slice exam (~80 s); the default run checks its selection and plan above
def test_the_app_uses_the_reformats_and_writes_what_t1ce_t2_support(
        reformat_study: Path, models_dir: Path, tmp_path: Path) -> None:
    from benchmarks.clinical_profiles import region_dice
    from operators.dicom.seg import segments_for_regions

    doc = json.loads((reformat_study / "study.json").read_text())
    run = run_app(reformat_study / "dicom", tmp_path / "out", models_dir)
    assert run.returncode == 0, run.log[-4000:]
    report = run.report
    chosen = {s["detected_modality"]: s["series_instance_uid"] for s in report["input"]["series"]
              if s["series_instance_uid"] in {u for u in doc["clinical"]["expected"].values()}}
    assert chosen == doc["clinical"]["expected"]
    assert report["modalities"]["used"] == ["T1ce", "T2"]
    mip = next(s for s in report["input"]["series"] if s["series_number"] == 702)
    assert mip["detected_modality"] == "other" and "projection" in mip["reasons"][0]
    assert any(f["what"] == "manual_seg.dcm" and "Segmentation" in f["reason"] for f in report["input"]["ignored_files"])
    written = report["segmentation"]["missing_sequences"]["regions_written"]
    assert written == ["TC", "ET"]
    for name in ("segmentation.dcm", "volumes_sr.dcm"):
        assert run_dciodvfy(run.output_dir / name)[0] == [], name
    seg = pydicom.dcmread(run.output_dir / "segmentation.dcm", stop_before_pixels=True)
    assert sorted(str(i.SegmentLabel) for i in seg.SegmentSequence) == sorted(
        s.label for s in segments_for_regions(tuple(written)))
    # the expert labels, in the exam's far-off patient space, onto the tilted reference grid
    dice = region_dice(run.output_dir, report, reformat_study)
    print(f"\n[reformats] Dice vs the expert labels on the tilted T1ce grid: {dice}")
    assert dice["TC"] > 0.6 and dice["ET"] > 0.5, dice
    from tests.output_fingerprint import check_unchanged

    print(check_unchanged("reformats-slab", run.output_dir, reformat_study / "dicom"))
