"""The PyTorch registration backend (GPU path of issue 17), checked on the CPU: accuracy on a
``make_study --misalign`` series, determinism, the backend choice, and the operator using it."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from operators.registration_operator import build_model_input, choose_registration_backend
from operators.spatial.registration import brain_box_corners, brain_mask_from_nonzero, transform_error
from operators.spatial.registration_torch import register_rigid_torch, torch_registration_device

CASE = "Brats18_TCIA01_201_1"


def _misaligned_t2(brats_dir: Path) -> tuple[sitk.Image, sitk.Image, sitk.Transform]:
    from samples import make_study as ms

    vols = ms.load_case(brats_dir / CASE, ["t1ce", "t2"])
    ref = vols["t1ce"]
    truth = ms.draw_transform(3, "t2", ms.volume_center(ref))
    moving = ms.resample_moving(vols["t2"], truth, ms.draw_grid(3, "t2", ref)).to_sitk()
    return ref.to_sitk(), moving, truth.to_sitk()


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


def test_the_operator_registers_with_the_torch_backend_when_asked(small_study: Path) -> None:
    from operators.dicom.study_loader import load_study
    from operators.selection.modality_selector import SelectionRules, select_modalities

    selection = select_modalities(load_study(small_study), SelectionRules.load())
    model_input = build_model_input(selection, 0, logging.getLogger("test"), "template", "torch-cpu")
    ref = model_input.reference_modality
    assert model_input.registrations[ref]["registration_backend"]["name"] == "torch-cpu"
    moving = [m for m in model_input.registrations if m != ref]
    assert moving and all(model_input.registrations[m]["settings"]["backend"] == "torch-cpu" for m in moving)
    # an aligned study stays aligned (within half a voxel of the 1 mm grid)
    for m in moving:
        assert np.abs(np.asarray(model_input.transforms[m].GetTranslation())).max() < 0.5
