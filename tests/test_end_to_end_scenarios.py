"""End-to-end scenarios: missing modalities, misaligned acquisitions, unusable studies."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from benchmarks.evaluation import brats_metrics
from tests.app_runner import run_app
from tests.dicom_validation import run_dciodvfy
from tests.registration_checks import brain_box_corners, transform_error
from tests.test_end_to_end import CASE, reference_series_files, seg_to_label_volume

MISSING_SCENARIOS = {
    "no_t1ce": ["t1ce"],
    "no_flair": ["flair"],
    "no_t1": ["t1"],
    "no_t1_no_flair": ["t1", "flair"],
}


#: The missing-sequence scenarios run on 60 of the 155 slices, through the tumour (an app run each;
#: the regions and what the report says do not depend on the slab).
SCENARIO_SLAB = (50, 110)


def _dice_of_run(run, study: Path) -> dict:
    files = reference_series_files(study, run.report)
    labels, _ = seg_to_label_volume(run.output_dir / "segmentation.dcm", files)
    truth_img = sitk.ReadImage(str(study / "ground_truth.nii.gz"))
    return brats_metrics(labels, sitk.GetArrayFromImage(truth_img), spacing=truth_img.GetSpacing()[::-1])


def _region_masks_of_run(run, study: Path) -> dict[str, np.ndarray]:
    """The regions the run's SEG holds, as (slices, rows, cols) bool on the reference series
    (ordered by InstanceNumber): each written region is the union of its segments, read back by
    their SegmentLabel (:func:`operators.dicom.seg.segments_for_regions`)."""
    import highdicom as hd

    from operators.dicom.seg import REGION_LABELS, segments_for_regions

    regions = tuple(run.report["segmentation"]["missing_sequences"]["regions_written"])
    specs = {s.label: s for s in segments_for_regions(regions)}
    seg = hd.seg.segread(run.output_dir / "segmentation.dcm")
    files = reference_series_files(study, run.report)
    sources = sorted((pydicom.dcmread(p, stop_before_pixels=True) for p in files), key=lambda d: int(d.InstanceNumber))
    uids = [str(d.SOPInstanceUID) for d in sources]
    out: dict[str, np.ndarray] = {}
    for item in seg.SegmentSequence:
        spec = specs[str(item.SegmentLabel)]
        mask = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[int(item.SegmentNumber)],
                                                 ignore_spatial_locations=True)[..., 0] > 0
        for region in regions:
            if set(spec.brats_labels) <= REGION_LABELS[region]:
                out[region] = out.get(region, np.zeros_like(mask)) | mask
    return out


def _assert_missing_sequences_told(report: dict, seg: pydicom.Dataset, dropped: list[str]) -> None:
    """report.json, the SEG and the QA title name the subset, the fills of the strategy table, the
    expected Dice per region; the SEG holds the regions the table supports and no other, and the
    report lists the others with why."""
    from engines.model.missing.strategies import load_table, plan_for
    from operators.dicom.seg import segments_for_regions

    available = tuple(m not in dropped for m in ("flair", "t1", "t1ce", "t2"))
    plan = plan_for(available, load_table())
    told = report["segmentation"]["missing_sequences"]
    assert told["subset"] == plan.subset and told["fills"] == plan.fills
    assert told["warnings"] == plan.warnings == report["warnings"] and told["table_version"] == plan.table_version
    assert told["regions_written"] == list(plan.regions_written) and told["regions_omitted"] == plan.regions_omitted
    assert set(plan.regions_omitted) | set(plan.regions_written) == {"WT", "TC", "ET"}
    abbreviations = {"zero": "zero", "copy": "copy", "matched": "qmap", "synthesis": "synth"}
    assert seg.ContentDescription.endswith(f"; fill {abbreviations[plan.fills['wt']]}/{abbreviations[plan.fills['core']]}")
    specs = segments_for_regions(plan.regions_written)
    assert [str(s.SegmentLabel) for s in seg.SegmentSequence] == [s.label for s in specs]
    for item in seg.SegmentSequence:
        assert str(item.SegmentDescription).startswith(plan.subset + ": expected ")
        assert "UNRELIABLE" not in str(item.SegmentDescription)
    volumes = report["result"]["tumour_volumes_ml"]
    names = {"WT": "whole_tumor", "TC": "tumor_core", "ET": "enhancing_tumor"}
    for region, why in plan.regions_omitted.items():
        assert names[region] not in volumes and f"{region} not written: {why}" in report["warnings"]
    if not available[2] and "ET" in plan.regions_written:  # enhancing tumour without post-contrast T1
        assert any(w.startswith("ET") for w in report["warnings"])


@pytest.mark.parametrize(
    "scenario",
    # All slow (an app run each, ~1 min on 2 cores): the default suite's missing-sequence runs are
    # the reformats exam (T1ce+T2: WT not written) and the thick-post exam (T1ce alone: refused).
    [pytest.param(s, marks=pytest.mark.slow) for s in MISSING_SCENARIOS],
)
def test_missing_modalities_give_a_seg_of_the_supported_regions_and_say_what_was_missing(
    scenario: str, brats_dir: Path, models_dir: Path, tmp_path: Path
) -> None:
    from samples.make_study import make_study

    dropped = MISSING_SCENARIOS[scenario]
    make_study(brats_dir / CASE, tmp_path / "study", drop=dropped, seed=1, slices=SCENARIO_SLAB)
    run = run_app(tmp_path / "study" / "dicom", tmp_path / "out", models_dir)
    assert run.returncode == 0, run.log[-4000:]
    assert run.files() == ["overlay.png", "report.json", "segmentation.dcm", "volumes_sr.dcm"]
    report = run.report
    expected_missing = sorted({"flair": "FLAIR", "t1": "T1", "t1ce": "T1ce", "t2": "T2"}[m] for m in dropped)
    assert sorted(report["modalities"]["missing"]) == expected_missing
    assert sorted(report["modalities"]["imputed_for_network"]) == expected_missing
    seg = pydicom.dcmread(run.output_dir / "segmentation.dcm")
    for name in expected_missing:
        assert name in seg.ContentDescription.split("missing")[1]
    _assert_missing_sequences_told(report, seg, dropped)
    for name in ("segmentation.dcm", "volumes_sr.dcm"):
        errors, _ = run_dciodvfy(run.output_dir / name)
        assert errors == [], (name, errors)
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "study" / "ground_truth.nii.gz")))
    from operators.dicom.seg import REGION_LABELS

    dice = {}
    for region, mask in _region_masks_of_run(run, tmp_path / "study").items():
        ref = np.isin(truth, sorted(REGION_LABELS[region]))
        dice[region] = 2.0 * np.count_nonzero(mask & ref) / (np.count_nonzero(mask) + np.count_nonzero(ref))
    print(f"\n{scenario}: written " + ", ".join(f"{r} Dice {d:.3f}" for r, d in dice.items()))
    assert set(dice) == set(report["segmentation"]["missing_sequences"]["regions_written"])
    assert all(d > 0.5 for d in dice.values()), dice  # a region the table supports finds the real tumour


@pytest.mark.slow  # the default suite refuses T1ce alone on the thick-post exam (tests/test_thick_post_exam.py)
def test_too_few_sequences_are_refused_with_the_expected_accuracy(
    brats_dir: Path, models_dir: Path, tmp_path: Path
) -> None:
    """Post-contrast T1 alone: the measured table expects every region below the bar a region is
    written at (0.70), so the app exits 2 with one line that names the subset and the expected
    Dice, and writes nothing but the failed report."""
    from engines.model.missing.strategies import REFUSE_DICE, UNRELIABLE_DICE, load_table, plan_for
    from samples.make_study import make_study

    plan = plan_for((False, False, True, False), load_table())
    assert plan.refusal is not None, "the shipped table no longer refuses T1ce alone: choose another subset here"
    dice = [plan.expected[r]["dice"] for r in ("WT", "TC", "ET")]
    assert max(dice) < UNRELIABLE_DICE and max(dice) >= REFUSE_DICE, "T1ce alone shows the region bar, not the old one"
    make_study(brats_dir / CASE, tmp_path / "study", drop=["flair", "t1", "t2"], seed=1)
    run = run_app(tmp_path / "study" / "dicom", tmp_path / "out", models_dir)
    assert run.returncode == 2, run.log[-4000:]
    assert run.files() == ["report.json"]
    assert run.report["status"] == "failed" and run.report["error_code"] == "insufficient_sequences"
    assert run.report["error"] == f"insufficient_sequences: {plan.refusal}"
    assert "only T1ce found (FLAIR+T1+T2 missing)" in run.report["error"] and "\n" not in run.report["error"]


def test_study_without_usable_mr_fails_cleanly(shared_dir: Path, models_dir: Path, tmp_path: Path) -> None:
    """Only a SEG object and a non-DICOM file: exit != 0, one-line reason, nothing else written."""
    study = tmp_path / "study"
    study.mkdir()
    (study / "notes.txt").write_text("not DICOM")
    src = shared_dir / "data/dicom-seg-reference/dcmqi/liver.dcm"
    (study / "seg.dcm").write_bytes(src.read_bytes())
    run = run_app(study, tmp_path / "out", models_dir)
    assert run.returncode == 2, run.log[-3000:]
    assert run.files() == ["report.json"]
    assert run.report["status"] == "failed"
    assert run.report["error_code"] == "no_study"
    assert "\n" not in run.report["error"]


@pytest.mark.slow
def test_misaligned_study_is_registered_and_segmented(brats_dir: Path, models_dir: Path, tmp_path: Path) -> None:
    """Known rigid transforms on the non-reference series are recovered (1 mm / 1 deg) and
    Dice stays within 0.02 of the aligned study."""
    from samples.make_study import make_study

    make_study(brats_dir / CASE, tmp_path / "aligned", seed=0)
    make_study(brats_dir / CASE, tmp_path / "moved", misalign_seed=3, seed=0)
    aligned = run_app(tmp_path / "aligned" / "dicom", tmp_path / "out_aligned", models_dir)
    moved = run_app(tmp_path / "moved" / "dicom", tmp_path / "out_moved", models_dir)
    assert aligned.returncode == 0 and moved.returncode == 0, moved.log[-4000:]
    truth = json.loads((tmp_path / "moved" / "misalignment.json").read_text())
    reference = sitk.ReadImage(str(brats_dir / CASE / f"{CASE}_t1ce.nii.gz"))
    corners = brain_box_corners(sitk.Cast(reference > 0, sitk.sitkUInt8))
    for key, record in truth["series"].items():
        estimated = moved.report["registration"]["series"][key.upper()]
        est = sitk.Euler3DTransform()
        est.SetCenter(estimated["center_mm"])
        est.SetMatrix(estimated["matrix"])
        est.SetTranslation(estimated["translation_mm"])
        true = sitk.Euler3DTransform()
        true.SetCenter(record["center_mm"])
        true.SetRotation(*record["angles_rad"])
        true.SetTranslation(record["translation_mm"])
        mm, deg = transform_error(est, true, corners)
        print(f"\n{key}: {mm:.2f} mm, {deg:.2f} deg")
        assert mm <= 1.0 and deg <= 1.0, (key, mm, deg)
    d_aligned = _dice_of_run(aligned, tmp_path / "aligned")
    d_moved = _dice_of_run(moved, tmp_path / "moved")
    for region in ("WT", "TC", "ET"):
        assert abs(d_aligned[region]["dice"] - d_moved[region]["dice"]) <= 0.02, (region, d_aligned, d_moved)
