"""The app runs through Holoscan on CPU: loader -> selector -> report, on real scanner DICOM."""
from __future__ import annotations

from pathlib import Path

from tests.app_runner import run_app


def test_app_reports_series_of_real_scanner_dicom(shared_dir: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    run = run_app(shared_dir / "data/real-mr-dicom/ge-3d-t1-mprage", tmp_path / "out", models)
    assert run.returncode == 0, run.log[-3000:]
    # The walking graph (no model stage yet) succeeds on a T1-only study ...
    report = run.report
    assert report["input"]["availability"]["t1"] is True
    assert set(report["input"]["missing"]) == {"FLAIR", "T1CE", "T2"}
    series = report["input"]["series"]
    assert len(series) == 1 and series[0]["instances"] == 130
    assert series[0]["detected_modality"] == "t1"


def test_two_studies_in_one_folder_are_refused(shared_dir: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    out = tmp_path / "out"
    run = run_app(shared_dir / "data/real-mr-dicom", out, models)
    assert run.returncode == 2, run.log[-3000:]
    assert run.files() == ["report.json"]
    assert run.report["status"] == "failed"
    assert run.report["error_code"] == "multiple_studies"
    assert "\n" not in run.report["error"]
