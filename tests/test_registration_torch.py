"""The PyTorch registration backend (GPU path of issue 17), checked on the CPU: accuracy on a
``make_study --misalign`` series, determinism, the backend choice, and the operator using it."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from operators.spatial.model_input import choose_registration_backend, register_and_resample
from operators.spatial.registration_torch import register_rigid_torch, torch_registration_device
from tests.registration_checks import brain_box_corners, brain_mask_from_nonzero, transform_error

CASE = "Brats18_TCIA01_201_1"


def _misaligned_t2(brats_dir: Path) -> tuple[sitk.Image, sitk.Image, sitk.Transform]:
    from samples import make_study as ms

    vols = ms.load_case(brats_dir / CASE, ["t1ce", "t2"])
    ref = vols["t1ce"]
    truth = ms.draw_transform(3, "t2", ms.volume_center(ref))
    moving = ms.resample_moving(vols["t2"], truth, ms.draw_grid(3, "t2", ref)).to_sitk()
    return ref.to_sitk(), moving, truth.to_sitk()


@pytest.mark.slow  # 1-2 min on 2 cores; the default suite checks the GPU check's coarse registration (< 3 mm, no SimpleITK)
def test_torch_registration_recovers_a_known_misalignment_on_the_cpu(brats_dir: Path) -> None:
    fixed, moving, truth = _misaligned_t2(brats_dir)  # T2, 0.94 x 0.94 x 3 mm, moved by 1-5 deg / mm
    corners = brain_box_corners(brain_mask_from_nonzero([fixed]))
    untouched, _ = transform_error(sitk.Euler3DTransform(), truth, corners)
    res = register_rigid_torch(fixed, moving, device="cpu", seed=2)
    disp, rot = transform_error(res.transform, truth, corners)
    assert untouched > 3.0  # the test has something to recover
    assert disp < 1.0 and rot < 1.0, (disp, rot, res.settings)
    assert res.settings["backend"] == "torch-cpu" and res.settings["domain"] == "moving"


def test_torch_registration_is_deterministic_on_the_cpu(brats_dir: Path) -> None:
    fixed, moving, _ = _misaligned_t2(brats_dir)
    kw = dict(device="cpu", seed=5, level_spacings_mm=(4.0,), samples_per_level=(5000,), iterations_per_level=(30,),
              learning_rates=(0.02,))
    a = register_rigid_torch(fixed, moving, **kw).transform.GetParameters()
    b = register_rigid_torch(fixed, moving, **kw).transform.GetParameters()
    assert a == b and any(abs(v) > 1e-3 for v in a)


def test_backend_choice_follows_the_machine_and_the_setting() -> None:
    name, reason = choose_registration_backend("auto")
    if torch_registration_device() == "cuda":
        assert name == "torch-cuda" and "GPU" in reason
    else:
        assert name == "simpleitk" and "no CUDA GPU" in reason
    assert choose_registration_backend("torch-cpu")[0] == "torch-cpu"


@pytest.mark.slow  # the torch backend on a whole study (~30 s); its core is checked on the CPU by the tests above
def test_the_operator_registers_with_the_torch_backend_when_asked(small_study: Path) -> None:
    from operators.dicom.study_loader import load_study
    from operators.selection.modality_selector import SelectionRules, select_modalities

    selection = select_modalities(load_study(small_study), SelectionRules.load())
    done = register_and_resample(selection, 0, logging.getLogger("test"), "template", "torch-cpu")
    assert done.record.backend == "torch-cpu"
    moving = list(done.record.moving)
    assert moving and all(done.record.moving[m]["settings"]["backend"] == "torch-cpu" for m in moving)
    # an aligned study stays aligned (within half a voxel of the 1 mm grid)
    for m in moving:
        assert np.abs(np.asarray(done.transforms[m].GetTranslation())).max() < 0.5


def _oblique_image(seed: int) -> sitk.Image:
    """Odd sizes, anisotropic spacing, an oblique direction, non-integer intensities, foreground
    touching the borders: what the BraTS pair does not exercise."""
    rng = np.random.default_rng(seed)
    arr = (rng.normal(100.0, 50.0, size=(23 + seed, 37, 41)) * rng.uniform(0.001, 3.0)).astype(np.float32)
    arr[arr < 80.0 * arr.std() / 50.0] = 0.0
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(tuple(float(v) for v in rng.uniform(0.4, 3.1, 3)))
    img.SetOrigin(tuple(float(v) for v in rng.uniform(-100.0, 100.0, 3)))
    rot = sitk.Euler3DTransform()
    rot.SetRotation(*(float(v) for v in rng.uniform(-0.5, 0.5, 3)))
    img.SetDirection(rot.GetMatrix())
    return img


def test_the_numpy_core_reproduces_simpleitks_preprocessing_bit_for_bit(brats_dir: Path) -> None:
    """The pyramid, the mask and the centre of the SimpleITK-free core equal BinShrink,
    BinaryDilate (ball) and TransformContinuousIndexToPhysicalPoint exactly: what keeps
    register_rigid_torch's results identical to its former all-SimpleITK version."""
    from operators.spatial import registration as R
    from operators.spatial import registration_torch_core as C
    from operators.spatial.grid import TOL_MM, centre_of
    from operators.spatial.registration_torch import array_image

    fixed, moving, _ = _misaligned_t2(brats_dir)
    assert C._TOL_MM == TOL_MM
    for image in (fixed, moving, _oblique_image(0), _oblique_image(1)):
        f, a = sitk.Cast(image, sitk.sitkFloat32), array_image(image)
        assert a.size == f.GetSize() and C.centre(a) == centre_of(f)
        for mm in (4.0, 2.0, 1.0, 3.3):
            s, n = R._block_average(f, mm), C.block_average(a, mm)
            assert np.array_equal(sitk.GetArrayFromImage(s), n.array), mm
            assert (s.GetSpacing(), s.GetOrigin(), s.GetDirection()) == (n.spacing, n.origin, n.direction), mm
        for mm in (10.0, 7.5, 1.0):
            assert np.array_equal(sitk.GetArrayFromImage(R._foreground_mask(f, mm)) > 0, C.foreground_mask(a, mm)), mm


def test_numpy_euler_transforms_equal_simpleitks() -> None:
    """euler_affine and invert_affine against SimpleITK's Euler3DTransform and its inverse, and
    rigid_error on SimpleITK transforms (tests.registration_checks) against a direct evaluation."""
    from operators.spatial.registration_torch_core import euler_affine, invert_affine, rigid_error
    from tests.registration_checks import affine_of

    rng = np.random.default_rng(4)
    points = rng.uniform(-90.0, 90.0, size=(8, 3))
    for _ in range(5):
        est, truth = sitk.Euler3DTransform(), sitk.Euler3DTransform()
        params = [(rng.uniform(-0.1, 0.1, 3), rng.uniform(-6.0, 6.0, 3), rng.uniform(-20.0, 20.0, 3)) for _ in range(2)]
        for tx, (angles, shift, centre) in zip((est, truth), params):
            tx.SetCenter(tuple(centre))
            tx.SetRotation(*angles)
            tx.SetTranslation(tuple(shift))
        for tx, (angles, shift, centre) in zip((est, truth), params):
            a, o = euler_affine(angles, shift, centre)
            assert np.allclose(a, affine_of(tx)[0], rtol=0, atol=1e-12) and np.allclose(o, affine_of(tx)[1], rtol=0, atol=1e-9)
        mine = rigid_error(euler_affine(*params[0]), euler_affine(*params[1]), points)
        direct = max(np.linalg.norm(np.subtract(est.TransformPoint(tuple(p)), truth.TransformPoint(tuple(p)))) for p in points)
        assert np.isclose(mine[0], direct, rtol=0, atol=1e-9)
        assert np.allclose(mine, transform_error(est, truth, points), rtol=0, atol=1e-9)
        # the exact inverse agrees with SimpleITK's
        a, o = invert_affine(*euler_affine(*params[0]))
        inv = est.GetInverse()
        assert np.allclose([inv.TransformPoint(tuple(p)) for p in points], points @ a.T + o, rtol=0, atol=1e-9)


def test_the_core_imports_and_registers_without_simpleitk(brats_dir: Path, tmp_path: Path) -> None:
    """registration_torch_core in a process where SimpleITK cannot be imported (as on the GPU
    machine): a short registration on arrays, equal to the wrapper's."""
    import json
    import subprocess
    import sys

    from operators.spatial.registration_torch import array_image
    from tests.conftest import REPO_ROOT

    fixed, moving, _ = _misaligned_t2(brats_dir)
    kw = dict(device="cpu", seed=5, level_spacings_mm=(4.0,), samples_per_level=(3000,), iterations_per_level=(10,),
              learning_rates=(0.02,))
    wrapper = register_rigid_torch(fixed, moving, **kw).transform
    tmp = tmp_path
    arrays = {}
    for name, image in (("fixed", fixed), ("moving", moving)):
        a = array_image(image)
        arrays[name] = a.array
        arrays[name + "_geometry"] = np.asarray([*a.spacing, *a.origin, *a.direction])
    np.savez(tmp / "core_pair.npz", **arrays)
    script = f"""
import importlib.abc, json, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "SimpleITK":
            raise ModuleNotFoundError("SimpleITK is blocked in this test", name=name)
sys.meta_path.insert(0, Block())
import numpy as np
from operators.spatial.registration_torch_core import ArrayImage, register_rigid_arrays
z = np.load({str(tmp / "core_pair.npz")!r})
img = {{n: ArrayImage(z[n], tuple(z[n + "_geometry"][:3]), tuple(z[n + "_geometry"][3:6]), tuple(z[n + "_geometry"][6:]))
       for n in ("fixed", "moving")}}
r = register_rigid_arrays(img["fixed"], img["moving"], **{kw!r})
a, o = r.fixed_to_moving()
print(json.dumps({{"a": a.tolist(), "o": o.tolist(), "sitk": "SimpleITK" in sys.modules}}))
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not got["sitk"]
    assert np.allclose(got["a"], np.asarray(wrapper.GetMatrix()).reshape(3, 3), atol=1e-9)
    points = np.asarray([[0.0, 0.0, 0.0], [80.0, -90.0, 60.0]])
    expected = [wrapper.TransformPoint(tuple(p)) for p in points]
    assert np.allclose(points @ np.asarray(got["a"]).T + np.asarray(got["o"]), expected, atol=1e-6)
