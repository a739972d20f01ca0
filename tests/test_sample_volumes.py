"""samples.volumes: the case input and the ``--misalign`` draws without SimpleITK or pydicom (the GPU
check builds its registration pair with it), checked against make_study's SimpleITK versions."""
from __future__ import annotations

from pathlib import Path

import numpy as np

CASE = "Brats18_TCIA01_201_1"


def test_the_numpy_moved_series_equals_make_studys(brats_dir: Path) -> None:
    from samples import make_study as ms
    from samples import volumes as sv

    vols = sv.load_case(brats_dir / CASE, ["t1ce", "t2"])
    ref = vols["t1ce"]
    truth = sv.draw_transform(3, "t2", sv.volume_center(ref))
    grid = sv.draw_grid(3, "t2", ref)
    assert np.allclose(truth.matrix4x4_numpy(), truth.matrix4x4(), rtol=0, atol=1e-12)
    a, b = ms.resample_moving(vols["t2"], truth, grid), sv.resample_moving_numpy(vols["t2"], truth, grid)
    assert np.array_equal(a.affine_lps, b.affine_lps) and a.data.shape == b.data.shape == grid.size
    differ = a.data.astype(np.int32) - b.data.astype(np.int32)
    # equal voxel for voxel when measured (TCIA01_201 T2 / FLAIR, seeds 1 and 3); a rounding tie may give 1
    assert np.abs(differ).max() <= 1 and np.count_nonzero(differ) <= 1e-5 * differ.size, np.count_nonzero(differ)


def test_nonzero_box_corners_equal_brain_box_corners(brats_dir: Path) -> None:
    from samples import volumes as sv
    from tests.registration_checks import brain_box_corners, brain_mask_from_nonzero

    ref = sv.load_case(brats_dir / CASE, ["t1ce"])["t1ce"]
    expected = brain_box_corners(brain_mask_from_nonzero([ref.to_sitk()]))
    assert np.allclose(sv.nonzero_box_corners(ref), expected, rtol=0, atol=1e-9)
