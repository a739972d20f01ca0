"""Slab studies made from a shared BraTS case, and the helpers that change them (tests only).

A slab study is ``samples.make_study`` with a thin slab of NIfTI slices: a real 4-series DICOM
study that is quick to build, load and register. Tests copy it and mutate it with pydicom.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from operators.dicom.study_loader import load_study
from tests.app_runner import AppRun

CASE = "Brats18_TCIA01_201_1"  # tumour in NIfTI slices 58..131
SMALL_SLAB = (95, 107)  # 12 slices through the tumour: quick to build, load, register
RUN_SLAB = (92, 112)  # 20 slices through the tumour: the full valid run
HEALTHY_CASE, HEALTHY_SLAB = "Brats18_CBICA_ABM_1", (110, 126)  # tumour in 35..88, brain up to 137
FOLDERS = {"t1": "201_", "t2": "301_", "flair": "401_", "t1ce": "501_"}  # seed 0 (Siemens names)


def make_slab_study(brats_dir: Path, out: Path, slices: tuple[int, int], case: str = CASE, **kwargs) -> Path:
    from samples.make_study import make_study

    make_study(brats_dir / case, out, slices=slices, **kwargs)
    return out / "dicom"


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
    from operators.dicom.series_volume import series_to_image

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
    from operators.dicom.seg import build_segmentation
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


def add_series(study: Path, src_modality: str, name: str, number: int, change) -> Path:
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
