"""TensorRT engine: FP16 (default) or FP32 plans built from the ONNX files, cached on disk.

Build
-----
For each network, ``<model_dir>/<net>.onnx`` is parsed into an explicit-batch network and
built with one optimisation profile that covers the protocol's batch shapes
(:func:`default_profile`: ``N`` 1..5, ``D`` 9..19, ``H``/``W`` from 16 to
``max_hw`` = 256, optimised for the protocol's own patch of that view). A batch outside the
profile gets its own plan built for exactly that static shape (also cached). In FP16 the
batch-statistics reductions and their ``Sqrt``/``Div``/``Pow`` are pinned to FP32
(``PREFER_PRECISION_CONSTRAINTS``): a mean over ~2e6 voxels per channel must not be
accumulated in half precision.

Cache
-----
Plans are stored by :class:`engines.runtimes.engine_cache.EngineCache` in ``cache_dir`` (default
``$HOLOSCAN_WORKDIR/engine-cache``), keyed by the ONNX file's SHA-256, GPU name, compute
capability, TensorRT version, precision and the shape profile. A stale, corrupt or foreign
file (header mismatch, checksum mismatch, or ``deserialize_cuda_engine`` returning
``None``) is rebuilt and atomically replaced.

Execution
---------
One execution context per plan, run with ``execute_async_v3`` on a dedicated CUDA stream;
device input/output buffers are PyTorch CUDA tensors allocated once per batch shape and the
host staging buffer is pinned. With ``cuda_graphs=True`` the enqueue of each shape is
captured once into a CUDA graph and replayed afterwards.

Construction raises :class:`engines.runtimes.base.EngineUnavailable` with the reason where TensorRT (``import tensorrt``),
a CUDA device or the model folder is missing; ``choose_engine`` then falls back.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engines.model.cascade import protocol_shape
from engines.runtimes.base import GPU_INPLANE_BUCKET, EngineUnavailable, InferenceEngine
from engines.runtimes.engine_cache import CacheKey, EngineCache, default_cache_dir, file_sha256

log = logging.getLogger(__name__)

PRECISIONS = ("fp16", "fp32")
MIN_DEPTH = 9
MIN_HW = 16
#: The 240 x 240 BraTS grid, also in an in-plane bucket of 16 (:data:`~engines.runtimes.base.GPU_INPLANE_BUCKET`:
#: a 180 base patch grown to 240 then runs at 244).
DEFAULT_MAX_HW = 256

Shape = tuple[int, int, int, int, int]


@dataclass(frozen=True)
class ShapeProfile:
    """One TensorRT optimisation profile of the input ``(N, 4, D, H, W)``."""

    min: Shape
    opt: Shape
    max: Shape

    def covers(self, shape: Sequence[int]) -> bool:
        """Whether ``shape`` lies within ``[min, max]`` on every axis."""
        return len(shape) == 5 and all(a <= s <= b for a, s, b in zip(self.min, shape, self.max))

    def text(self, input_name: str = "slabs") -> str:
        """Canonical text (enters the cache key)."""
        f = lambda s: "x".join(str(int(v)) for v in s)  # noqa: E731
        return f"{input_name}:min={f(self.min)},opt={f(self.opt)},max={f(self.max)}"

    @staticmethod
    def static(shape: Sequence[int]) -> ShapeProfile:
        s = tuple(int(v) for v in shape)
        return ShapeProfile(s, s, s)  # type: ignore[arg-type]


def default_profile(network: str, max_hw: int = DEFAULT_MAX_HW) -> ShapeProfile:
    """The profile covering the cascade's batches for ``network``.

    ``N`` 1..5 (opt 5: the protocol always pads to 5), ``D`` 9..19 (opt 19), ``H``/``W``
    16..``max_hw`` (opt: the view's base patch; the WT patch grows with the brain box up
    to the 240 x 240 BraTS grid, 244 in its bucket).
    """
    opt = protocol_shape(network)  # (5, 4, 19, base H, base W)
    n, c, d, oh, ow = opt
    m = max(max_hw, oh, ow)
    return ShapeProfile((1, c, MIN_DEPTH, MIN_HW, MIN_HW), opt, (n, c, d, m, m))


class _Plan:
    """A deserialised engine + its context, stream-bound buffers and CUDA graphs per shape."""

    def __init__(self, engine: Any, trt: Any, torch: Any, stream: Any, cuda_graphs: bool) -> None:
        self.engine = engine
        self.trt = trt
        self.torch = torch
        self.stream = stream
        self.cuda_graphs = cuda_graphs
        self.context = engine.create_execution_context()
        if self.context is None:
            raise RuntimeError("TensorRT could not create an execution context (out of GPU memory?)")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise RuntimeError(f"expected one input and one output tensor, got {inputs} / {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self._buffers: dict[Shape, tuple[Any, Any, Any]] = {}  # shape -> (host pinned, d_in, d_out)
        self._graphs: dict[Shape, Any] = {}
        self._current: Shape | None = None

    def _bind(self, shape: Shape) -> tuple[Any, Any, Any]:
        torch = self.torch
        if shape not in self._buffers:
            n, _, d, h, w = shape
            host = torch.empty(shape, dtype=torch.float32, pin_memory=True)
            d_in = torch.empty(shape, dtype=torch.float32, device="cuda")
            d_out = torch.empty((n, 2, d - 8, h, w), dtype=torch.float32, device="cuda")
            self._buffers[shape] = (host, d_in, d_out)
        host, d_in, d_out = self._buffers[shape]
        if self._current != shape:
            if not self.context.set_input_shape(self.input_name, shape):
                raise RuntimeError(f"TensorRT refused input shape {shape}")
            got = tuple(self.context.get_tensor_shape(self.output_name))
            if got != tuple(d_out.shape):
                raise RuntimeError(f"TensorRT output shape {got} != expected {tuple(d_out.shape)}")
            self.context.set_tensor_address(self.input_name, d_in.data_ptr())
            self.context.set_tensor_address(self.output_name, d_out.data_ptr())
            self._current = shape
        return host, d_in, d_out

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")

    def infer(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        shape: Shape = tuple(int(s) for s in batch.shape)  # type: ignore[assignment]
        host, d_in, d_out = self._bind(shape)
        host.numpy()[...] = batch
        with torch.cuda.stream(self.stream):
            d_in.copy_(host, non_blocking=True)
            graph = self._graphs.get(shape)
            if graph is not None:
                graph.replay()
            else:
                self._enqueue()
                if self.cuda_graphs:
                    # Capture after one ordinary enqueue (TensorRT applies deferred updates there).
                    self.stream.synchronize()
                    g = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(g, stream=self.stream):
                        self._enqueue()
                    self._graphs[shape] = g
            out = d_out.to("cpu", non_blocking=False)
        self.stream.synchronize()
        return out.numpy()


class TensorRTEngine(InferenceEngine):
    """Runs the MSNet ONNX graphs as TensorRT plans on the first CUDA GPU.

    Parameters
    ----------
    model_dir
        Folder written by ``python -m engines.prepare`` (``<net>.onnx``); required.
    weights_dir
        Unused (common factory signature).
    precision
        ``"fp16"`` (default) or ``"fp32"``.
    cache_dir
        Plan cache folder; default :func:`engines.runtimes.engine_cache.default_cache_dir`.
    max_hw
        Largest ``H``/``W`` of the dynamic profile (default 256: the BraTS grid, bucketed).
    cuda_graphs
        Capture each shape's enqueue into a CUDA graph and replay it.
    workspace_gib
        Builder workspace limit.
    """

    name = "tensorrt"
    inplane_bucket = GPU_INPLANE_BUCKET

    def __init__(
        self,
        model_dir: Path | None = None,
        weights_dir: Path | None = None,
        precision: str = "fp16",
        cache_dir: Path | None = None,
        max_hw: int = DEFAULT_MAX_HW,
        cuda_graphs: bool = False,
        workspace_gib: float = 4.0,
        threads: int | None = None,
    ) -> None:
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise EngineUnavailable(f"tensorrt engine: the TensorRT Python package is not installed ({exc})") from exc
        import torch

        if not torch.cuda.is_available():
            raise EngineUnavailable("tensorrt engine: no CUDA device (torch.cuda.is_available() is False)")
        major_minor = tuple(int(p) for p in trt.__version__.split(".")[:2])
        if major_minor < (8, 5):
            raise EngineUnavailable(f"tensorrt engine needs TensorRT >= 8.5 (tensor-name API), found {trt.__version__}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if model_dir is None:
            raise ValueError("the tensorrt engine needs model_dir (run python -m engines.prepare)")
        self.trt = trt
        self.torch = torch
        self.model_dir = Path(model_dir)
        self.precision = precision
        self.max_hw = int(max_hw)
        self.cuda_graphs = bool(cuda_graphs)
        self.workspace_bytes = int(workspace_gib * (1 << 30))
        self.cache = EngineCache(default_cache_dir(cache_dir))
        self.device_index = torch.cuda.current_device()
        self.gpu_name = torch.cuda.get_device_name(self.device_index)
        cc = torch.cuda.get_device_capability(self.device_index)
        self.compute_capability = f"{cc[0]}.{cc[1]}"
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.stream = torch.cuda.Stream()
        self._plans: dict[tuple[str, str], _Plan] = {}
        self._model_sha: dict[str, str] = {}
        self.builds: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------ build
    def _onnx(self, network: str) -> Path:
        path = self.model_dir / f"{network}.onnx"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (run python -m engines.prepare --out {self.model_dir})")
        return path

    def cache_key(self, network: str, profile: ShapeProfile) -> CacheKey:
        """The :class:`CacheKey` of ``network`` built for ``profile`` on this GPU."""
        if network not in self._model_sha:
            self._model_sha[network] = file_sha256(self._onnx(network))
        return CacheKey(
            network=network, model_sha256=self._model_sha[network], gpu_name=self.gpu_name,
            compute_capability=self.compute_capability, trt_version=self.trt.__version__,
            precision=self.precision, shape_profile=profile.text(),
        )

    def _network_flags(self) -> int:
        trt = self.trt
        if int(trt.__version__.split(".")[0]) < 10:
            return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        return 0  # explicit batch is the only mode in TensorRT 10

    def _pin_reductions_fp32(self, network_def: Any) -> int:
        """Keep the batch-statistics arithmetic in FP32 inside an FP16 build; returns the count."""
        trt = self.trt
        pinned = 0
        fp32_unary = {trt.UnaryOperation.SQRT, trt.UnaryOperation.RECIP}
        fp32_elementwise = {trt.ElementWiseOperation.DIV, trt.ElementWiseOperation.POW}
        for i in range(network_def.num_layers):
            layer = network_def.get_layer(i)
            keep = layer.type == trt.LayerType.REDUCE
            if layer.type == trt.LayerType.UNARY:
                layer.__class__ = trt.IUnaryLayer
                keep = layer.op in fp32_unary
            elif layer.type == trt.LayerType.ELEMENTWISE:
                layer.__class__ = trt.IElementWiseLayer
                # x * x (the variance's square) overflows FP16 beyond |x| ~ 256: keep it FP32.
                square = (
                    layer.op == trt.ElementWiseOperation.PROD
                    and layer.get_input(0) is not None
                    and layer.get_input(1) is not None
                    and layer.get_input(0).name == layer.get_input(1).name
                )
                keep = layer.op in fp32_elementwise or square
            if keep:
                layer.precision = trt.float32
                for k in range(layer.num_outputs):
                    layer.set_output_type(k, trt.float32)
                pinned += 1
        return pinned

    def _build(self, network: str, profile: ShapeProfile) -> bytes:
        trt = self.trt
        t0 = time.perf_counter()
        builder = trt.Builder(self.logger)
        network_def = builder.create_network(self._network_flags())
        parser = trt.OnnxParser(network_def, self.logger)
        if not parser.parse_from_file(str(self._onnx(network))):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT could not parse {network}.onnx: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace_bytes)
        # TensorRT enables TF32 for FP32 layers by default on Ampere+; "fp32" means IEEE FP32.
        config.clear_flag(trt.BuilderFlag.TF32)
        if self.precision == "fp16":
            if not builder.platform_has_fast_fp16:
                log.warning("tensorrt: %s reports no fast FP16; building FP16 anyway", self.gpu_name)
            config.set_flag(trt.BuilderFlag.FP16)
            config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
            n = self._pin_reductions_fp32(network_def)
            log.info("tensorrt: %s: %d reduction/normalisation layers pinned to FP32", network, n)
        opt = builder.create_optimization_profile()
        opt.set_shape(network_def.get_input(0).name, profile.min, profile.opt, profile.max)
        config.add_optimization_profile(opt)
        plan = builder.build_serialized_network(network_def, config)
        if plan is None:
            raise RuntimeError(f"TensorRT failed to build {network} ({self.precision}, {profile.text()})")
        log.info("tensorrt: built %s %s %s in %.1f s", network, self.precision, profile.text(), time.perf_counter() - t0)
        return bytes(plan)

    def _deserialize(self, payload: bytes) -> Any:
        return self.runtime.deserialize_cuda_engine(payload)

    def _plan(self, network: str, profile: ShapeProfile) -> _Plan:
        key = (network, profile.text())
        if key not in self._plans:
            ck = self.cache_key(network, profile)
            outcome = self.cache.load_or_build(ck, lambda: self._build(network, profile), self._deserialize)
            self.builds[f"{network} {profile.text()}"] = {
                "cache_file": str(outcome.path), "built": outcome.built, "reason": outcome.reason,
                "seconds": round(outcome.seconds, 2),
                "device_memory_bytes": int(getattr(outcome.engine, "device_memory_size", 0) or 0),
            }
            self._plans[key] = _Plan(outcome.engine, self.trt, self.torch, self.stream, self.cuda_graphs)
        return self._plans[key]

    def prepare(self, networks: Sequence[str]) -> None:
        for n in networks:
            self._plan(n, default_profile(n, self.max_hw))

    # ------------------------------------------------------------------ run
    def run(self, network: str, batch: np.ndarray) -> np.ndarray:
        batch = self.check_batch(batch)
        profile = default_profile(network, self.max_hw)
        if not profile.covers(batch.shape):
            log.info("tensorrt: %s batch %s outside the profile: static plan", network, batch.shape)
            profile = ShapeProfile.static(batch.shape)
        return self._plan(network, profile).infer(batch)

    def describe(self) -> dict[str, Any]:
        torch = self.torch
        return {
            "runtime": "tensorrt",
            "version": self.trt.__version__,
            "device": "cuda",
            "gpu": self.gpu_name,
            "compute_capability": self.compute_capability,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "precision": self.precision,
            "reductions": "fp32 (pinned)" if self.precision == "fp16" else "fp32",
            "cuda_graphs": self.cuda_graphs,
            "cache_dir": str(self.cache.root),
            "plans": dict(self.builds),
        }
