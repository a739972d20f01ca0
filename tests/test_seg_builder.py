"""DICOM-SEG building on a REAL scanner series (GE 3D T1 MP-RAGE, 130 classic MR files).

A synthetic BraTS label map (nested, off-centre spheres: edema 2 around necrotic core 1
around enhancing 4) is encoded against the real series; the SEG must pass dciodvfy and read
back voxel-exact per source instance (matched by ReferencedSOPInstanceUID, so a slice-order
bug fails). The read-back helper is also run on SEGs written by dcmqi and highdicom.
"""
from __future__ import annotations

import copy
import random
import re
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from highdicom.spatial import sort_datasets  # slices ascending along the normal (R x D)
from pydicom.sr.codedict import codes

from operators.dicom.seg import (
    BRATS_SEGMENTS,
    build_segmentation,
    content_description_for,
    content_label_for,
    write_segmentation_atomically,
)
from operators.outputs.qa_image import render_overlay_png
from tests.dicom_validation import run_dciodvfy
from tests.seg_readback import read_segment_masks

# The GE phantom's PatientName "dicom" has one component; highdicom warns when copying it.
pytestmark = pytest.mark.filterwarnings("ignore:The string \"dicom\" is unlikely:UserWarning")

ALL4 = ["FLAIR", "T1", "T1ce", "T2"]
ALGO = ("BraTS17 cascade (test)", "0.1.0-test")


# ---------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ge_dir(shared_dir: Path) -> Path:
    d = shared_dir / "data" / "real-mr-dicom" / "ge-3d-t1-mprage"
    assert d.is_dir(), f"missing real GE series at {d}"
    return d


@pytest.fixture(scope="module")
def ge_series(ge_dir: Path) -> list[pydicom.Dataset]:
    """The 130 GE instances, read in shuffled file order, then sorted along the normal."""
    files = sorted(p for p in ge_dir.iterdir() if p.is_file())
    random.Random(0).shuffle(files)
    return sort_datasets(index_convention="RD", datasets=[pydicom.dcmread(f) for f in files])


@pytest.fixture(scope="module")
def ge_volume(ge_series: list[pydicom.Dataset]) -> np.ndarray:
    """(Z, Y, X) float32 volume; Z follows ``ge_series``."""
    return np.stack([ds.pixel_array for ds in ge_series]).astype(np.float32)


def nested_spheres(shape: tuple[int, int, int]) -> np.ndarray:
    """BraTS-like labels: 2 (r<28 vox) contains 1 (r<16) contains 4 (r<7, shifted).

    Centred at 40 % of Z (not the middle) and with the ET sphere shifted, so that a reversed
    or shifted slice order, or swapped rows/columns, changes the per-slice masks.
    """
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]].astype(np.float32)
    c = (shape[0] * 0.4, shape[1] * 0.45, shape[2] * 0.55)
    r = np.sqrt((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2)
    r_et = np.sqrt((z - c[0] - 5) ** 2 + (y - c[1] + 4) ** 2 + (x - c[2] - 3) ** 2)
    labels = np.zeros(shape, np.uint8)
    labels[r < 28] = 2
    labels[r < 16] = 1
    labels[r_et < 7] = 4
    return labels


@pytest.fixture(scope="module")
def labels(ge_volume: np.ndarray) -> np.ndarray:
    return nested_spheres(ge_volume.shape)


@pytest.fixture(scope="module")
def seg_file(tmp_path_factory: pytest.TempPathFactory, labels: np.ndarray,
             ge_series: list[pydicom.Dataset]) -> Path:
    seg = build_segmentation(
        labels, ge_series, used_modalities=ALL4, missing_modalities=[],
        algorithm_name=ALGO[0], algorithm_version=ALGO[1], content_creator="BraTS^SegMap",
    )
    return write_segmentation_atomically(seg, tmp_path_factory.mktemp("seg"), "seg.dcm")


@pytest.fixture(scope="module")
def seg(seg_file: Path) -> hd.seg.Segmentation:
    return hd.seg.segread(seg_file)


# ---------------------------------------------------------------------------------------
# source ordering
# ---------------------------------------------------------------------------------------
def test_sort_along_normal_is_monotonic(ge_series: list[pydicom.Dataset]) -> None:
    assert len(ge_series) == 130
    iop = np.asarray(ge_series[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    pos = np.array([np.dot(normal, np.asarray(d.ImagePositionPatient, float)) for d in ge_series])
    steps = np.diff(pos)
    assert np.all(steps > 0), "not strictly increasing along the slice normal"
    assert np.allclose(steps, float(ge_series[0].SpacingBetweenSlices), atol=0.01)


# ---------------------------------------------------------------------------------------
# validity
# ---------------------------------------------------------------------------------------
def test_seg_passes_dciodvfy(seg_file: Path) -> None:
    errors, warnings = run_dciodvfy(seg_file)
    assert errors == [], "\n".join(errors)
    # Only the source's single-component PatientName ("dicom") may be flagged.
    unexpected = [w for w in warnings if "Patient's Name" not in w]
    assert unexpected == [], "\n".join(unexpected)


def test_dciodvfy_parser_reports_errors(ge_dir: Path) -> None:
    """Positive control: the real GE file has VR violations in a private element."""
    errors, warnings = run_dciodvfy(next(p for p in sorted(ge_dir.iterdir()) if p.is_file()))
    assert any("Error - Value invalid for this VR" in e for e in errors), errors
    assert all("Error -" not in w for w in warnings)


# ---------------------------------------------------------------------------------------
# read-back
# ---------------------------------------------------------------------------------------
def test_readback_exact_per_source_instance(
    seg: hd.seg.Segmentation, labels: np.ndarray, ge_series: list[pydicom.Dataset]
) -> None:
    masks = read_segment_masks(seg)
    source_uids = [str(d.SOPInstanceUID) for d in ge_series]
    assert set(masks) == {1, 2, 3}
    for spec in BRATS_SEGMENTS:
        frames = masks[spec.segment_number]
        assert set(frames) <= set(source_uids), "frame references an unknown instance"
        expected_slices = {k for k in range(len(ge_series))
                           if (labels[k] == spec.brats_label).any()}
        assert {source_uids.index(u) for u in frames} == expected_slices
        for k, uid in enumerate(source_uids):
            got = frames.get(uid, np.zeros(labels.shape[1:], bool))
            expected = labels[k] == spec.brats_label
            assert np.array_equal(got, expected), (spec.short, k)
    # the synthetic map is sensitive to slice order: a reversed order would not match
    assert not np.array_equal(labels, labels[::-1])


def test_readback_agrees_with_highdicom(
    seg: hd.seg.Segmentation, labels: np.ndarray, ge_series: list[pydicom.Dataset]
) -> None:
    """highdicom's own indexing (get_pixels_by_source_instance) gives the same label map."""
    uids = [str(d.SOPInstanceUID) for d in ge_series]
    arr = seg.get_pixels_by_source_instance(uids, combine_segments=True,
                                            skip_overlap_checks=False)
    lut = np.array([0] + [s.brats_label for s in BRATS_SEGMENTS], np.uint8)
    assert np.array_equal(lut[arr], labels)


@pytest.mark.parametrize(
    ("name", "sources"),
    [("dcmqi/liver.dcm", "dcmqi/liver-source-ct"),
     ("dcmqi/partial_overlaps.dcm", None),
     ("highdicom/seg_image_ct_binary_overlap.dcm", None)],
)
def test_readback_helper_on_foreign_segs(shared_dir: Path, name: str, sources: str | None) -> None:
    ref = shared_dir / "data" / "dicom-seg-reference"
    seg = hd.seg.segread(ref / name)
    masks = read_segment_masks(seg)
    assert set(masks) == {int(s.SegmentNumber) for s in seg.SegmentSequence}
    assert sum(len(v) for v in masks.values()) == int(seg.NumberOfFrames)
    if sources is not None:
        src_uids = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                    for p in (ref / sources).iterdir()}
        assert {u for v in masks.values() for u in v} == src_uids
    # same pixels as highdicom's indexing, per segment and source instance
    for number, frames in masks.items():
        uids = sorted(frames)
        # dcmqi does not state SpatialLocationsPreserved, which highdicom otherwise demands
        hd_arr = seg.get_pixels_by_source_instance(
            uids, segment_numbers=[number], ignore_spatial_locations=True)[..., 0]
        for i, uid in enumerate(uids):
            assert np.array_equal(frames[uid], hd_arr[i].astype(bool)), (name, number, uid)
        assert any(f.any() for f in frames.values()), f"segment {number} decoded empty"


# ---------------------------------------------------------------------------------------
# content
# ---------------------------------------------------------------------------------------
def test_segment_descriptions(seg: hd.seg.Segmentation) -> None:
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    expected = {1: (codes.SCT.Necrosis, "BraTS NCR/NET"), 2: (codes.SCT.Edema, "BraTS ED"),
                3: (codes.NCIt.EnhancingLesion, "BraTS ET")}
    colours, tracking_uids = set(), set()
    for item in seg.SegmentSequence:
        n = int(item.SegmentNumber)
        code, tracking_id = expected[n]
        t = item.SegmentedPropertyTypeCodeSequence[0]
        assert (t.CodeValue, t.CodingSchemeDesignator) == (code.value, code.scheme_designator)
        c = item.SegmentedPropertyCategoryCodeSequence[0]
        assert (c.CodeValue, c.CodingSchemeDesignator) == ("49755003", "SCT")
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        algo = item.SegmentationAlgorithmIdentificationSequence[0]
        assert (algo.AlgorithmName, algo.AlgorithmVersion) == ALGO
        assert algo.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"  # AI
        assert item.AnatomicRegionSequence[0].CodeValue == "12738006"  # brain
        assert item.TrackingID == tracking_id
        assert item.SegmentLabel == BRATS_SEGMENTS[n - 1].label
        colours.add(tuple(item.RecommendedDisplayCIELabValue))
        tracking_uids.add(item.TrackingUID)
    assert len(colours) == 3 and len(tracking_uids) == 3


def test_patient_study_and_references(seg: hd.seg.Segmentation,
                                      ge_series: list[pydicom.Dataset]) -> None:
    src = ge_series[0]
    for kw in ("PatientID", "PatientName", "StudyInstanceUID", "StudyDate",
               "FrameOfReferenceUID", "AccessionNumber"):
        assert str(seg.get(kw, "")) == str(src.get(kw, "")), kw
    assert seg.SeriesInstanceUID != src.SeriesInstanceUID
    assert seg.SOPInstanceUID not in {d.SOPInstanceUID for d in ge_series}
    ref = seg.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == src.SeriesInstanceUID
    assert len(ref.ReferencedInstanceSequence) == len(ge_series)


def test_descriptions_name_modalities(seg: hd.seg.Segmentation) -> None:
    assert seg.ContentDescription == "Tumor seg; used FLAIR,T1,T1ce,T2; missing none"
    assert seg.ContentLabel == "SEG_ALL_INPUTS"
    assert "used FLAIR,T1,T1ce,T2" in seg.SeriesDescription
    assert str(seg.ContentCreatorName) == "BraTS^SegMap"


@pytest.mark.parametrize("n_missing", [0, 1, 2, 3])
def test_description_strings_fit_vr_for_every_combination(n_missing: int) -> None:
    from itertools import combinations

    for missing in combinations(ALL4, n_missing):
        used = [m for m in ALL4 if m not in missing]
        desc = content_description_for(used, missing)
        label = content_label_for(missing)
        assert len(desc) <= 64 and "\\" not in desc
        assert re.fullmatch(r"[A-Z0-9_ ]{1,16}", label), label
        for m in missing:
            assert m in desc.split("missing ")[1]
        if missing:
            assert label.startswith("SEG_NO_") and "MISSING" not in label  # names, not count
    assert content_label_for(["T1ce"]) == "SEG_NO_T1C"


def test_missing_modalities_written(tmp_path: Path, labels: np.ndarray,
                                    ge_series: list[pydicom.Dataset]) -> None:
    iops_before = [list(map(str, d.ImageOrientationPatient)) for d in ge_series]
    seg = build_segmentation(labels, ge_series, used_modalities=["flair", "T2", "T1"],
                             missing_modalities=["T1ce"], algorithm_name=ALGO[0],
                             algorithm_version=ALGO[1], uid_seed="test-seed-1")
    assert seg.ContentDescription == "Tumor seg; used FLAIR,T1,T2; missing T1ce"
    assert seg.ContentLabel == "SEG_NO_T1C"
    assert seg.SeriesDescription.endswith("missing T1ce")
    again = build_segmentation(labels[:, :, :], ge_series, used_modalities=["FLAIR", "T1", "T2"],
                               missing_modalities=["T1ce"], algorithm_name=ALGO[0],
                               algorithm_version=ALGO[1], uid_seed="test-seed-1")
    assert again.SOPInstanceUID == seg.SOPInstanceUID  # reproducible from the seed
    # orientation jitter was harmonised on copies only: the caller's datasets are untouched
    assert [list(map(str, d.ImageOrientationPatient)) for d in ge_series] == iops_before
    assert len({tuple(i) for i in iops_before}) > 1  # the real series does have jitter
    assert again.SeriesInstanceUID == seg.SeriesInstanceUID


def test_empty_labels_give_valid_seg(tmp_path: Path, ge_series: list[pydicom.Dataset]) -> None:
    empty = np.zeros((len(ge_series), ge_series[0].Rows, ge_series[0].Columns), np.uint8)
    seg = build_segmentation(empty, ge_series, used_modalities=ALL4, missing_modalities=[],
                             algorithm_name=ALGO[0], algorithm_version=ALGO[1])
    path = write_segmentation_atomically(seg, tmp_path, "empty.dcm")
    errors, _ = run_dciodvfy(path)
    assert errors == [], "\n".join(errors)
    back = hd.seg.segread(path)
    assert int(back.NumberOfFrames) == 3 * len(ge_series)
    masks = read_segment_masks(back)
    assert {n: len(f) for n, f in masks.items()} == {1: 130, 2: 130, 3: 130}
    assert not any(f.any() for frames in masks.values() for f in frames.values())


def test_segment_without_voxels_keeps_all_frames(labels: np.ndarray,
                                                 ge_series: list[pydicom.Dataset]) -> None:
    """No ET at all (e.g. a lower-grade glioma): every segment still has frames."""
    no_et = np.where(labels == 4, 1, labels).astype(np.uint8)
    seg = build_segmentation(no_et, ge_series, used_modalities=ALL4, missing_modalities=[],
                             algorithm_name=ALGO[0], algorithm_version=ALGO[1])
    masks = read_segment_masks(seg)
    assert len(masks[3]) == len(ge_series) and not any(f.any() for f in masks[3].values())


@pytest.mark.parametrize("bad", ["slices", "value", "rows", "dtype"])
def test_invalid_input_rejected(bad: str, labels: np.ndarray,
                                ge_series: list[pydicom.Dataset]) -> None:
    lab, src = labels, ge_series
    if bad == "slices":
        src = ge_series[:-1]
    elif bad == "value":
        lab = labels.copy()
        lab[0, 0, 0] = 3
    elif bad == "rows":
        lab = labels[:, :-1, :]
    else:
        lab = labels.astype(np.float32)
    with pytest.raises(ValueError):
        build_segmentation(lab, src, used_modalities=ALL4, missing_modalities=[],
                           algorithm_name=ALGO[0], algorithm_version=ALGO[1])


def test_real_orientation_mismatch_rejected(labels: np.ndarray,
                                            ge_series: list[pydicom.Dataset]) -> None:
    """Float jitter in ImageOrientationPatient is tolerated; a real tilt is not."""
    tilted = list(ge_series)
    tilted[5] = copy.deepcopy(ge_series[5])
    iop = [float(v) for v in ge_series[5].ImageOrientationPatient]
    iop[1] += 0.01
    tilted[5].ImageOrientationPatient = iop
    with pytest.raises(ValueError, match="orientation"):
        build_segmentation(labels, tilted, used_modalities=ALL4, missing_modalities=[],
                           algorithm_name=ALGO[0], algorithm_version=ALGO[1])


# ---------------------------------------------------------------------------------------
# writing and QA picture
# ---------------------------------------------------------------------------------------
def test_atomic_write_leaves_no_partial_file(tmp_path: Path, seg: hd.seg.Segmentation,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    final = write_segmentation_atomically(seg, tmp_path, "out.dcm")
    assert [p.name for p in tmp_path.iterdir()] == ["out.dcm"]
    size = final.stat().st_size

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(seg, "save_as", boom)
    with pytest.raises(OSError, match="simulated"):
        write_segmentation_atomically(seg, tmp_path, "out.dcm")
    assert [p.name for p in tmp_path.iterdir()] == ["out.dcm"]  # no temp file left
    assert final.stat().st_size == size  # previous complete file untouched
    with pytest.raises(ValueError):
        write_segmentation_atomically(seg, tmp_path, "../escape.dcm")


def test_overlay_png(tmp_path: Path, ge_volume: np.ndarray, labels: np.ndarray) -> None:
    import matplotlib.image as mpimg

    out = render_overlay_png(ge_volume, labels, tmp_path / "qa" / "overlay.png", n_slices=4, segments=BRATS_SEGMENTS)
    assert out.stat().st_size > 10_000
    img = mpimg.imread(out)
    assert img.shape[:2] == (460, 1600)
    rgb = (img[..., :3] * 255).round().astype(int)
    # every segment colour appears (blended at alpha 0.5 over grey, the legend patch is pure)
    for spec in BRATS_SEGMENTS:
        assert (np.abs(rgb - np.array(spec.rgb)).sum(axis=-1) <= 3).any(), spec.short
    assert not list((tmp_path / "qa").glob(".*tmp"))


def test_overlay_png_empty_labels(tmp_path: Path, ge_volume: np.ndarray) -> None:
    out = render_overlay_png(ge_volume, np.zeros(ge_volume.shape, np.uint8),
                             tmp_path / "empty.png", n_slices=3, segments=BRATS_SEGMENTS)
    import matplotlib.image as mpimg

    assert mpimg.imread(out).shape[:2] == (460, 1200)


# ---------------------------------------------------------------------------------------
# only the regions the sequences support (issue "Real clinical exams III")
# ---------------------------------------------------------------------------------------
REGION_SETS = [("WT", "TC", "ET"), ("TC", "ET"), ("WT", "TC"), ("WT", "ET"), ("WT",), ("TC",), ("ET",)]


@pytest.mark.parametrize("regions", REGION_SETS, ids=["+".join(r) for r in REGION_SETS])
def test_segments_for_regions_partition_exactly_the_written_regions(regions: tuple[str, ...]) -> None:
    from operators.dicom.seg import REGION_LABELS, segments_for_regions

    specs = segments_for_regions(regions)
    assert [s.segment_number for s in specs] == list(range(1, len(specs) + 1))
    covered = [set(s.brats_labels) for s in specs]
    assert all(not (a & b) for i, a in enumerate(covered) for b in covered[i + 1:]), "segments overlap"
    for region in ("WT", "TC", "ET"):  # a written region is a union of segments; no other is
        union = set().union(*(c for c in covered if c <= REGION_LABELS[region]))
        assert (union == REGION_LABELS[region]) == (region in regions), (region, covered)
    assert set().union(*covered) == set().union(*(REGION_LABELS[r] for r in regions))
    if regions == ("WT", "TC", "ET"):
        assert specs == BRATS_SEGMENTS


def test_segments_for_regions_rejects_nothing_or_unknown() -> None:
    from operators.dicom.seg import segments_for_regions

    with pytest.raises(ValueError):
        segments_for_regions(())
    with pytest.raises(ValueError):
        segments_for_regions(("WT", "necrosis"))


@pytest.mark.parametrize("regions", [("TC", "ET"), ("WT", "TC"), ("WT",)], ids=["TC+ET", "WT+TC", "WT"])
def test_seg_and_sr_of_a_region_subset_are_valid_and_hold_only_those_regions(
        tmp_path: Path, labels: np.ndarray, ge_series: list[pydicom.Dataset], regions: tuple[str, ...]) -> None:
    from operators.dicom.seg import REGION_LABELS, segments_for_regions
    from operators.dicom.sr_builder import build_volume_report, volumes_from_report

    specs = segments_for_regions(regions)
    seg = build_segmentation(labels, ge_series, used_modalities=["T1ce", "T2"], missing_modalities=["FLAIR", "T1"],
                             algorithm_name=ALGO[0], algorithm_version=ALGO[1], segments=specs,
                             segment_notes={s.short: f"note {s.short}" for s in specs})
    path = write_segmentation_atomically(seg, tmp_path, "seg.dcm")
    errors, _ = run_dciodvfy(path)
    assert errors == []
    back = read_segment_masks(pydicom.dcmread(path))
    assert sorted(back) == [s.segment_number for s in specs]
    uid_to_k = {str(ds.SOPInstanceUID): k for k, ds in enumerate(ge_series)}
    for spec in specs:
        expected = np.isin(labels, spec.brats_labels)
        got = np.zeros_like(expected)
        for uid, frame in back[spec.segment_number].items():
            got[uid_to_k[uid]] = frame
        np.testing.assert_array_equal(got, expected, err_msg=spec.short)
    stored = {int(i.SegmentNumber): (str(i.SegmentLabel), str(i.SegmentDescription)) for i in seg.SegmentSequence}
    assert stored == {s.segment_number: (s.label, f"note {s.short}") for s in specs}
    # what the SEG holds (read back) covers the written regions' labels and nothing else
    outside = sorted({1, 2, 4} - set().union(*(REGION_LABELS[r] for r in regions)))
    written = np.zeros(labels.shape, bool)
    for frames in back.values():
        for uid, frame in frames.items():
            written[uid_to_k[uid]] |= frame
    assert not (written & np.isin(labels, outside)).any(), "a label outside the regions was written"
    np.testing.assert_array_equal(written, np.isin(labels, sorted(set().union(*(REGION_LABELS[r] for r in regions)))))
    class_ml = {v: float((labels == v).sum()) / 1000.0 for v in (1, 2, 4)}
    sr = build_volume_report(seg, ge_series, class_ml, ALGO[1], specs)
    sr_path = tmp_path / "sr.dcm"
    sr.save_as(sr_path, enforce_file_format=True)
    assert run_dciodvfy(sr_path)[0] == []
    got_ml = {n: v for n, (_, v) in volumes_from_report(pydicom.dcmread(sr_path)).items()}
    assert got_ml == {s.segment_number: pytest.approx(sum(class_ml[v] for v in s.brats_labels), abs=1e-3) for s in specs}
