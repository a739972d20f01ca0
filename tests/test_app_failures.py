"""The app's failure contract, through the real app (``python -m app``): exit 2 (input),
3 (output folder), 4 (model folder), 1 (bug), 143 (SIGTERM); one line in the log and in
``report.json`` (``status: failed``, ``error_code``); nothing else in the output folder (no SEG,
no staging folder, no partial file)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.app_runner import REPO_ROOT, AppRun, run_app
from tests.slab_studies import assert_failed_cleanly, copy_study, files_of, series_dir


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
from operators.segmentation.segment import SegmentationOutcome
import operators.outputs.staging as staging
from operators.study_model import SegmentationRecord, Timings

def fast_segment(model_input, model_dir, engine_name, seed, logger, **remote):  # no inference: a blob
    labels = np.zeros(model_input.volumes.shape[1:], dtype=np.uint8)
    z, y, x = (n // 2 for n in labels.shape)
    labels[z - 2:z + 2, y - 10:y + 10, x - 10:x + 10] = 2
    return SegmentationOutcome(labels, None, SegmentationRecord({"runtime": "fake"}, [], []), Timings())

def disk_full(*args, **kwargs):
    raise OSError(28, "No space left on device")

from app.main import main  # first: its failure report keeps the real writer

so.segment = fast_segment
staging.write_json_atomically = disk_full  # publish_with_report's: the SEG and PNG are already published then
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
