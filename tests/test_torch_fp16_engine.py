"""The FP16 engine (``torch-cuda-fp16``): what can be checked without a GPU.

Its speed and GPU memory are measured by ``bash benchmarks/gpu_check.sh`` on a GPU machine
(results in ``benchmarks/results/``); here: half-precision arithmetic on the CPU (bfloat16),
the per-shape runner keys and shared buffers, the compile fallback, the Inductor cache folder,
and where the engine stands in the app's ``auto`` choice, with the reason reported.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    """A small z-scored-like batch ``(5, 4, 19, 32, 40)`` (NCDHW), as the cascade feeds."""
    return np.random.default_rng(7).standard_normal((5, 4, 19, 32, 40), dtype=np.float32)


def _engine(weights: Path, **opts: Any) -> Any:
    from engines.runtimes.torch_fp16_engine import TorchHalfEngine

    return TorchHalfEngine(weights_dir=weights, device="cpu", **opts)


def test_runner_keys_are_per_network_and_shape(cascade_weights_dir: Path) -> None:
    eng = _engine(cascade_weights_dir, precision="fp32")
    a = eng.key_for("wt32", (5, 4, 19, 180, 160))
    assert a == eng.key_for("wt32", [5, 4, 19, 180, 160])
    assert a != eng.key_for("wt32", (5, 4, 19, 160, 180))
    assert a != eng.key_for("wt32sg", (5, 4, 19, 180, 160))
    assert a.text() == "wt32:5x4x19x180x160:fp32:plain"
    with pytest.raises(ValueError, match=r"\(N, 4, D, H, W\)"):
        eng.key_for("wt32", (5, 3, 19, 180, 160))


def test_half_statistics_stay_finite_where_a_half_square_overflows() -> None:
    """Activations of ~1000: their squares (1e6) do not fit in FP16 (max 65504)."""
    from engines.model.msnet import BatchStatNorm

    norm = BatchStatNorm(3)
    with torch.no_grad():
        norm.gamma.copy_(torch.tensor([1.0, 2.0, 0.5]))
        norm.beta.copy_(torch.tensor([0.0, 1.0, -1.0]))
    x = 1000.0 + 300.0 * torch.randn(2, 3, 5, 8, 8, generator=torch.Generator().manual_seed(0))
    naive = (x.half() - x.half().mean()).square()
    assert torch.isinf(naive).any()  # the trap the half path avoids
    ref = norm(x)
    got = norm(x.half())
    assert got.dtype == torch.float16
    assert torch.isfinite(got).all()
    assert torch.allclose(got.float(), ref, atol=2e-2, rtol=1e-2)


@pytest.mark.slow  # BF16 is emulated, not computed, on CPUs without AVX512-BF16 / AMX: about a minute there
def test_bf16_on_cpu_keeps_the_masks(cascade_weights_dir: Path, batch: np.ndarray) -> None:
    """Half precision (BF16 here, 8 mantissa bits) moves logits by < 1.5 and keeps >= 99 % of
    the argmax (the OpenVINO BF16 engine's bar, tests/test_engines.py)."""
    from engines.runtimes.torch_engine import TorchEngine

    ref = TorchEngine(weights_dir=cascade_weights_dir).run("wt32", batch)
    eng = _engine(cascade_weights_dir, precision="bf16")
    for graph in ("plain", "folded"):
        eng.graph_kind = graph
        eng._bodies.clear()
        eng._runners.clear()
        got = eng.run("wt32", batch)
        assert got.dtype == np.float32 and got.shape == (5, 2, 11, 32, 40)
        assert np.abs(got - ref).max() < 1.5, graph
        assert ((got[:, 1] > got[:, 0]) == (ref[:, 1] > ref[:, 0])).mean() >= 0.99, graph
    assert eng.describe()["precision"] == "bf16"


def test_cpu_fp16_request_is_stated(cascade_weights_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import engines.runtimes.torch_fp16_engine as m

    monkeypatch.setattr(m, "cpu_has_native_bf16", lambda: False)
    eng = _engine(cascade_weights_dir)
    assert eng.precision == "fp32" and "no native half precision" in eng.describe()["notes"][0]
    monkeypatch.setattr(m, "cpu_has_native_bf16", lambda: True)
    assert _engine(cascade_weights_dir).precision == "bf16"


def test_buffers_are_shared_per_shape(cascade_weights_dir: Path, batch: np.ndarray) -> None:
    eng = _engine(cascade_weights_dir, precision="fp32")
    eng.run("wt32", batch)
    eng.run("tc32", batch)
    assert len(eng._runners) == 2 and len(eng._buffers) == 1
    other = np.ascontiguousarray(batch[:, :, :, :, :32])
    out = eng.run("wt32", other)
    assert out.shape == (5, 2, 11, 32, 32)
    assert len(eng._runners) == 3 and len(eng._buffers) == 2
    # A later call must not change an earlier result (outputs are copies, not the buffers).
    first = eng.run("wt32", batch)
    eng.run("tc32", batch)
    assert np.array_equal(first, eng.run("wt32", batch))


def test_compile_failure_falls_back_to_eager(cascade_weights_dir: Path, batch: np.ndarray,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import engines.runtimes.torch_fp16_engine as m

    def broken_compile(model: Any, dynamic_hw: bool) -> Any:
        def run(x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("inductor: simulated codegen failure")

        return run

    monkeypatch.setattr(m, "compile_network", broken_compile)
    eng = _engine(cascade_weights_dir, precision="fp32", compile=True)
    got = eng.run("en32", batch)
    plain = _engine(cascade_weights_dir, precision="fp32", compile=False).run("en32", batch)
    assert np.array_equal(got, plain)
    notes = eng.describe()["notes"]
    assert any("torch.compile failed" in n and "simulated codegen failure" in n for n in notes), notes
    assert "en32" in eng._eager_networks


def test_inductor_cache_goes_to_the_engine_cache(cascade_weights_dir: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "placeholder")  # restored after the test
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    eng = _engine(cascade_weights_dir, precision="fp32", compile=True, cache_dir=tmp_path)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor")
    assert eng.describe()["compile_cache"] == str(tmp_path / "inductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/set/by/operator")
    assert _engine(cascade_weights_dir, compile=True, cache_dir=tmp_path).compile_cache == "/set/by/operator"


def test_refuses_without_cuda(cascade_weights_dir: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the engine is creatable here")
    from engines.runtimes.registry import create_engine

    with pytest.raises(RuntimeError, match="no CUDA device"):
        create_engine("torch-cuda-fp16", weights_dir=cascade_weights_dir)


def test_auto_prefers_tensorrt_then_the_fp16_engine() -> None:
    from engines.runtimes.registry import ENGINE_PREFERENCE

    order = [ENGINE_PREFERENCE.index(n) for n in ("tensorrt", "torch-cuda-fp16", "onnxruntime-cuda", "torch-cuda")]
    assert order == sorted(order)
    assert ENGINE_PREFERENCE.index("torch-cuda") < ENGINE_PREFERENCE.index("openvino-folded-bf16")


class _Unavailable:
    def __init__(self, **_: Any) -> None:
        raise RuntimeError("no TensorRT on this machine")


class _StubHalfEngine:
    name = "torch-cuda-fp16"
    registry_name = ""
    choice_reason = ""

    def __init__(self, **_: Any) -> None:
        pass


def test_auto_choice_and_reason_on_a_gpu_without_tensorrt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As on the GPU machines: TensorRT cannot be imported, the FP16 engine can."""
    import sys
    import types

    from engines.runtimes import registry
    from engines.runtimes.registry import choose_engine

    fake = types.ModuleType("fake_engines")
    fake.Unavailable, fake.StubHalfEngine = _Unavailable, _StubHalfEngine  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_engines", fake)
    monkeypatch.setitem(registry._REGISTRY, "tensorrt", ("fake_engines:Unavailable", {}))
    monkeypatch.setitem(registry._REGISTRY, "torch-cuda-fp16", ("fake_engines:StubHalfEngine", {}))
    engine, notes = choose_engine("auto", tmp_path)
    assert isinstance(engine, _StubHalfEngine) and engine.registry_name == "torch-cuda-fp16"
    assert engine.choice_reason.startswith("auto: first engine of the preference order that runs here")
    assert "passed over tensorrt (RuntimeError: no TensorRT on this machine)" in engine.choice_reason
    assert any(n.startswith("engine tensorrt unavailable") for n in notes)

    explicit, _ = choose_engine("torch-cuda-fp16", tmp_path)
    assert explicit.choice_reason == "requested by the settings (engine: torch-cuda-fp16)"


@pytest.mark.slow
def test_symbolic_hw_compile_serves_every_shape_without_recompiling(cascade_weights_dir: Path) -> None:
    """Slow (Inductor's C++ compile of one network: ~40 s on 2 cores). One compile with ``H``,
    ``W`` symbolic serves the cascade's growing in-plane patches, with eager's logits."""
    from torch._dynamo.utils import counters

    from engines.model.weights import load_network
    from engines.runtimes.torch_compile_engine import compile_network, mark_hw_dynamic

    net = load_network("en32", cascade_weights_dir)
    compiled = compile_network(net, dynamic_hw=True)
    counters.clear()
    with torch.inference_mode():
        for h, w in ((32, 32), (48, 40), (40, 56)):
            x = torch.randn(5, 4, 19, h, w, generator=torch.Generator().manual_seed(h + w))
            mark_hw_dynamic(x)
            assert torch.allclose(compiled(x), net(x), atol=2e-3)
    assert counters["stats"]["unique_graphs"] == 1
