"""HD-BET through the engine layer (engines.brain): the exported graph against the PyTorch
network, the engine choice, the model folder's entry."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engines.brain.hd_bet_engines import OpenVinoHdBet, TorchHdBet, choose_hd_bet_engine
from engines.brain.hd_bet_network import HD_BET_ONNX
from engines.runtimes.engine_cache import file_sha256


def _input(shape=(32, 48, 64)) -> np.ndarray:
    """A smooth head-like blob plus noise, z-scored: (Z, Y, X), each axis a multiple of 16."""
    z, y, x = np.indices(shape, dtype=np.float32)
    c = [(s - 1) / 2 for s in shape]
    r = np.sqrt(((z - c[0]) / shape[0]) ** 2 + ((y - c[1]) / shape[1]) ** 2 + ((x - c[2]) / shape[2]) ** 2)
    v = np.where(r < 0.35, 1.0, 0.05) + np.random.default_rng(0).normal(0, 0.05, shape)
    return ((v - v.mean()) / v.std()).astype(np.float32)


def test_model_folder_has_hd_bet(models_dir: Path) -> None:
    entry = json.loads((models_dir / "manifest.json").read_text())["brain_extraction"]
    assert entry["file"] == HD_BET_ONNX and entry["sha256"] == file_sha256(models_dir / HD_BET_ONNX)
    assert entry["source_weights"]["fold"] == 0 and entry["ort_vs_torch_max_abs"] < 1e-3


def test_openvino_fp32_equals_torch(models_dir: Path) -> None:
    pytest.importorskip("openvino", reason="OpenVINO is not installed here")
    x = _input()
    ref = TorchHdBet((0,), "cpu").foreground(x)
    got = OpenVinoHdBet(models_dir / HD_BET_ONNX, "fp32").foreground(x)
    assert got.shape == ref.shape == x.shape and got.dtype == np.float32
    assert float(np.abs(got - ref).max()) < 1e-3
    assert 0.0 <= float(ref.min()) and float(ref.max()) <= 1.0


def test_choice_openvino_with_the_model_folder(models_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("openvino", reason="OpenVINO is not installed here")
    from engines.runtimes.cpu_precision import choose_cpu_precision

    engine = choose_hd_bet_engine(models_dir, "cpu", "fast", tmp_path)
    expected = choose_cpu_precision("hd_bet", models_dir, tmp_path, engine.threads)
    assert isinstance(engine, OpenVinoHdBet) and engine.passes == 1
    assert engine.precision == expected.precision and engine.precision_choice["precision"] == expected.precision
    assert engine.choice_reason.startswith(f"OpenVINO {expected.precision.upper()} on the CPU")


def test_choice_torch_without_the_graph_or_in_accurate_mode(tmp_path: Path) -> None:
    engine = choose_hd_bet_engine(tmp_path, "cpu", "fast")
    assert isinstance(engine, TorchHdBet) and "hd_bet.onnx absent" in engine.choice_reason
    assert choose_hd_bet_engine(None, "cpu", "fast").choice_reason.endswith("no model folder given")
    accurate = choose_hd_bet_engine(tmp_path, "cpu", "accurate")
    assert isinstance(accurate, TorchHdBet) and accurate.passes == 40 and accurate.folds == (0, 1, 2, 3, 4)
    with pytest.raises(ValueError, match="mode"):
        choose_hd_bet_engine(tmp_path, "cpu", "quick")


def test_choice_falls_back_to_torch_when_openvino_cannot_run_the_graph(models_dir: Path, monkeypatch) -> None:
    """An OpenVINO failure (not only its absence) gives PyTorch with the reason, never no engine."""
    from engines.brain import hd_bet_engines

    def broken(*args, **kwargs):
        raise RuntimeError("compile failed on this CPU")

    monkeypatch.setattr(hd_bet_engines, "OpenVinoHdBet", broken)
    engine = choose_hd_bet_engine(models_dir, "cpu", "fast")
    assert isinstance(engine, TorchHdBet) and "RuntimeError: compile failed" in engine.choice_reason
