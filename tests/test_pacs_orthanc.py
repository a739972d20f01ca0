"""Round trip through a REAL Orthanc PACS (Debian package ``orthanc``) on loopback.

C-STORE the real GE MR series (130 files) plus a SEG built from it, then check through
Orthanc's REST API what a PACS viewer would see: one study holding an MR and a SEG series,
the SEG pointing at the MR study/series, frames decodable from the stored file, and Orthanc's
own parse of NumberOfFrames agreeing. Fails (does not skip) if Orthanc is not installed.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from highdicom.spatial import sort_datasets  # slices ascending along the normal (R x D)

from operators.dicom.seg import build_segmentation, write_segmentation_atomically
from tests.orthanc import OrthancServer, c_store, orthanc_fixture
from tests.seg_readback import read_segment_masks
from tests.test_seg_builder import nested_spheres

pytestmark = [
    pytest.mark.pacs,
    pytest.mark.filterwarnings("ignore:The string \"dicom\" is unlikely:UserWarning"),
]

orthanc = orthanc_fixture(scope="module", aet="PACS_TEST")


@pytest.fixture(scope="module")
def stored(orthanc: OrthancServer, shared_dir: Path,
           tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Build the SEG, C-STORE MR + SEG, return what was sent and the C-STORE statuses."""
    ge_dir = shared_dir / "data" / "real-mr-dicom" / "ge-3d-t1-mprage"
    files = sorted(p for p in ge_dir.iterdir() if p.is_file())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        series = sort_datasets(index_convention="RD",
                               datasets=[pydicom.dcmread(f, stop_before_pixels=True) for f in files])
        labels = nested_spheres((len(series), int(series[0].Rows), int(series[0].Columns)))
        seg = build_segmentation(
            labels, series, used_modalities=["FLAIR", "T1", "T1ce", "T2"],
            missing_modalities=[], algorithm_name="BraTS17 cascade (test)",
            algorithm_version="0.1.0-test",
        )
    seg_path = write_segmentation_atomically(seg, tmp_path_factory.mktemp("pacs"), "seg.dcm")
    statuses = c_store([*files, seg_path], orthanc.host, orthanc.dicom_port, orthanc.aet)
    return {"series": series, "labels": labels, "seg": seg, "seg_path": seg_path,
            "statuses": statuses, "n_files": len(files)}


def _series_by_modality(orthanc: OrthancServer, study_id: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for s in orthanc.get_json(f"/studies/{study_id}/series"):
        out[s["MainDicomTags"]["Modality"]] = s
    return out


def test_orthanc_is_real_and_ready(orthanc: OrthancServer) -> None:
    system = orthanc.get_json("/system")
    assert system["DicomAet"] == "PACS_TEST"
    assert system["DicomPort"] == orthanc.dicom_port
    assert orthanc.version and orthanc.startup_s < 60


def test_c_store_all_succeeded(stored: dict[str, Any]) -> None:
    assert stored["statuses"] == [0] * (stored["n_files"] + 1)


def test_one_study_with_mr_and_seg_series(orthanc: OrthancServer,
                                          stored: dict[str, Any]) -> None:
    studies = orthanc.get_json("/studies?expand")
    assert len(studies) == 1
    study = studies[0]
    assert study["MainDicomTags"]["StudyInstanceUID"] == stored["series"][0].StudyInstanceUID
    by_mod = _series_by_modality(orthanc, study["ID"])
    assert sorted(by_mod) == ["MR", "SEG"]
    assert len(by_mod["MR"]["Instances"]) == stored["n_files"]
    assert len(by_mod["SEG"]["Instances"]) == 1
    assert by_mod["MR"]["MainDicomTags"]["SeriesInstanceUID"] == \
        stored["series"][0].SeriesInstanceUID
    assert by_mod["SEG"]["MainDicomTags"]["SeriesInstanceUID"] == stored["seg"].SeriesInstanceUID


def test_seg_references_point_at_mr(orthanc: OrthancServer, stored: dict[str, Any]) -> None:
    study = orthanc.get_json("/studies")[0]
    by_mod = _series_by_modality(orthanc, study)
    seg_id = by_mod["SEG"]["Instances"][0]
    tags = orthanc.get_json(f"/instances/{seg_id}/simplified-tags")
    mr_series_uid = by_mod["MR"]["MainDicomTags"]["SeriesInstanceUID"]
    mr_study_uid = orthanc.get_json(f"/studies/{study}")["MainDicomTags"]["StudyInstanceUID"]
    assert tags["StudyInstanceUID"] == mr_study_uid
    refs = tags["ReferencedSeriesSequence"]
    assert [r["SeriesInstanceUID"] for r in refs] == [mr_series_uid]
    # every referenced instance is an MR instance held by the PACS
    stored_mr_uids = {
        orthanc.get_json(f"/instances/{i}")["MainDicomTags"]["SOPInstanceUID"]
        for i in by_mod["MR"]["Instances"]
    }
    ref_uids = {r["ReferencedSOPInstanceUID"] for r in refs[0]["ReferencedInstanceSequence"]}
    assert ref_uids == stored_mr_uids


def test_seg_frames_decode_from_pacs(orthanc: OrthancServer, stored: dict[str, Any]) -> None:
    study = orthanc.get_json("/studies")[0]
    seg_id = _series_by_modality(orthanc, study)["SEG"]["Instances"][0]
    raw = orthanc.get(f"/instances/{seg_id}/file")
    seg = hd.seg.segread(io.BytesIO(raw))
    sent = pydicom.dcmread(stored["seg_path"])
    # Orthanc rewrites the file meta only; the dataset comes back unchanged
    assert seg.SOPInstanceUID == sent.SOPInstanceUID
    assert seg.PixelData == sent.PixelData
    n_frames = int(seg.NumberOfFrames)
    rows, cols = int(stored["series"][0].Rows), int(stored["series"][0].Columns)
    assert seg.pixel_array.shape == (n_frames, rows, cols)
    # voxel-exact per referenced MR instance
    masks = read_segment_masks(seg)
    labels = stored["labels"]
    for k, ds in enumerate(stored["series"]):
        got = masks[3].get(str(ds.SOPInstanceUID), np.zeros((rows, cols), bool))
        assert np.array_equal(got, labels[k] == 4), k
    # Orthanc's own view of the same object
    assert orthanc.get(f"/instances/{seg_id}/metadata/SopClassUid").decode() == \
        "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
    tags = orthanc.get_json(f"/instances/{seg_id}/simplified-tags")
    assert int(tags["NumberOfFrames"]) == n_frames
    assert len(orthanc.get_json(f"/instances/{seg_id}/frames")) == n_frames
    frame0 = orthanc.get(f"/instances/{seg_id}/frames/0/raw")
    # BINARY: 1 bit per pixel, little-endian bit order; Orthanc cuts frames out of the
    # bit-packed Pixel Data itself -- it must give the same first frame as pydicom
    bits = np.unpackbits(np.frombuffer(frame0, np.uint8), bitorder="little")[: rows * cols]
    assert np.array_equal(bits.reshape(rows, cols), seg.pixel_array[0])


def test_missing_orthanc_fails_naming_the_package(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    import tests.orthanc as mod

    monkeypatch.setattr(mod, "DEFAULT_ORTHANC_BINARY", str(tmp_path / "no-orthanc"))
    monkeypatch.delenv("ORTHANC_BIN", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(mod.OrthancNotInstalledError, match="apt-get install -y orthanc"):
        with mod.run_orthanc():
            pass
