"""Series -> image conversion on DICOM written by real scanners (classic and Enhanced MR)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

from operators.dicom.series_volume import series_to_image
from operators.dicom.study_loader import load_study


def _same_physical_content(ours: sitk.Image, reference: sitk.Image) -> float:
    """Max |difference| after putting ours on the reference grid (nearest neighbour)."""
    on_ref = sitk.Resample(ours, reference, sitk.Transform(), sitk.sitkNearestNeighbor, -1.0)
    a = sitk.GetArrayFromImage(on_ref)
    b = sitk.GetArrayFromImage(reference).astype(np.float32)
    inside = a >= 0
    assert inside.mean() > 0.99
    return float(np.abs(a[inside] - b[inside]).max())


def test_classic_mr_series_matches_gdcm_reader(shared_dir: Path) -> None:
    folder = shared_dir / "data/real-mr-dicom/ge-3d-t1-mprage"
    series = load_study(folder).series[0]
    result = series_to_image(series.datasets, series.header.series_description)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    reference = reader.Execute()
    assert result.image.GetSize() == reference.GetSize() == (256, 256, 130)
    np.testing.assert_allclose(result.image.GetDirection(), reference.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(result.image.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(result.image.GetSpacing(), reference.GetSpacing(), atol=1e-5)
    assert np.linalg.det(np.reshape(result.image.GetDirection(), (3, 3))) > 0
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result.image), sitk.GetArrayFromImage(reference))
    # Slice k of the image is the instance whose position is the physical point of index (0, 0, k).
    for k in (0, 64, 129):
        ipp = np.asarray(result.slice_datasets[k].ImagePositionPatient, dtype=float)
        np.testing.assert_allclose(result.image.TransformIndexToPhysicalPoint((0, 0, k)), ipp, atol=1e-3)


def test_enhanced_multiframe_series_matches_gdcm_reader(shared_dir: Path) -> None:
    folder = shared_dir / "data/real-mr-dicom/siemens-xa30-enhanced-t1"
    series = load_study(folder).series[0]
    assert series.header.number_of_frames == 96
    assert series.header.repetition_time_ms is not None  # read from the functional groups
    result = series_to_image(series.datasets, series.header.series_description)
    assert result.image.GetSize() == (128, 128, 96)
    assert np.linalg.det(np.reshape(result.image.GetDirection(), (3, 3))) > 0
    reference = sitk.ReadImage(str(series.files[0]))  # GDCM, as a cross-check of the geometry
    assert _same_physical_content(result.image, reference) == 0.0
    # Frame bookkeeping: frame numbers are a permutation of 1..96 and each frame's position
    # is where the image says slice k is.
    assert sorted(result.slice_frames) == list(range(1, 97))
    ds = series.datasets[0]
    for k in (0, 50, 95):
        group = ds.PerFrameFunctionalGroupsSequence[result.slice_frames[k] - 1]
        ipp = np.asarray(group.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        np.testing.assert_allclose(result.image.TransformIndexToPhysicalPoint((0, 0, k)), ipp, atol=1e-3)


def test_uneven_slices_are_refused(shared_dir: Path) -> None:
    import pytest

    from operators.errors import InconsistentGeometryError

    folder = shared_dir / "data/real-mr-dicom/ge-3d-t1-mprage"
    datasets = [pydicom.dcmread(p) for p in sorted(folder.iterdir())]
    result = series_to_image(datasets)
    kept = [d for d in result.slice_datasets if d not in result.slice_datasets[40:43]]  # a gap of 3 slices
    with pytest.raises(InconsistentGeometryError):
        series_to_image(kept)
