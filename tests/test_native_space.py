"""Clinical-style input: the native-space exam TCGA-FG-6692 (skull on, 0.9 x 0.9 x 5.5 mm, LAS,
different matrices and orientations per sequence). Skipped without ../shared.

Default run: the native DICOM study reads back with each series' own geometry; T2 moved by a
known extra rigid transform is registered back to T1ce within 1 mm / 1 deg and Mattes MI
improves. Slow: brain extraction plausibility, and the whole app on the native study.
"""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from operators.dicom.series_volume import series_to_image
from operators.spatial.registration import register_rigid
from tests.registration_checks import transform_error

SEQUENCES = {"t1": "t1.nii.gz", "t1ce": "t1c.nii.gz", "t2": "t2.nii.gz", "flair": "flair.nii.gz"}


@pytest.fixture(scope="module")
def native_dir(shared_dir: Path) -> Path:
    d = shared_dir / "data" / "native-space" / "TCGA-FG-6692"
    if not d.is_dir():
        pytest.skip(f"missing {d}")
    return d


@pytest.fixture(scope="module")
def native_study(native_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from samples.make_native_study import make_native_study

    out = tmp_path_factory.mktemp("native_study")
    make_native_study(native_dir, out)
    return out


def _read_series(folder: Path) -> sitk.Image:
    datasets = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    return series_to_image(datasets).image


def test_native_study_reads_back_with_each_series_geometry(
    native_dir: Path, native_study: Path
) -> None:
    import json

    doc = json.loads((native_study / "study.json").read_text())
    assert doc["reference_modality"] == "t1ce" and doc["ground_truth"] is None
    by_modality = {s["modality"]: s for s in doc["series"]}
    assert set(by_modality) == set(SEQUENCES)
    for modality, entry in by_modality.items():
        image = _read_series(native_study / entry["folder"])
        nifti = sitk.ReadImage(str(native_dir / SEQUENCES[modality]))
        # same matrix (rows may run the other way: LAS on disk -> right-handed DICOM)
        assert image.GetSize() == nifti.GetSize()
        np.testing.assert_allclose(image.GetSpacing(), nifti.GetSpacing(), atol=1e-4)
        assert abs(np.linalg.det(np.reshape(image.GetDirection(), (3, 3))) - 1.0) < 1e-6
        # same voxels at the same LPS positions (nearest-neighbour lookup is exact)
        back = sitk.Resample(nifti, image, sitk.Transform(), sitk.sitkNearestNeighbor)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(back),
                                      sitk.GetArrayFromImage(image).astype(np.int16))
    sizes = {by_modality[m]["size"][0] for m in by_modality}
    assert len(sizes) > 1  # different matrices per sequence survive


def test_native_known_extra_transform_recovered(native_dir: Path, capsys) -> None:
    """T2 moved by a known rigid transform -> T1ce: the recovered transform equals (known
    extra) o (the T2's own registration) within 1 mm / 1 deg.

    Note: on this exam the T2 / FLAIR headers are ~33 mm (corners) / 8 deg away from the T1ce
    (identity is visibly wrong; the registered T2 matches the T1ce's ventricles), so the T2's
    own registration is a large, real correction -- the "truth" here is relative to it."""
    fixed = sitk.ReadImage(str(native_dir / "t1c.nii.gz"))
    t2 = sitk.ReadImage(str(native_dir / "t2.nii.gz"))
    base = register_rigid(fixed, t2, seed=5, initializer="identity")
    assert base.metric_after < base.metric_before  # MI improves on the real exam

    centre = fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in fixed.GetSize()])
    extra = sitk.Euler3DTransform()
    extra.SetCenter(centre)
    extra.SetRotation(math.radians(2.0), math.radians(-1.5), math.radians(3.0))
    extra.SetTranslation((3.0, -2.5, 4.0))
    # move the T2's grid itself (no interpolation): voxel at p -> extra(p), so that
    # moved(extra(x)) = t2(x) exactly, as if the patient had moved before the T2
    moved = sitk.Image(t2)
    rot = np.reshape(extra.GetMatrix(), (3, 3))
    moved.SetDirection(tuple((rot @ np.reshape(t2.GetDirection(), (3, 3))).ravel()))
    moved.SetOrigin(extra.TransformPoint(t2.GetOrigin()))
    res = register_rigid(fixed, moved, seed=5, initializer="identity")
    expected = sitk.CompositeTransform([extra, base.transform])  # base first, then extra
    head = sitk.Cast(sitk.OtsuThreshold(fixed, 0, 1), sitk.sitkUInt8)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(head)
    x0, y0, z0, sx, sy, sz = stats.GetBoundingBox(1)
    corners = [fixed.TransformIndexToPhysicalPoint((x, y, z))
               for x in (x0, x0 + sx - 1) for y in (y0, y0 + sy - 1) for z in (z0, z0 + sz - 1)]
    disp = max(np.linalg.norm(np.subtract(res.transform.TransformPoint(p),
                                          expected.TransformPoint(p))) for p in corners)
    composite_matrix = (np.reshape(extra.GetMatrix(), (3, 3))
                        @ np.reshape(base.transform.GetMatrix(), (3, 3)))
    r = np.reshape(res.transform.GetMatrix(), (3, 3)).T @ composite_matrix
    rot_err = math.degrees(math.acos(np.clip((np.trace(r) - 1) / 2, -1, 1)))
    with capsys.disabled():
        print(f"\n[native] T2 + known extra -> T1ce: {disp:.2f} mm, {rot_err:.2f} deg, "
              f"{res.duration_s:.1f} s; own T2 registration "
              f"{transform_error(base.transform, sitk.Euler3DTransform(), corners)[0]:.2f} mm "
              "from identity")
    assert disp < 1.0 and rot_err < 1.0
    assert res.metric_after < res.metric_before


@pytest.mark.slow  # ~30-80 s on 2 shared cores
def test_native_brain_mask_plausible(native_dir: Path, capsys) -> None:
    from operators.spatial.brain_extraction import extract_brain, is_skull_stripped, mask_volume_ml

    t1c = sitk.ReadImage(str(native_dir / "t1c.nii.gz"))
    assert not is_skull_stripped(t1c)[0]
    res = extract_brain(t1c)
    ml = mask_volume_ml(res.mask)
    with capsys.disabled():
        print(f"\n[native] brain mask {ml:.0f} ml ({res.record['refinement']}), "
              f"{res.record['duration_s']:.1f} s")
    # the 26 x 5.5 mm slab covers most, not all, of the brain
    assert 900.0 < ml < 1800.0
    head = sitk.OtsuThreshold(sitk.Cast(t1c, sitk.sitkFloat32), 0, 1)
    m = sitk.GetArrayViewFromImage(res.mask) > 0
    assert np.mean(sitk.GetArrayViewFromImage(head)[m] > 0) > 0.8  # inside the head


@pytest.mark.slow  # the whole app: several minutes on 2 cores
def test_app_on_native_study(native_study: Path, models_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    subprocess.run([sys.executable, "-m", "app", "-i", str(native_study / "dicom"), "-o", str(out),
                    "-m", str(models_dir)], check=True, timeout=1800)
    segs = list(out.rglob("*.dcm"))
    assert segs, "no DICOM-SEG written"
    assert list(out.rglob("overlay.png"))
    seg = pydicom.dcmread(segs[0])
    ref_folder = next((native_study / "dicom").glob("501_*"))
    ref = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p) for p in ref_folder.glob("*.dcm")}
    first = next(iter(ref.values()))
    assert (seg.Rows, seg.Columns) == (first.Rows, first.Columns)
    for frame in seg.PerFrameFunctionalGroupsSequence:
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        pos = frame.PlanePositionSequence[0].ImagePositionPatient
        np.testing.assert_allclose([float(v) for v in pos],
                                   [float(v) for v in ref[uid].ImagePositionPatient], atol=1e-3)


def test_skull_stripped_detection(native_dir: Path, brats_dir: Path) -> None:
    from operators.spatial.brain_extraction import is_skull_stripped

    brats_t1 = brats_dir / "Brats18_TCIA01_201_1" / "Brats18_TCIA01_201_1_t1.nii.gz"
    if not brats_t1.is_file():
        pytest.skip(f"missing {brats_t1}")
    stripped, evidence = is_skull_stripped(sitk.ReadImage(str(brats_t1)))
    assert stripped and evidence["zero_fraction"] > 0.5
    for name in SEQUENCES.values():
        assert not is_skull_stripped(sitk.ReadImage(str(native_dir / name)))[0]


def test_template_loads_offline_in_lps() -> None:
    from operators.spatial.brain_extraction import load_template, mask_volume_ml

    template, mask = load_template(2)
    assert template.GetSpacing() == (2.0, 2.0, 2.0) and mask.GetSize() == template.GetSize()
    # RAS -> LPS: the first two direction cosines are negated
    np.testing.assert_allclose(np.reshape(template.GetDirection(), (3, 3)),
                               np.diag([-1.0, -1.0, 1.0]))
    assert 1500.0 < mask_volume_ml(mask) < 2200.0  # the MNI152 2009 mask is generous
    # the left hemisphere (LPS +x) is where the template's x is positive
    centre = np.mean([mask.TransformIndexToPhysicalPoint(tuple(int(v) for v in idx[::-1]))
                      for idx in np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)[::500]], axis=0)
    assert abs(centre[0]) < 10.0


@pytest.mark.slow  # ~60-80 s per case on 2 shared cores
@pytest.mark.parametrize("case", ["Brats18_TCIA01_201_1", "Brats18_CBICA_ABM_1"])
def test_brain_mask_on_skull_stripped_brats(brats_dir: Path, case: str) -> None:
    """Sanity check: on BraTS T1 (already skull-stripped) the mask ~ the nonzero region."""
    from operators.spatial.brain_extraction import extract_brain

    img = sitk.ReadImage(str(brats_dir / case / f"{case}_t1.nii.gz"))
    res = extract_brain(img)
    a = sitk.GetArrayViewFromImage(res.mask) > 0
    b = sitk.GetArrayViewFromImage(img) > 0
    assert 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum()) > 0.95


def test_labels_land_on_native_reference_grid(native_study: Path) -> None:
    """Model grid -> the native T1ce's own grid (0.9 x 0.9 x 5.5 mm, oblique, read from the
    DICOM study): exact geometry, slice k at instance k's ImagePositionPatient, and a label
    blob survives the round trip."""
    from operators.spatial.grid import labels_to_reference, model_grid

    folder = next((native_study / "dicom").glob("501_*"))
    datasets = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    series = series_to_image(datasets)
    ref = series.image
    grid = model_grid(ref)
    z, y, x = np.indices(sitk.GetArrayViewFromImage(grid).shape)
    centre = np.asarray(sitk.GetArrayViewFromImage(grid).shape) / 2.0
    ball = ((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2) <= 30.0**2
    labels = sitk.GetImageFromArray(np.where(ball, 2, 0).astype(np.uint8))
    labels.CopyInformation(grid)
    on_ref = labels_to_reference(labels, ref)
    assert on_ref.GetSize() == ref.GetSize() and on_ref.GetOrigin() == ref.GetOrigin()
    assert on_ref.GetSpacing() == ref.GetSpacing() and on_ref.GetDirection() == ref.GetDirection()
    for k, ds in enumerate(series.slice_datasets):
        np.testing.assert_allclose(on_ref.TransformIndexToPhysicalPoint((0, 0, k)),
                                   [float(v) for v in ds.ImagePositionPatient], atol=1e-3)
    back = sitk.GetArrayFromImage(labels_to_reference(on_ref, grid)) == 2
    assert 2.0 * np.logical_and(back, ball).sum() / (back.sum() + ball.sum()) > 0.85
