"""The DICOM-SEG writer on odd but valid references: Enhanced MR (multi-frame) sources get a SEG
that references their frames; non-ASCII and over-long text still give a valid SEG (dciodvfy)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom

from tests.slab_studies import copy_study, rewrite, series_dir, series_of, write_valid_seg


def test_enhanced_mr_reference_gets_a_seg_that_references_its_frames(shared_dir: Path, tmp_path: Path) -> None:
    import SimpleITK as sitk

    from operators.dicom.series_volume import series_to_image

    (path,) = (shared_dir / "data/real-mr-dicom/siemens-xa30-enhanced-t1").glob("*.dcm")
    source = pydicom.dcmread(path)
    image = series_to_image([source], "enhanced")
    shape = sitk.GetArrayViewFromImage(image.image).shape
    labels = np.zeros(shape, dtype=np.uint8)
    labels[40:50, 50:70, 50:70] = 2
    labels[43:47, 60:65, 60:65] = 4
    labels[44:46, 55:60, 55:60] = 1
    back = write_valid_seg(labels, image, ["T1"], ["FLAIR", "T1ce", "T2"], tmp_path)
    slice_of_frame = {f: k for k, f in enumerate(image.slice_frames)}
    per_frame = source.PerFrameFunctionalGroupsSequence
    n_checked = 0
    for i, group in enumerate(back.PerFrameFunctionalGroupsSequence):
        ref = group.DerivationImageSequence[0].SourceImageSequence[0]
        assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
        frame = int(ref.ReferencedFrameNumber)
        np.testing.assert_allclose(
            np.asarray(group.PlanePositionSequence[0].ImagePositionPatient, float),
            np.asarray(per_frame[frame - 1].PlanePositionSequence[0].ImagePositionPatient, float), atol=1e-3,
        )
        segment = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        label = {1: 1, 2: 2, 3: 4}[segment]
        mask = np.asarray(back.pixel_array).reshape(-1, *shape[1:])[i].astype(bool)
        assert np.array_equal(mask, labels[slice_of_frame[frame]] == label)
        n_checked += 1
    assert n_checked == int(back.NumberOfFrames) > 0


def test_non_ascii_and_long_text_give_a_valid_seg(small_study: Path, tmp_path: Path) -> None:
    study = copy_study(small_study, tmp_path / "s", only=("t1ce",))
    long_description = "T1 post Gd — Kontrastmittel " + "x" * 200  # > 64 chars: invalid LO, seen in the wild

    def text(ds: pydicom.Dataset, k: int) -> None:
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName = "Müller^Zoë^José=山田^太郎"
        ds.SeriesDescription = long_description
        ds.StudyDescription = "Hirn – Tumor ✓ " + "lang " * 30  # > 64 bytes: the SEG copies it

    rewrite(series_dir(study, "t1ce"), text)
    series = series_of(study, "t1ce")
    assert series.header.series_description == long_description
    labels = np.zeros((12, 240, 240), dtype=np.uint8)
    labels[3:6, 100:120, 100:120] = 2
    from operators.dicom.series_volume import series_to_image

    image = series_to_image(series.datasets, series.header.series_description)
    back = write_valid_seg(labels, image, ["T1ce"], ["FLAIR", "T1", "T2"], tmp_path)
    assert str(back.PatientName) == "Müller^Zoë^José=山田^太郎"
    assert back.StudyDescription.startswith("Hirn – Tumor ✓ lang")
    assert len(back.StudyDescription.encode("utf-8")) <= 64
