"""The app through Holoscan on CPU: the contract around the graph, on real scanner DICOM."""
from __future__ import annotations

from pathlib import Path

from operators.modality_selector import SelectionRules, select_modalities
from operators.study_loader import load_study
from tests.app_runner import run_app


def test_real_scanner_series_are_loaded_and_classified(shared_dir: Path) -> None:
    for folder, frames in (("ge-3d-t1-mprage", 130), ("siemens-xa30-enhanced-t1", 96)):
        study = load_study(shared_dir / "data/real-mr-dicom" / folder)
        selection = select_modalities(study, SelectionRules.load())
        assert study.series[0].header.number_of_frames == frames
        assert list(selection.selected) == ["t1"], selection.candidates
        assert selection.missing == ["flair", "t1ce", "t2"]


def test_invalid_model_folder_fails_before_any_work(shared_dir: Path, tmp_path: Path) -> None:
    empty_models = tmp_path / "models"
    empty_models.mkdir()
    run = run_app(shared_dir / "data/real-mr-dicom/ge-3d-t1-mprage", tmp_path / "out", empty_models)
    assert run.returncode == 4, run.log[-3000:]
    assert run.files() == ["report.json"]
    assert run.report["error_code"] == "model_folder_invalid"
    assert "engines.prepare" in run.report["error"]


def test_two_studies_in_one_folder_are_refused(shared_dir: Path, models_dir: Path, tmp_path: Path) -> None:
    run = run_app(shared_dir / "data/real-mr-dicom", tmp_path / "out", models_dir)
    assert run.returncode == 2, run.log[-3000:]
    assert run.files() == ["report.json"]
    assert run.report["status"] == "failed"
    assert run.report["error_code"] == "multiple_studies"
    assert "\n" not in run.report["error"]
