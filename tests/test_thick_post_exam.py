"""The single thick-slice post-contrast exam (samples.thick_post_exam; issue "Real clinical exams
III", exam 3): the study holds what such an exam holds, the selector takes its one series as T1ce
from the recorded contrast agent, and the app refuses it (T1ce alone supports no region at the
bar) with exit 2, one line, and nothing but the failed report in the output folder."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from samples.thick_post_exam import SLICE_SPACING_MM, SLICE_THICKNESS_MM, make_thick_post_study, thick_gapped
from tests.app_runner import run_app

CASE = "Brats18_TCIA01_201_1"


@pytest.fixture(scope="module")
def thick_study(brats_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("thick-post")
    make_thick_post_study(brats_dir / CASE, out)
    return out


def _series_files(study: Path, key: str) -> list[pydicom.Dataset]:
    doc = json.loads((study / "study.json").read_text())
    folder = study / next(s["folder"] for s in doc["series"] if s["key"] == key)
    return [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]


def test_thick_slabs_average_their_slices_and_keep_the_patient_in_place() -> None:
    """Each 5 mm slice is the mean of its five 1 mm slices; slabs follow every 6.5 mm; the slice
    centres stay where they were in the patient."""
    from samples.make_study import Volume

    data = np.broadcast_to(np.arange(20, dtype=np.int16) * 10, (3, 4, 20)).copy()  # value = 10 * k
    affine = np.eye(4)
    affine[:3, 3] = (5.0, -3.0, 7.0)  # slice k at z = 7 + k mm
    out = thick_gapped(Volume(data=data, affine_lps=affine), 5.0, 6.5)
    # slabs centred at k = 2, 8.5, 15 (the last that fits in k < 20 with its 2 neighbours each side)
    assert out.data.shape == (3, 4, 3)
    assert list(out.data[0, 0]) == [20, 85, 150]  # mean of 10*k over each slab = 10 * its centre
    assert out.affine_lps[2, 3] == pytest.approx(9.0) and out.affine_lps[2, 2] == pytest.approx(6.5)
    with pytest.raises(Exception, match="odd number"):
        thick_gapped(Volume(data=data, affine_lps=affine), 4.0, 6.5)


def test_the_exam_holds_one_gapped_post_contrast_series(thick_study: Path) -> None:
    files = _series_files(thick_study, "t1ce")
    first, second = files[0], files[1]
    assert float(first.SliceThickness) == SLICE_THICKNESS_MM
    assert float(first.SpacingBetweenSlices) == SLICE_SPACING_MM
    gap = np.linalg.norm(np.subtract(second.ImagePositionPatient, first.ImagePositionPatient, dtype=float))
    assert gap == pytest.approx(SLICE_SPACING_MM)
    assert len(files) == 24  # 155 mm of 1 mm slices -> 5 mm slabs every 6.5 mm
    assert "ContrastBolusAgent" in first and first.ContrastBolusIngredient == "GADOLINIUM"
    assert str(first.MagneticFieldStrength) == "3"
    assert len(_series_files(thick_study, "localiser")) == 3


def test_the_selector_takes_the_series_as_t1ce_from_its_contrast_agent(thick_study: Path) -> None:
    from operators.dicom.study_loader import load_study
    from operators.selection.modality_selector import SelectionRules, select_modalities

    selection = select_modalities(load_study(thick_study / "dicom"), SelectionRules.load())
    picked = {m: s.header.series_instance_uid for m, s in selection.selected.items()}
    expected = json.loads((thick_study / "study.json").read_text())["clinical"]["expected"]
    assert picked == expected, selection.reasons
    assert sorted(selection.missing) == ["flair", "t1", "t2"]


def test_the_app_refuses_the_single_thick_post_contrast_series(
        thick_study: Path, models_dir: Path, tmp_path: Path) -> None:
    """Today's behaviour the issue reports: a SEG of 215 ml on every slice. Now: exit 2, one line
    naming the subset and the expected Dice, nothing else written."""
    run = run_app(thick_study / "dicom", tmp_path / "out", models_dir)
    assert run.returncode == 2, run.log[-4000:]
    assert run.files() == ["report.json"]
    report = run.report
    assert report["status"] == "failed" and report["error_code"] == "insufficient_sequences"
    assert "only T1ce found (FLAIR+T1+T2 missing)" in report["error"] and "\n" not in report["error"]
    assert "no segmentation written" in report["error"]
    # the failed report still says what was found and which series was taken for what
    expected = json.loads((thick_study / "study.json").read_text())["clinical"]["expected"]
    assert {m: s["series_instance_uid"] for m, s in report["input"]["selected"].items()} == expected
    assert report["modalities"] == {"used": ["T1ce"], "missing": ["FLAIR", "T1", "T2"]}
    from tests.output_fingerprint import check_unchanged

    print("\n" + check_unchanged("thick-post", run.output_dir, thick_study / "dicom"))
