"""Exams that look like the clinic (issue 15): the right series when the headers don't say,
masks saved as images set aside, an undetermined contrast phase said plainly, and a valid SEG
from sources with faulty attributes.

Studies come from ``samples.make_study --clinical PROFILE`` on a 28-slice slab of a real
BraTS case (the builder's ``study.json`` names the series the app must pick, from what each
series holds: the selector never sees that file). The full app on these studies, compared
with the clean study, is the slow test at the end.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from highdicom.spatial import sort_datasets  # slices ascending along the normal (R x D)

from operators.dicom.seg import build_segmentation
from operators.dicom.source_attributes import sanitised_copy
from operators.dicom.study_loader import load_study
from operators.selection.modality_selector import SelectionRules, select_modalities
from samples.clinical_profiles import PROFILES, make_clinical_study
from tests.dicom_validation import run_dciodvfy
from tests.slab_studies import CASE

SLAB = (84, 116)  # 32 slices: the 3 mm post-contrast T1 keeps 11 (>= the 10 a series needs)


@pytest.fixture(scope="module")
def clinical_studies(brats_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Profile (and variant) -> study folder."""
    root = tmp_path_factory.mktemp("clinical")
    variants = {p: {"profile": p} for p in PROFILES}
    variants["philips+mask"] = {"profile": "philips", "mask_series": True}
    variants["philips-no-evidence"] = {"profile": "philips", "contrast_evidence": False}
    variants["siemens-no-evidence"] = {"profile": "siemens", "contrast_evidence": False}
    studies = {}
    for name, kwargs in variants.items():
        make_clinical_study(brats_dir / CASE, root / name, slices=SLAB, **kwargs)
        studies[name] = root / name
    return studies


def _select(study: Path):
    return select_modalities(load_study(study / "dicom"), SelectionRules.load())


def _expected(study: Path) -> dict[str, str]:
    return json.loads((study / "study.json").read_text())["clinical"]["expected"]


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_the_true_series_are_picked_without_header_help(clinical_studies: dict[str, Path], profile: str) -> None:
    study = clinical_studies[profile]
    selection = _select(study)
    picked = {m: s.header.series_instance_uid for m, s in selection.selected.items()}
    assert picked == _expected(study), selection.reasons
    # Pre- and post-contrast T1 share one protocol and no header says contrast: decided from
    # acquisition order and image enhancement, and said so.
    assert selection.contrast["status"] == "inferred"
    t1ce_uid = picked["t1ce"]
    phase = selection.contrast["series"][t1ce_uid]
    assert phase["phase"] == "post" and phase["basis"] == "order_and_image"
    assert selection.contrast["enhancement"][t1ce_uid]["index"] > 0.15
    assert "acquisition order and image enhancement" in selection.contrast["statement"]
    # The post-contrast FLAIR lost to the pre-contrast one for that reason.
    assert selection.reasons["flair"].startswith(f"series {selection.selected['flair'].header.series_number}")
    assert "pre_contrast" in selection.reasons["flair"]
    # Derived images and the localiser never compete.
    others = {c.series_description: c.reasons[0] for c in selection.candidates if c.modality == "other"}
    assert any("DERIVED" in r for r in others.values()), others
    # every comparison is recorded with its pair, index and decision
    assert selection.contrast["comparisons"] and all(
        {"series", "against_series", "index", "like_for_like", "decision"} <= set(c) for c in selection.contrast["comparisons"])


def _uid_of(study: Path, key: str) -> str:
    return next(s["series_instance_uid"] for s in json.loads((study / "study.json").read_text())["series"] if s["key"] == key)


def test_two_pre_contrast_t1s_of_different_kinds_the_same_protocol_pair_decides(
        clinical_studies: dict[str, Path]) -> None:
    """Philips: a 3-D FFE (not fat-suppressed) first, a 2-D SE FS 15 min later, then after contrast
    a 3-D FS iso and the 2-D SE FS again under one name. Against the earliest T1 the FS series
    look darker (the trap); against its own protocol the post SE FS enhances."""
    from operators.selection.contrast_phase import enhancement_index

    study = clinical_studies["philips"]
    selection = _select(study)
    ffe, se_pre, se_post, iso = (_uid_of(study, k) for k in ("t1_pre_3d", "t1", "t1ce_2d", "t1ce_3d"))
    # the trap is in the study: the pre-contrast SE FS is no brighter than the earliest T1 (another kind)
    images = {u: s for u, s in ((s.header.series_instance_uid, s) for s in load_study(study / "dicom").series)}
    from operators.dicom.series_volume import series_to_image

    def image(uid: str):
        return series_to_image(images[uid].datasets).image

    trap = enhancement_index(image(ffe), image(se_pre))
    assert trap["index"] < 0.15, trap
    phases = selection.contrast["series"]
    assert phases[se_pre]["phase"] == "pre" and phases[ffe]["phase"] == "pre"
    assert phases[se_post]["phase"] == "post" and phases[iso]["phase"] == "post"
    by_series = {c["series"]: c for c in selection.contrast["comparisons"]}
    pair = by_series[images[se_post].header.series_number]
    assert pair["against_series"] == images[se_pre].header.series_number
    assert pair["like_for_like"] and pair["decision"] == "post" and pair["index"] >= 0.15
    # the FS iso is compared with the pre-contrast series of its fat suppression, never the FFE
    assert by_series[images[iso].header.series_number]["against_series"] == images[se_pre].header.series_number
    picked = {m: s.header.series_instance_uid for m, s in selection.selected.items()}
    assert picked["t1"] == ffe and picked["t1ce"] == iso


def test_a_mask_saved_as_the_best_looking_flair_is_set_aside(clinical_studies: dict[str, Path]) -> None:
    study = clinical_studies["philips+mask"]
    selection = _select(study)
    series = json.loads((study / "study.json").read_text())["series"]
    mask_uid = next(s["series_instance_uid"] for s in series if s["key"] == "mask")
    assert "distinct pixel values" in selection.set_aside[mask_uid]
    assert selection.selected["flair"].header.series_instance_uid == _expected(study)["flair"]
    without = _select(clinical_studies["philips"])
    assert {m: s.header.series_number for m, s in selection.selected.items()} == {
        m: s.header.series_number for m, s in without.selected.items()
    }


@pytest.mark.parametrize("variant", ["philips-no-evidence", "siemens-no-evidence"])
def test_without_contrast_evidence_the_phase_is_undetermined_and_the_earliest_series_are_used(
    clinical_studies: dict[str, Path], variant: str,
) -> None:
    """The post-contrast series hold the pre-contrast images: undetermined, T1ce missing, and the
    T1 and FLAIR slots go to the earliest series of their kind, never to a later one."""
    study = clinical_studies[variant]
    selection = _select(study)
    assert selection.contrast["status"] == "undetermined"
    assert "t1ce" not in selection.selected
    assert "contrast phase undetermined" in selection.reasons["t1ce"]
    assert "T1ce missing" in selection.contrast["statement"]
    picked = {m: s.header.series_instance_uid for m, s in selection.selected.items()}
    assert picked == _expected(study)
    modality_of = {c.series_instance_uid: c.modality for c in selection.candidates}
    for modality in ("t1", "flair"):
        candidates = [s for s in load_study(study / "dicom").series if modality_of[s.header.series_instance_uid] == modality]
        earliest = min(candidates, key=lambda s: s.header.acquisition_time)
        assert picked[modality] == earliest.header.series_instance_uid, (modality, selection.reasons[modality])


def test_header_evidence_still_wins_over_inference(clinical_studies: dict[str, Path], tmp_path: Path) -> None:
    """A ContrastBolusAgent on the 2-D post series makes the decision a header one."""
    import shutil

    study = tmp_path / "study"
    shutil.copytree(clinical_studies["siemens"] / "dicom", study / "dicom")
    shutil.copy(clinical_studies["siemens"] / "study.json", study / "study.json")
    t1ce_3d = next(s for s in json.loads((study / "study.json").read_text())["series"] if s["key"] == "t1ce_3d")
    for path in (study / t1ce_3d["folder"]).glob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.ContrastBolusAgent = "Gadobutrol"
        ds.save_as(path)
    selection = _select(study)
    assert selection.contrast["status"] == "header"
    assert selection.selected["t1ce"].header.series_instance_uid == t1ce_3d["series_instance_uid"]


@pytest.mark.parametrize(
    ("keyword", "raw", "expected", "action"),
    [
        ("PatientAge", b"NA", None, "removed"),
        ("PatientAge", b"045Y", "045Y", None),
        ("PatientBirthDate", b"19701340", "", "emptied"),
        ("PatientBirthDate", b"1970.01.31", "19700131", "repaired"),
        ("StudyTime", b"14:03:22", "140322", "repaired"),
        ("StudyTime", b"25:61   ", "", "emptied"),
        ("PatientSex", b"male", "M", "repaired"),
        ("PatientSex", b"X ", "", "emptied"),
        ("PatientWeight", b"75kg", None, "removed"),
        ("PatientName", b"A^B^C^D^E^F ", "A^B^C^D^E F", "repaired"),
        ("AccessionNumber", b"A\x01B ", "A B", "repaired"),
    ],
)
def test_source_values_are_checked_against_their_vr(keyword: str, raw: bytes, expected: str | None,
                                                    action: str | None) -> None:
    from samples.clinical_profiles import _raw

    ds = pydicom.Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPInstanceUID = "1.2.3"
    _raw(ds, keyword, raw)
    clean, fixes = sanitised_copy(ds)
    value = clean.get(keyword)
    assert (None if value is None else str(value)) == expected
    assert [f.action for f in fixes if f.keyword == keyword] == ([action] if action else [])
    assert ds.get_item(keyword).value == raw + (b" " if len(raw) % 2 else b"")  # the source is untouched


def test_non_ascii_without_character_set_is_declared_utf8() -> None:
    from samples.clinical_profiles import _raw

    ds = pydicom.Dataset()
    _raw(ds, "InstitutionName", "Universitätsklinik".encode("latin-1"))
    clean, fixes = sanitised_copy(ds)
    assert clean.SpecificCharacterSet == "ISO_IR 192"
    assert clean.InstitutionName == "Universitätsklinik"
    assert {f.keyword for f in fixes} == {"InstitutionName", "SpecificCharacterSet"}


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_seg_from_faulty_sources_passes_dciodvfy(clinical_studies: dict[str, Path], profile: str,
                                                 tmp_path: Path) -> None:
    study = clinical_studies[profile]
    t1 = next(s for s in json.loads((study / "study.json").read_text())["series"] if s["key"] == "t1")
    files = sorted((study / t1["folder"]).glob("*.dcm"))
    sources = sort_datasets(index_convention="RD", datasets=[pydicom.dcmread(p) for p in files])
    labels = np.zeros((len(sources), int(sources[0].Rows), int(sources[0].Columns)), dtype=np.uint8)
    labels[4:9, 100:130, 90:120] = 2
    labels[5:8, 110:120, 100:110] = 4
    labels[6, 112:116, 102:106] = 1
    fixes: list = []
    seg = build_segmentation(labels, sources, used_modalities=["T1"], missing_modalities=["FLAIR", "T1ce", "T2"],
                             algorithm_name="test", algorithm_version="0", source_fixes=fixes)
    assert fixes, "the profile's faults were not seen"
    path = tmp_path / "seg.dcm"
    seg.save_as(path, enforce_file_format=True)
    errors, _ = run_dciodvfy(path)
    assert errors == [], errors


@pytest.mark.slow  # ~6 min on 2 cores: 5 app runs on 28-slice slabs
def test_app_on_clinical_exams_matches_the_clean_study(clinical_studies: dict[str, Path], brats_dir: Path,
                                                       models_dir: Path, tmp_path: Path) -> None:
    import SimpleITK as sitk

    from benchmarks.evaluation import brats_metrics
    from samples.make_study import make_study
    from tests.app_runner import run_app
    from tests.output_fingerprint import check_unchanged
    from tests.test_end_to_end import reference_series_files, seg_to_label_volume

    def dice(study: Path, out: Path) -> dict[str, float]:
        run = run_app(study / "dicom", out, models_dir)
        assert run.returncode == 0, run.log[-3000:]
        print(check_unchanged(f"{out.name}-slab", out, study / "dicom"))  # out-clean, out-philips, ...
        for name in ("segmentation.dcm", "volumes_sr.dcm"):
            errors, _ = run_dciodvfy(out / name)
            assert errors == [], (name, errors)
        labels, _ = seg_to_label_volume(out / "segmentation.dcm", reference_series_files(study, run.report))
        truth_img = sitk.ReadImage(str(study / "ground_truth.nii.gz"))
        metrics = brats_metrics(labels, sitk.GetArrayFromImage(truth_img), spacing=truth_img.GetSpacing()[::-1])
        return {r: metrics[r]["dice"] for r in ("WT", "TC", "ET")}

    clean = tmp_path / "clean"
    make_study(brats_dir / CASE, clean, slices=SLAB)
    reference = dice(clean, tmp_path / "out-clean")
    for name in (*sorted(PROFILES), "philips+mask"):
        got = dice(clinical_studies[name], tmp_path / f"out-{name}")
        for region, value in reference.items():
            assert abs(got[region] - value) <= 0.01, (name, region, got, reference)


def test_enhancement_is_measured_after_registration_across_frames_of_reference(brats_dir: Path) -> None:
    """A post-contrast series in another frame of reference (moved 1-5 mm / 1-5 deg): registered
    first, it still shows enhancement; the same pre-contrast image moved alike shows none."""
    from operators.selection.contrast_phase import enhancement_index
    from samples import make_study as ms

    vols = ms.load_case(brats_dir / CASE, ["t1", "t1ce"])
    pre = vols["t1"]
    truth = ms.draw_transform(3, "t1ce", ms.volume_center(pre))
    grid = ms.draw_grid(3, "t1ce", pre)
    post_moved = ms.resample_moving(vols["t1ce"], truth, grid).to_sitk()
    pre_moved = ms.resample_moving(pre, truth, grid).to_sitk()
    enhanced = enhancement_index(pre.to_sitk(), post_moved, register=True)
    alike = enhancement_index(pre.to_sitk(), pre_moved, register=True)
    assert enhanced["registered"] and enhanced["index"] > 0.15, enhanced
    assert abs(alike["index"]) < 0.15, alike


def test_the_registration_reuses_the_images_the_contrast_check_built(clinical_studies: dict[str, Path]) -> None:
    import logging

    from operators.spatial.model_input import register_and_resample

    selection = _select(clinical_studies["ge"])
    t1ce_uid = selection.selected["t1ce"].header.series_instance_uid
    assert set(selection.images) == {selection.selected["t1"].header.series_instance_uid, t1ce_uid}
    reference = register_and_resample(selection, 0, logging.getLogger("test"), "template").reference
    assert reference.modality == "t1ce"
    assert reference.image is selection.images[t1ce_uid]  # not built a second time
