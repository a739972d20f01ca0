"""Series -> image conversion on DICOM written by real scanners (classic and Enhanced MR), and
on a study made from a BraTS case: the image equals the pixel arrays stacked by position, bit
for bit; highdicom's IOD lookup is cached without changing its answers; bad series still raise.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.pixels import apply_modality_lut

from operators.dicom.series_volume import memoise_highdicom_iod_lookup, series_to_image
from operators.dicom.study_loader import load_study
from operators.errors import InconsistentGeometryError, UnreadablePixelDataError
from tests.slab_studies import FOLDERS


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


def _reference_stack(files: list[Path]) -> tuple[np.ndarray, list[pydicom.Dataset]]:
    """The straightforward volume: each file's rescaled pixel array, sorted along the slice
    normal (row x column direction, ascending), stacked to ``(S, R, C)`` float32."""
    datasets = [pydicom.dcmread(f) for f in files]
    iop = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    datasets.sort(key=lambda d: float(np.dot(normal, np.asarray(d.ImagePositionPatient, dtype=float))))
    stack = np.stack([apply_modality_lut(d.pixel_array, d).astype(np.float32) for d in datasets])
    return stack, datasets


@pytest.mark.parametrize("modality", sorted(FOLDERS))
def test_image_is_the_pixel_arrays_stacked_by_position(small_study: Path, modality: str) -> None:
    (folder,) = [p for p in small_study.iterdir() if p.name.startswith(FOLDERS[modality])]
    files = sorted(folder.glob("*.dcm"))
    expected, by_position = _reference_stack(files)
    shuffled = [pydicom.dcmread(f) for f in files]
    shuffled = shuffled[1::2] + shuffled[::2][::-1]  # any input order
    result = series_to_image(shuffled, modality)
    array = sitk.GetArrayFromImage(result.image)
    assert array.dtype == np.float32 and array.shape == expected.shape == (len(files), 240, 240)
    assert array.tobytes() == expected.tobytes()  # bit for bit
    first = by_position[0]
    np.testing.assert_allclose(result.image.GetOrigin(), np.asarray(first.ImagePositionPatient, dtype=float), atol=1e-6)
    iop = np.asarray(first.ImageOrientationPatient, dtype=float)
    direction = np.reshape(result.image.GetDirection(), (3, 3))
    np.testing.assert_allclose(direction[:, 0], iop[:3], atol=1e-6)  # along a row = column index
    np.testing.assert_allclose(direction[:, 1], iop[3:], atol=1e-6)  # down a column = row index
    np.testing.assert_allclose(direction[:, 2], np.cross(iop[:3], iop[3:]), atol=1e-6)
    row_mm, column_mm = (float(v) for v in first.PixelSpacing)
    gap = float(np.linalg.norm(np.subtract(by_position[1].ImagePositionPatient, first.ImagePositionPatient, dtype=float)))
    np.testing.assert_allclose(result.image.GetSpacing(), (column_mm, row_mm, gap), atol=1e-6)
    assert [d.SOPInstanceUID for d in result.slice_datasets] == [d.SOPInstanceUID for d in by_position]
    assert result.slice_frames == [1] * len(files)


def test_highdicom_iod_lookup_is_cached_with_the_same_answers(small_study: Path) -> None:
    from highdicom import _standard_utils as standard

    series = load_study(small_study).series[0]
    series_to_image(series.datasets)
    lookup = standard.is_attribute_in_iod
    assert getattr(lookup, "memoised", False) and memoise_highdicom_iod_lookup()
    assert standard.is_attribute_in_iod is lookup  # installed once, not wrapped again
    original = lookup.__wrapped__
    mr, enhanced_mr, seg = "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.66.4"
    for attribute, sop_class, exclude in [
        ("PixelData", mr, ["IconImageSequence"]), ("NumberOfFrames", mr, None),
        ("NumberOfFrames", enhanced_mr, None), ("PerFrameFunctionalGroupsSequence", mr, None),
        ("SegmentSequence", seg, None), ("FloatPixelData", mr, ("IconImageSequence",)),
    ]:
        assert lookup(attribute, pydicom.uid.UID(sop_class), exclude) == original(attribute, sop_class, exclude)
    assert lookup("NumberOfFrames", enhanced_mr) and not lookup("NumberOfFrames", mr)
    for _ in range(2):  # an unknown SOP class raises every time (errors are not cached)
        with pytest.raises(KeyError):
            lookup("PixelData", "1.2.3.4")
    # highdicom's volume path asks through the cache (a highdicom that moved the lookup fails here).
    hits = lookup.cache_info().hits
    series_to_image(series.datasets)
    assert lookup.cache_info().hits - hits >= 2 * len(series.datasets)


def _tilted(ds: pydicom.Dataset) -> None:
    c, s = np.cos(np.radians(10)), np.sin(np.radians(10))
    ds.ImageOrientationPatient = [-c, -s, 0.0, s, -c, 0.0]


@pytest.mark.parametrize(("change", "error", "match"), [
    ("gap", InconsistentGeometryError, "regular volume"),
    ("two_at_one_position", InconsistentGeometryError, "regular volume"),
    ("tilted_slice", InconsistentGeometryError, "regular volume"),
    ("other_pixel_spacing", InconsistentGeometryError, "regular volume"),
    ("cut_pixel_data", UnreadablePixelDataError, "instance"),
])
def test_bad_series_still_raise(small_study: Path, change: str, error: type, match: str) -> None:
    datasets = [copy.deepcopy(d) for d in load_study(small_study).series[0].datasets]
    datasets.sort(key=lambda d: int(d.InstanceNumber))
    if change == "gap":
        del datasets[5]
    elif change == "two_at_one_position":
        twin = copy.deepcopy(datasets[3])
        twin.SOPInstanceUID = pydicom.uid.generate_uid()
        datasets.append(twin)
    elif change == "tilted_slice":
        _tilted(datasets[4])
    elif change == "other_pixel_spacing":
        datasets[4].PixelSpacing = [1.2, 1.2]
    else:
        datasets[4].PixelData = datasets[4].PixelData[:1000]
    with pytest.raises(error, match=match):
        series_to_image(datasets, "bad")
