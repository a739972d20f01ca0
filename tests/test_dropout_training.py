"""Fine-tuning the WT networks by modality dropout (engines.model.missing.train_dropout): quick mode
bit-identical twice and across a resume; the students exported into a model folder and run by every
CPU engine like the shipped networks (engines.prepare.add_fine_tuned)."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.model.missing.train_dropout import CHECKPOINT, MANIFEST, STUDENTS, distillation_loss, main

CASE = "Brats18_TCIA01_201_1"


def _digests(folder: Path) -> dict[str, str]:
    return {name: hashlib.sha256((folder / f"{name}.pt").read_bytes()).hexdigest() for name in STUDENTS.values()}


@pytest.fixture(scope="module")
def quick_students(brats_dir: Path, models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dropout") / "a"
    assert main(["--cases", str(brats_dir / CASE), "--out", str(out), "--models", str(models_dir), "--quick",
                 "--threads", "1"]) == 0
    return out


def test_quick_mode_is_bit_identical_twice_and_across_a_resume(quick_students: Path, brats_dir: Path,
                                                               models_dir: Path, tmp_path: Path) -> None:
    args = ["--cases", str(brats_dir / CASE), "--models", str(models_dir), "--quick", "--threads", "1"]
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    assert _digests(tmp_path / "b") == _digests(quick_students)
    # Stopped after its first step (exit 3, checkpoint kept), then resumed by the same command.
    assert main([*args, "--out", str(tmp_path / "c"), "--max-seconds", "0"]) == 3
    assert (tmp_path / "c" / CHECKPOINT).is_file() and not (tmp_path / "c" / MANIFEST).exists()
    assert main([*args, "--out", str(tmp_path / "c")]) == 0
    assert _digests(tmp_path / "c") == _digests(quick_students)
    manifest = json.loads((quick_students / MANIFEST).read_text())
    assert manifest["files"] == {f"{n}.pt": d for n, d in _digests(quick_students).items()}
    assert manifest["quick"] and manifest["seed"] == 0 and manifest["steps"] == 6 and manifest["cases"] == [CASE]
    assert set(manifest["started_from"]) == {"wt32.npz", "wt32sg.npz", "wt32cr.npz"}
    # A resume with other settings is refused rather than mixed.
    with pytest.raises(ValueError, match="other settings"):
        main([*args, "--out", str(tmp_path / "c"), "--seed", "1"])


def test_distillation_loss_is_zero_only_where_the_student_agrees() -> None:
    teacher = torch.tensor([[[[0.0, 1.0]]]])  # (1, 1, 1, 2)
    weight = torch.ones_like(teacher)
    agreeing = torch.stack([torch.zeros(1, 1, 1, 2), torch.tensor([[[[-40.0, 40.0]]]])], dim=1)  # (1, 2, 1, 1, 2)
    assert float(distillation_loss(agreeing, teacher, teacher, weight, 0.5)) < 1e-6
    wrong = -agreeing  # foreground logit -40 where the teacher says 1, +40 where it says 0
    assert float(distillation_loss(wrong, teacher, teacher, weight, 0.5)) > 10
    # Voxels of weight 0 (outside the volume) do not count.
    assert float(distillation_loss(wrong, teacher, teacher, torch.zeros_like(weight), 0.5)) == 0.0


@pytest.fixture(scope="module")
def folder_with_students(quick_students: Path, models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from benchmarks.dropout_students import staged_model_folder

    return staged_model_folder(models_dir, quick_students, tmp_path_factory.mktemp("models"))


@pytest.mark.parametrize("name,opts", [
    pytest.param("torch", {}, id="torch"),
    pytest.param("onnxruntime", {}, id="onnxruntime"),
    pytest.param("openvino", {"precision": "f32"}, id="openvino-f32"),
    pytest.param("openvino-folded", {}, id="openvino-folded-f32"),
])
def test_students_run_through_every_cpu_engine(name: str, opts: dict, folder_with_students: Path,
                                               quick_students: Path) -> None:
    from engines.model.msnet import MSNet
    from engines.runtimes.registry import create_engine

    net = MSNet("wt")
    net.load_state_dict(torch.load(quick_students / "wt32md.pt", weights_only=True))
    batch = np.random.default_rng(0).standard_normal((5, 4, 19, 32, 32)).astype(np.float32)
    with torch.inference_mode():
        reference = net(torch.from_numpy(batch)).numpy()
    engine = create_engine(name, model_dir=folder_with_students, **opts)
    student, shipped = engine.run("wt32md", batch), engine.run("wt32", batch)
    assert np.abs(student - reference).max() < 2e-3
    assert np.abs(student - shipped).max() > 1e-2  # the student's own weights, not the shipped network's


def test_half_precision_engines_take_the_students_or_say_why_not(folder_with_students: Path) -> None:
    """BF16 (OpenVINO, native BF16 CPUs) and FP16 (CUDA) engines: masks like FP32, or a skip with the reason."""
    from engines.runtimes.base import EngineUnavailable
    from engines.runtimes.registry import create_engine

    batch = np.random.default_rng(1).standard_normal((5, 4, 19, 32, 32)).astype(np.float32)
    fp32 = create_engine("openvino-folded", model_dir=folder_with_students).run("wt32md", batch)
    reasons = []
    for name in ("openvino-folded-bf16", "torch-cuda-fp16"):
        try:
            half = create_engine(name, model_dir=folder_with_students).run("wt32md", batch)
        except EngineUnavailable as exc:
            reasons.append(f"{name}: {exc}")
            continue
        assert float(((half[:, 1] > half[:, 0]) == (fp32[:, 1] > fp32[:, 0])).mean()) > 0.99
    if len(reasons) == 2:
        pytest.skip("no half-precision engine here: " + "; ".join(reasons))


def test_a_student_whose_file_differs_from_its_manifest_is_refused(quick_students: Path, models_dir: Path,
                                                                   tmp_path: Path) -> None:
    from engines.prepare import add_fine_tuned

    source = tmp_path / "students"
    shutil.copytree(quick_students, source, ignore=shutil.ignore_patterns("teacher", CHECKPOINT))
    (source / "wt32sgmd.pt").write_bytes((source / "wt32sgmd.pt").read_bytes() + b"\0")
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copyfile(models_dir / "manifest.json", folder / "manifest.json")
    with pytest.raises(ValueError, match="SHA-256"):
        add_fine_tuned(folder, source)
