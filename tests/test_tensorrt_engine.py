"""TensorRT engine (engines.runtimes.tensorrt_engine).

The profile logic is pure Python and runs everywhere. Everything that builds or runs a
plan is marked ``gpu`` and skips with the reason when ``import tensorrt`` fails or there is
no CUDA device.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from engines.model.weights import NETWORKS
from engines.runtimes import tensorrt_engine as T

MODELS = Path("/nonexistent")


def test_default_profile_covers_every_protocol_batch() -> None:
    from engines.model import cascade as C

    for stage in C.STAGES.values():
        for view, net in stage.networks.items():
            prof = T.default_profile(net)
            h, w = stage.patch_hw[view]
            assert prof.opt == (5, 4, 19, h, w)
            for n in (1, 5):
                assert prof.covers((n, 4, 19, h, w))
            assert prof.covers((5, 4, 19, 240, 240))  # WT patch grown to the whole BraTS grid
            assert prof.covers((5, 4, 19, 244, 240))  # ... and in its in-plane bucket (180 + 4 x 16)
            assert not prof.covers((5, 4, 19, 260, 240))  # -> static plan for that shape
            assert not prof.covers((6, 4, 19, h, w))


def test_default_profile_covers_every_bucketed_patch_of_the_brats_grid() -> None:
    from engines.model import cascade as C
    for stage in C.STAGES.values():
        for view, net in stage.networks.items():
            prof = T.default_profile(net)
            bh, bw = stage.patch_hw[view]
            for size in range(1, 241):
                h = C.inplane_patch(size, bh, bucket=16)
                w = C.inplane_patch(size, bw, bucket=16)
                assert prof.covers((5, 4, 19, h, w)), (net, size, h, w)


def test_profile_text_is_canonical() -> None:
    p = T.default_profile("wt32")
    assert p.text() == "slabs:min=1x4x9x16x16,opt=5x4x19x180x160,max=5x4x19x256x256"
    s = T.ShapeProfile.static((5, 4, 19, 244, 240))
    assert s.min == s.opt == s.max and s.covers((5, 4, 19, 244, 240))


def _skip_reason() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT Python package not installed (import tensorrt fails)"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    return None


def test_construction_without_tensorrt_or_gpu_raises_clearly(tmp_path: Path) -> None:
    reason = _skip_reason()
    if reason is None:
        pytest.skip("TensorRT and a GPU are present: the refusal path cannot be exercised here")
    from engines.runtimes.registry import create_engine

    with pytest.raises(RuntimeError, match="tensorrt engine"):
        create_engine("tensorrt", model_dir=tmp_path)


@pytest.fixture(scope="module")
def trt_models(tmp_path_factory: pytest.TempPathFactory, cascade_weights_dir: Path) -> Path:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    from engines.prepare import prepare

    out = tmp_path_factory.mktemp("trt_models")
    prepare(out, cascade_weights_dir, ["wt32", "en32"])
    return out


def _torch_ref(models: Path, net: str, x: np.ndarray) -> np.ndarray:
    from engines.runtimes.torch_engine import TorchEngine

    return TorchEngine(model_dir=models).run(net, x)


@pytest.mark.gpu
@pytest.mark.parametrize("precision,tol", [("fp32", 2e-3), ("fp16", 0.25)])
def test_tensorrt_matches_torch(trt_models: Path, tmp_path: Path, precision: str, tol: float) -> None:
    """FP32 within 2e-3 (the engine clears TensorRT's default TF32 flag, so only the
    reduction order differs); FP16 logits within 0.25 and masks >= 99.5 % equal."""
    eng = T.TensorRTEngine(model_dir=trt_models, precision=precision, cache_dir=tmp_path / "cache")
    x = np.random.default_rng(0).standard_normal((5, 4, 19, 96, 96), dtype=np.float32)
    for net in ("en32", "wt32"):
        ref = _torch_ref(trt_models, net, x)
        got = eng.run(net, x)
        assert got.shape == ref.shape and got.dtype == np.float32
        assert np.abs(got - ref).max() < tol, (net, precision, float(np.abs(got - ref).max()))
        agree = ((got[:, 1] > got[:, 0]) == (ref[:, 1] > ref[:, 0])).mean()
        assert agree >= 0.995
    d = eng.describe()
    assert d["precision"] == precision and d["plans"]


@pytest.mark.gpu
def test_tensorrt_cache_hit_and_corrupt_rebuild(trt_models: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    e1 = T.TensorRTEngine(model_dir=trt_models, precision="fp16", cache_dir=cache)
    e1.prepare(["en32"])
    (info1,) = e1.builds.values()
    assert info1["built"]
    e2 = T.TensorRTEngine(model_dir=trt_models, precision="fp16", cache_dir=cache)
    e2.prepare(["en32"])
    (info2,) = e2.builds.values()
    assert not info2["built"] and info2["reason"] == "hit"
    Path(info2["cache_file"]).write_bytes(b"garbage")
    e3 = T.TensorRTEngine(model_dir=trt_models, precision="fp16", cache_dir=cache)
    e3.prepare(["en32"])
    (info3,) = e3.builds.values()
    assert info3["built"] and info3["reason"] != "missing"


@pytest.mark.gpu
def test_tensorrt_static_fallback_and_cuda_graphs(trt_models: Path, tmp_path: Path) -> None:
    eng = T.TensorRTEngine(model_dir=trt_models, precision="fp32", cache_dir=tmp_path / "c", cuda_graphs=True,
                           max_hw=96)
    x = np.random.default_rng(1).standard_normal((2, 4, 19, 100, 96), dtype=np.float32)  # 100 > max_hw
    a = eng.run("en32", x)
    b = eng.run("en32", x)  # replayed graph
    np.testing.assert_array_equal(a, b)
    assert any("min=2x4x19x100x96" in k for k in eng.builds)
    assert np.abs(a - _torch_ref(trt_models, "en32", x)).max() < 2e-3


def test_every_network_has_a_profile_around_its_protocol_batch() -> None:
    for net in NETWORKS:
        prof = T.default_profile(net)
        assert prof.opt[:3] == (5, 4, 19) and prof.covers(prof.opt) and prof.covers((1, 4, 9, 16, 16))
    assert T.default_profile("wt32").opt[3:] == (180, 160) and T.default_profile("en32sg").opt[3:] == (96, 96)
