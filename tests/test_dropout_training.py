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


def test_cascade_batches_are_the_tiling_the_cascade_feeds() -> None:
    """``--batches cascade``: 5 consecutive slabs of the case's tiling at the WT base patch,
    the volume's own voxels inside, the withheld sequences zero, padding slabs of weight 0."""
    from engines.model.cascade.config import CONTEXT, IN_SLICES, OUT_SLICES
    from engines.model.cascade.tiling import SlabTiling
    from engines.model.missing.dropout_batches import TrainingView, draw_cascade_batch

    d, h, w = 80, 40, 36
    image = np.random.default_rng(0).standard_normal((4, d, h, w)).astype(np.float32)
    targets = np.stack([np.zeros((d, h, w)), np.zeros((d, h, w)), np.ones((d, h, w))]).astype(np.float32)
    targets[1, 60:64, 10:20, 10:20] = 1.0  # tumour in the second group of slabs only
    case = TrainingView(image, targets, np.ones((d, h, w), bool))
    tiling = SlabTiling.of((d, h, w), (48, 48))
    groups = [tiling.starts[i:i + 5] for i in range(0, len(tiling.starts), 5)]
    assert len(groups) == 2 and len(groups[1]) < 5
    h0, w0 = tiling.origin_hw
    seen = []
    for step in range(16):
        x, teacher, label, weight, subset = draw_cascade_batch([case], np.random.default_rng([0, step]), (48, 48),
                                                               ["T1ce+T2"])
        assert subset == "T1ce+T2" and x.shape == (5, 4, IN_SLICES, *tiling.patch_hw)
        assert weight.shape == (5, OUT_SLICES, *tiling.patch_hw)
        assert not x[:, :2].any()  # FLAIR and T1 withheld: zero, inside the volume and out
        inside = x[:, 2:, :, -h0:-h0 + h, -w0:-w0 + w].numpy()

        def is_group(group: tuple[int, ...], inside: np.ndarray = inside) -> bool:
            for k, a in enumerate(group):
                lo, hi = max(0, CONTEXT - a), min(IN_SLICES, d - (a - CONTEXT))
                if not np.array_equal(inside[k, :, lo:hi], image[2:, a - CONTEXT + lo:a - CONTEXT + hi]):
                    return False
            return True

        (drawn,) = [g for g in groups if is_group(g)]  # the tiling's slabs, voxel for voxel
        assert weight[:len(drawn)].flatten(1).any(1).all() and not weight[len(drawn):].any()  # padding: weight 0
        seen.append(len(drawn))
    assert {5, len(groups[1])} == set(seen)  # both groups drawn, the tumour's more often
    assert seen.count(len(groups[1])) > seen.count(5)


def _cascade_run(out: Path, quick_students: Path, brats_dir: Path, models_dir: Path, *extra: str) -> int:
    """The GPU run's form on the CPU (quick): cascade batches, T1ce+T2 only, the teachers read
    from a carried cache -- with an engine name that does not exist, so the teacher's engine
    (absent on a GPU image) must never be created."""
    return main(["--cases", str(brats_dir / CASE), "--models", str(models_dir), "--quick", "--threads", "1",
                 "--batches", "cascade", "--subsets", "T1ce+T2", "--teacher-cache", str(quick_students / "teacher"),
                 "--teacher-engine", "no-such-engine", "--out", str(out), *extra])


@pytest.fixture(scope="module")
def cascade_students(quick_students: Path, brats_dir: Path, models_dir: Path,
                     tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cascade") / "a"
    assert _cascade_run(out, quick_students, brats_dir, models_dir) == 0
    return out


def test_cascade_batches_for_one_subset_train_from_carried_teachers(
        cascade_students: Path, quick_students: Path, brats_dir: Path, models_dir: Path, tmp_path: Path) -> None:
    assert _digests(cascade_students) != _digests(quick_students)  # other batches, other weights
    manifest = json.loads((cascade_students / MANIFEST).read_text())
    assert (manifest["batches"], manifest["subsets"], manifest["batch"], manifest["device"]) == (
        "cascade", ["T1ce+T2"], 5, "cpu")
    with pytest.raises(SystemExit):  # the students are for subsets without FLAIR
        _cascade_run(tmp_path / "c", quick_students, brats_dir, models_dir, "--subsets", "FLAIR+T2")


@pytest.mark.slow  # a second quick run (~20 s); the default quick test checks the random batches' repeat
def test_cascade_batches_repeat_bit_for_bit(cascade_students: Path, quick_students: Path, brats_dir: Path,
                                           models_dir: Path, tmp_path: Path) -> None:
    assert _cascade_run(tmp_path / "b", quick_students, brats_dir, models_dir) == 0
    assert _digests(tmp_path / "b") == _digests(cascade_students)


@pytest.mark.slow  # a teacher computed again (~15 s); the staging script relies on it (benchmarks/stage_gpu_dropout.sh)
def test_teachers_stored_as_uint8_are_within_0002_of_the_probability(
        quick_students: Path, brats_dir: Path, models_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "teacher"
    assert main(["--cases", str(brats_dir / CASE), "--models", str(models_dir), "--quick", "--threads", "1",
                 "--teacher-cache", str(cache), "--teacher-u8", "--steps", "1", "--out", str(tmp_path / "u8")]) == 0
    (stored,) = cache.glob("*.npz")
    with np.load(stored) as u8, np.load(quick_students / "teacher" / stored.name) as f32:
        assert u8["teacher"].dtype == np.uint8 and f32["teacher"].dtype == np.float32
        assert np.abs(u8["teacher"] / 255 - f32["teacher"]).max() <= 0.5 / 255 + 1e-6
        assert f32["teacher"].max() > 0.5  # a tumour in the crop: not a comparison of zeros
