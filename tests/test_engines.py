"""Every CPU engine against PyTorch eager FP32 on a real, z-scored crop; engine selection.

Input: a ``(1, 4, 19, 64, 64)`` crop (NCDHW) around the tumour of a real BraTS case,
preprocessed exactly as the cascade does (z-score over voxels > 0, noise outside).

Tolerances (absolute, on logits of magnitude ~1-20):

* FP32 engines (onnxruntime, openvino f32, torch-compile): ``2e-3``. Everything is IEEE
  float32; the only difference is summation order in the convolutions and in the
  batch-statistics means over 19 x 64 x 64 = 77,824 voxels per channel, which moves logits
  by ~1e-4 here (~1e-2 on the full 5 x 19 x 180 x 160 WT batch, as measured by the
  benchmark). ``engines.prepare`` uses 1e-3 on a smaller random input.
* bfloat16 (openvino-bf16): bf16 keeps 8 mantissa bits (relative error ~4e-3 per op) over
  ~25 layers, so logits move by up to ~0.5; what matters clinically is the mask, so we
  require >= 99 % of voxels with the same argmax and a max logit error < 1.5.
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

NETS = ("wt32", "tc32", "en32")
FP32_TOL = 2e-3


@pytest.fixture(scope="module")
def models(models_dir: Path) -> Path:
    """The session's model folder (built once for the whole suite)."""
    return models_dir


@pytest.fixture(scope="module")
def real_batch(brats_dir: Path) -> np.ndarray:
    """(1, 4, 19, 64, 64) float32 crop around the tumour of a real case, cascade-preprocessed."""
    import SimpleITK as sitk

    from engines.model import cascade as C

    case = "Brats18_TCIA02_135_1"
    d = brats_dir / case
    vols = np.stack([sitk.GetArrayFromImage(sitk.ReadImage(str(d / f"{case}_{m}.nii.gz")))
                     for m in ("flair", "t1", "t1ce", "t2")])
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(d / f"{case}_seg.nii.gz")))
    pre = C.preprocess(vols, (True,) * 4, seed=0)
    seg = seg[C.box_slices(pre.brain_box)]
    cz, cy, cx = (int(np.mean(ix)) for ix in np.nonzero(seg > 0))
    crop = pre.image[:, cz - 9 : cz + 10, cy - 32 : cy + 32, cx - 32 : cx + 32]
    assert crop.shape == (4, 19, 64, 64)
    return np.ascontiguousarray(crop[None], dtype=np.float32)


@pytest.fixture(scope="module")
def reference(models: Path, real_batch: np.ndarray) -> dict[str, np.ndarray]:
    from engines.runtimes.torch_engine import TorchEngine

    eng = TorchEngine(model_dir=models)
    return {n: eng.run(n, real_batch) for n in NETS}


def _create(name: str, models: Path, **opts: Any) -> Any:
    """The engine, or a skip with the reason when its runtime cannot run here. Any other
    exception (a constructor bug) fails the test."""
    from engines.runtimes.base import EngineUnavailable
    from engines.runtimes.registry import create_engine

    try:
        return create_engine(name, model_dir=models, **opts)
    except EngineUnavailable as exc:
        pytest.skip(f"engine {name} {opts or ''} unavailable here: {exc}")


def _mask_agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a[:, 1] > a[:, 0]) == (b[:, 1] > b[:, 0])).mean())


CPU_FP32_ENGINES = [
    pytest.param("onnxruntime", {}, id="onnxruntime"),
    pytest.param("openvino", {"precision": "f32"}, id="openvino-f32"),
    pytest.param("openvino", {"precision": "f32", "hint": "THROUGHPUT"}, id="openvino-f32-throughput"),
    pytest.param("openvino-folded", {}, id="openvino-folded-f32"),
    pytest.param("torch-compile", {"device": "cpu"}, id="torch-compile",
                 marks=pytest.mark.slow),  # slow: Inductor compile warm-up is 1-3 min per network on 2 cores
]


@pytest.mark.parametrize("name,opts", CPU_FP32_ENGINES)
def test_cpu_engine_matches_torch_fp32(name: str, opts: dict[str, Any], models: Path, real_batch: np.ndarray,
                                       reference: dict[str, np.ndarray]) -> None:
    eng = _create(name, models, **opts)
    nets = ("en32",) if name == "torch-compile" else NETS
    for net in nets:
        got = eng.run(net, real_batch)
        ref = reference[net]
        assert got.shape == ref.shape == (1, 2, 11, 64, 64) and got.dtype == np.float32
        err = float(np.abs(got - ref).max())
        assert err < FP32_TOL, f"{name} {net}: max|d| {err:.2e}"
        assert _mask_agreement(got, ref) > 0.9999
    d = eng.describe()
    assert d["precision"] == "fp32" and d["runtime"]


def test_openvino_bf16_masks_match(models: Path, real_batch: np.ndarray, reference: dict[str, np.ndarray]) -> None:
    _assert_bf16_masks_agree(_create("openvino", models, precision="bf16"), real_batch, reference)


def _assert_bf16_masks_agree(eng, x: np.ndarray, reference: dict[str, np.ndarray]) -> None:
    """BF16 logits: masks agree with FP32 on >= 99 % of voxels, logits within 1.5."""
    for net in NETS:
        got = eng.run(net, x)
        err = float(np.abs(got - reference[net]).max())
        agree = _mask_agreement(got, reference[net])
        logging.getLogger(__name__).info("%s bf16 %s: max|d| %.3f, mask agreement %.5f", eng.registry_name, net, err, agree)
        assert agree >= 0.99 and err < 1.5, (net, err, agree)
    assert eng.describe()["precision"] == "bf16"


def _real_batch5(real_batch: np.ndarray) -> np.ndarray:
    """(5, 4, 19, 32, 32): five different real 32 x 32 crops of the real batch (the folded
    graph is traced for 5 slabs, the protocol's batch size)."""
    x = real_batch[0]
    crops = [x[:, :, i : i + 32, j : j + 32] for i, j in ((0, 0), (0, 32), (32, 0), (32, 32), (16, 16))]
    return np.ascontiguousarray(np.stack(crops), dtype=np.float32)


@pytest.mark.parametrize("n", [1, 3, 5])
def test_folded_msnet_equals_msnet(models: Path, real_batch: np.ndarray, n: int) -> None:
    """The folded layout is an exact rewrite: both tracing modes, any batch size, all kinds."""
    import torch

    from engines.model.msnet_folded import FoldedMSNet
    from engines.runtimes.torch_engine import TorchEngine

    x = torch.from_numpy(_real_batch5(real_batch)[:n])
    eng = TorchEngine(model_dir=models)
    for net in NETS:
        m = eng._load(net)  # noqa: SLF001
        with torch.inference_mode():
            ref = m(x)
            for static in (False, True):
                got = FoldedMSNet(m, static_slabs=static)(x)
                assert got.shape == ref.shape
                err = float((got - ref).abs().max())
                assert err < 1e-3, (net, n, static, err)


def test_openvino_folded_batch5_matches_torch(models: Path, real_batch: np.ndarray) -> None:
    """Folded graph from ``<net>.folded.onnx`` (N = 5), FP32 and BF16, against torch eager."""
    from engines.runtimes.torch_engine import TorchEngine

    x = _real_batch5(real_batch)
    ref = {n: TorchEngine(model_dir=models).run(n, x) for n in NETS}
    eng = _create("openvino-folded", models)
    for net in NETS:
        got = eng.run(net, x)
        assert got.shape == ref[net].shape == (5, 2, 11, 32, 32)
        assert float(np.abs(got - ref[net]).max()) < FP32_TOL
    assert all(str(src).endswith(".folded.onnx") for src in eng._sources.values())  # noqa: SLF001
    d = eng.describe()
    assert d["graph"] == "folded" and d["precision"] == "fp32"
    bf = _create("openvino-folded-bf16", models)
    assert bf.describe()["graph"] == "folded"
    _assert_bf16_masks_agree(bf, x, ref)


def test_openvino_folded_exports_other_batch_sizes(tmp_path: Path, models: Path, real_batch: np.ndarray,
                                                   reference: dict[str, np.ndarray]) -> None:
    """N != 5 (and no folded file at all): the folded graph is exported from the .pt on use."""
    import shutil

    only_pt = tmp_path / "pt_only"
    only_pt.mkdir()
    shutil.copy(models / "en32.pt", only_pt / "en32.pt")
    eng = _create("openvino-folded", only_pt)
    got = eng.run("en32", real_batch)  # N = 1
    assert np.abs(got - reference["en32"]).max() < FP32_TOL
    assert "exported" in eng._sources[("en32", 1)]  # noqa: SLF001


def test_openvino_shape_cache_and_contract(models: Path) -> None:
    eng = _create("openvino", models, max_cached_shapes=2)
    rng = np.random.default_rng(0)
    for shape in [(2, 4, 9, 16, 16), (1, 4, 11, 16, 20), (2, 4, 9, 16, 16), (1, 4, 9, 8, 8)]:
        y = eng.run("en32", rng.standard_normal(shape, dtype=np.float32))
        assert y.shape == (shape[0], 2, shape[2] - 8, *shape[3:])
    assert eng.describe()["compiled_shapes"] == 2  # LRU bound
    with pytest.raises(ValueError, match="multiples of 4"):
        eng.run("wt32", np.zeros((1, 4, 9, 18, 16), dtype=np.float32))
    with pytest.raises(ValueError):
        eng.run("wt32", np.zeros((1, 3, 9, 16, 16), dtype=np.float32))


def test_openvino_converts_torch_when_no_onnx(tmp_path: Path, models: Path, reference: dict[str, np.ndarray],
                                              real_batch: np.ndarray) -> None:
    import shutil

    only_pt = tmp_path / "pt_only"
    only_pt.mkdir()
    shutil.copy(models / "en32.pt", only_pt / "en32.pt")
    eng = _create("openvino", only_pt)
    got = eng.run("en32", real_batch)
    assert np.abs(got - reference["en32"]).max() < FP32_TOL


def test_registry_lists_new_engines() -> None:
    from engines.runtimes.registry import ENGINE_PREFERENCE, available_engines

    for n in ("openvino", "openvino-folded", "openvino-folded-bf16", "torch-compile", "tensorrt", "torch-cuda",
              "onnxruntime-cuda"):
        assert n in available_engines()
    assert set(ENGINE_PREFERENCE) <= set(available_engines())
    assert ENGINE_PREFERENCE.index("openvino") < ENGINE_PREFERENCE.index("onnxruntime")
    # BF16 first on CPUs that have it, its FP32 twin next (the BF16 engine refuses elsewhere).
    assert ENGINE_PREFERENCE.index("openvino-folded-bf16") + 1 == ENGINE_PREFERENCE.index("openvino-folded")


def _gpu_stack_present() -> bool:
    import torch

    return torch.cuda.is_available() and importlib.util.find_spec("tensorrt") is not None


def test_auto_selection_falls_back_with_notes(models: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Without a GPU, ``auto`` skips tensorrt / onnxruntime-cuda / torch-cuda, each with a note."""
    if _gpu_stack_present():
        pytest.skip("a GPU and TensorRT are present: the preferred engine is creatable here")
    from engines.runtimes.registry import choose_engine

    with caplog.at_level(logging.WARNING):
        engine, notes = choose_engine("auto", models)
    assert engine.name == "openvino"
    assert any(n.startswith("engine tensorrt unavailable") for n in notes), notes
    assert any("torch-cuda" in n for n in notes)
    assert any("falling back" in r.getMessage() for r in caplog.records)


def test_cuda_variants_refuse_without_cuda(models: Path) -> None:
    import torch

    from engines.runtimes.registry import create_engine

    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA"):
            create_engine("torch-cuda", model_dir=models)
        with pytest.raises(RuntimeError, match="tensorrt engine"):
            create_engine("tensorrt", model_dir=models)
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(RuntimeError, match="CUDAExecutionProvider"):
            create_engine("onnxruntime-cuda", model_dir=models)


def test_created_engines_carry_their_registry_name(models_dir: Path) -> None:
    """Reports name the engine so it can be created again (several share a runtime name)."""
    from engines.runtimes.registry import create_engine

    ort = create_engine("ort", model_dir=models_dir)  # alias
    folded = create_engine("openvino-folded", model_dir=models_dir)
    assert (ort.name, ort.registry_name) == ("onnxruntime", "onnxruntime")
    assert (folded.name, folded.registry_name) == ("openvino", "openvino-folded")


def test_gpu_engines_ask_for_the_gpu_bucket_and_cpu_engines_for_none(models_dir: Path) -> None:
    """The CPU engines get exact patches (their cost grows with the patch; CPU results unchanged);
    the engines that build per shape on a GPU ask for :data:`GPU_INPLANE_BUCKET` (off, as measured)."""
    from engines.runtimes.base import GPU_INPLANE_BUCKET
    from engines.runtimes.cuda_engines import OnnxRuntimeCudaEngine
    from engines.runtimes.registry import create_engine
    from engines.runtimes.tensorrt_engine import TensorRTEngine
    from engines.runtimes.torch_engine import TorchEngine

    for name in ("torch", "onnxruntime", "openvino", "openvino-folded"):
        assert create_engine(name, model_dir=models_dir).inplane_bucket is None, name
    assert TorchEngine(model_dir=models_dir, device="cuda").inplane_bucket == GPU_INPLANE_BUCKET  # built, not run
    assert OnnxRuntimeCudaEngine.inplane_bucket == TensorRTEngine.inplane_bucket == GPU_INPLANE_BUCKET
    assert GPU_INPLANE_BUCKET is None  # benchmarks/results/shape_buckets: 16 moves TC Dice by 0.002 on 2 of 8 cases


def test_missing_runtime_is_unavailable_but_a_bug_is_not(monkeypatch: pytest.MonkeyPatch) -> None:
    """A runtime library that is not installed makes the engine unavailable (skip, fall back);
    a missing module of our own is a bug and propagates as such."""
    from engines.runtimes import registry
    from engines.runtimes.base import EngineUnavailable

    monkeypatch.setitem(registry._REGISTRY, "absent-runtime", ("no_such_runtime_lib:Engine", {}))
    with pytest.raises(EngineUnavailable, match="no_such_runtime_lib"):
        registry.create_engine("absent-runtime")
    monkeypatch.setitem(registry._REGISTRY, "broken-engine", ("engines.no_such_module:Engine", {}))
    with pytest.raises(ModuleNotFoundError) as info:
        registry.create_engine("broken-engine")
    assert not isinstance(info.value, EngineUnavailable)


def test_unavailable_engine_falls_back_to_auto_with_a_note(models_dir: Path) -> None:
    from engines.runtimes.registry import choose_engine

    engine, notes = choose_engine("tensorrt", models_dir)
    assert engine is not None
    assert notes and "tensorrt" in notes[0] and "fell back" in notes[0], notes


def test_engine_fallback_logs_hold_no_exception_objects(models_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A log record that keeps an exception keeps its traceback and with it every calling
    frame (the study's volumes): in a process that handles many studies under a handler that
    retains records (pytest's, a memory handler) that was ~0.8 GB per study (soak test)."""
    import logging as logging_

    from engines.runtimes.registry import choose_engine

    with caplog.at_level(logging_.WARNING):
        # An engine that exists nowhere: the requested-engine fallback logs on every machine
        # (and auto's failed candidates where there is no GPU).
        choose_engine("no-such-engine", models_dir)
    fallbacks = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert fallbacks, [r.getMessage() for r in caplog.records]
    for record in caplog.records:
        args = record.args if isinstance(record.args, tuple) else (record.args,)
        assert not any(isinstance(a, BaseException) for a in args), record.getMessage()
        assert record.exc_info is None, record.getMessage()
