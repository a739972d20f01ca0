"""OpenVINO engine (CPU plugin) on the ONNX files of :mod:`engines.prepare`.

One ``ov.Model`` per network is read from ``<model_dir>/<net>.onnx`` (or converted from the
PyTorch port when the folder has no ONNX file); it is reshaped to each static batch shape
it meets and compiled for the CPU once per ``(network, shape)``. Static shapes let the CPU
plugin pick its blocked / brgemm kernels; the protocol only uses a handful of shapes per
case (WT in-plane patch grows with the brain box), so the per-shape cache stays small and
is bounded (least recently used compiled model is dropped beyond ``max_cached_shapes``).

Precision
---------
``precision="f32"`` (default) keeps every op in float32: logits match PyTorch eager to
~1e-2 absolute on the full WT batch (reduction order of the batch statistics over ~2e6
voxels per channel). ``precision="bf16"`` sets ``INFERENCE_PRECISION_HINT=bf16``: on CPUs
with AVX512-BF16 or AMX the convolutions run in bfloat16 (~1.5-2x faster here, logit
errors up to ~0.4, masks nearly identical; see the benchmark's quality delta before using
it clinically). It is refused on CPUs whose ``OPTIMIZATION_CAPABILITIES`` lack ``BF16``.

Graph
-----
``graph="plain"`` (default) runs ``<net>.onnx``, the direct export of
:class:`engines.model.msnet.MSNet`. ``graph="folded"`` runs the same network in the folded layout
of :mod:`engines.model.msnet_folded` (the slabs of a batch end to end in depth, so the batch
statistics become one fused ``MVN`` per normalisation, and no layout reorders between the
convolutions): ``<net>.folded.onnx`` for batches of 5 slabs (what the cascade feeds), any
other batch size exported in memory from the PyTorch port on first use (~1-3 s). FP32
logits equal the plain graph's to float32 rounding; ~1.3x faster in FP32 and in BF16 on
the 2-core Zen 4 benchmark machine (the ``openvino-folded`` / ``openvino-folded-bf16``
engines).
"""
from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engines.runtimes.base import EngineUnavailable, InferenceEngine
from engines.runtimes.cpu_host import OPENVINO_CPU_CONFIG

log = logging.getLogger(__name__)

PRECISIONS = {"f32": "f32", "fp32": "f32", "bf16": "bf16"}
HINTS = ("LATENCY", "THROUGHPUT")
GRAPHS = ("plain", "folded")


def cpu_supports_bf16() -> bool:
    """Whether OpenVINO's CPU plugin reports native bfloat16 (AVX512-BF16 / AMX) here."""
    import openvino as ov

    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return "BF16" in [str(c).upper() for c in caps]


def spatial_multiple(network: str) -> int:
    """H and W must be multiples of this: 4 for WT/TC networks (two downsamplings), 2 for EN."""
    return 2 if network.startswith("en") else 4


class OpenVinoEngine(InferenceEngine):
    """Runs the MSNet ONNX graphs with OpenVINO on the CPU.

    Parameters
    ----------
    model_dir
        Folder written by ``python -m engines.prepare`` (``<net>.onnx``). When a network's
        ONNX file is missing, the PyTorch port is converted with ``ov.convert_model``
        (weights from ``<net>.pt`` or the ``.npz`` in ``weights_dir``).
    weights_dir
        Folder of the original ``.npz`` weights (only for the conversion fallback).
    threads
        ``INFERENCE_NUM_THREADS``; default: the CPU count.
    precision
        ``"f32"`` (default) or ``"bf16"`` (``INFERENCE_PRECISION_HINT``).
    hint
        ``PERFORMANCE_HINT``: ``"LATENCY"`` (default: one stream, all threads on one
        request, which is how the cascade calls it) or ``"THROUGHPUT"``.
    cache_dir
        Optional OpenVINO ``CACHE_DIR`` (compiled blobs reused across processes).
    max_cached_shapes
        Compiled models kept in memory (LRU over ``(network, shape)``). The cascade runs one
        view at a time with at most two batch shapes (full batches and the last one), so 4
        loses no re-use within a case; each compiled WT model holds ~1-2 GB of activation
        buffers, and 12 cached shapes peaked at 8.9 GB RSS on a whole case.
    graph
        ``"plain"`` (default) or ``"folded"`` (see the module docstring).
    """

    name = "openvino"

    def __init__(
        self,
        model_dir: Path | None = None,
        weights_dir: Path | None = None,
        threads: int | None = None,
        precision: str = "f32",
        hint: str = "LATENCY",
        cache_dir: Path | None = None,
        max_cached_shapes: int = 4,
        graph: str = "plain",
    ) -> None:
        import openvino as ov  # heavy; also the availability check

        if graph not in GRAPHS:
            raise ValueError(f"graph must be one of {GRAPHS}, got {graph!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        if hint.upper() not in HINTS:
            raise ValueError(f"hint must be one of {HINTS}, got {hint!r}")
        self._ov = ov
        self.core = ov.Core()
        if "CPU" not in self.core.available_devices:
            raise EngineUnavailable(f"OpenVINO has no CPU device here ({self.core.available_devices})")
        self.precision = PRECISIONS[precision]
        if self.precision == "bf16" and not cpu_supports_bf16():
            raise EngineUnavailable("precision bf16 requested but this CPU has no native bfloat16 (AVX512-BF16/AMX)")
        self.model_dir = Path(model_dir) if model_dir else None
        self.weights_dir = Path(weights_dir) if weights_dir else None
        self.threads = int(threads or os.cpu_count() or 1)
        self.hint = hint.upper()
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.max_cached_shapes = max(1, int(max_cached_shapes))
        self.graph = graph
        #: ``network`` (plain) or ``(network, N)`` (folded: the graph is specific to N) -> ov.Model
        self._models: dict[Any, Any] = {}
        self._sources: dict[Any, str] = {}
        self._compiled: OrderedDict[tuple[str, tuple[int, ...]], tuple[Any, Any]] = OrderedDict()
        self.compile_seconds: dict[str, float] = {}

    # ------------------------------------------------------------------ loading
    def _read(self, network: str) -> Any:
        onnx_path = self.model_dir / f"{network}.onnx" if self.model_dir else None
        if onnx_path is not None and onnx_path.is_file():
            self._sources[network] = str(onnx_path)
            return self.core.read_model(str(onnx_path))
        import torch

        from engines.runtimes.torch_engine import TorchEngine

        tengine = TorchEngine(model_dir=self.model_dir, weights_dir=self.weights_dir, threads=self.threads)
        net = tengine._load(network)  # noqa: SLF001 - same loading rules as the torch engine
        example = torch.zeros((1, 4, 11, 16, 16), dtype=torch.float32)
        model = self._ov.convert_model(net, example_input=example, input=[(-1, 4, -1, -1, -1)])
        self._sources[network] = "converted from the PyTorch port"
        return model

    def _read_folded(self, network: str, batch: int) -> Any:
        from engines.model.msnet_folded import FOLDED_SUFFIX, export_folded_onnx

        key = (network, batch)
        path = self.model_dir / f"{network}{FOLDED_SUFFIX}" if self.model_dir else None
        if path is not None and path.is_file():
            model = self.core.read_model(str(path))
            dim0 = model.inputs[0].get_partial_shape()[0]
            if dim0.is_static and dim0.get_length() == batch:
                self._sources[key] = str(path)
                return model
        from engines.runtimes.torch_engine import TorchEngine

        tengine = TorchEngine(model_dir=self.model_dir, weights_dir=self.weights_dir, threads=self.threads)
        net = tengine._load(network)  # noqa: SLF001 - same loading rules as the torch engine
        data = export_folded_onnx(net, None, batch)
        self._sources[key] = f"folded graph for N={batch} exported from the PyTorch port"
        return self.core.read_model(data, b"")

    def _model(self, network: str, batch: int) -> Any:
        key: Any = (network, batch) if self.graph == "folded" else network
        if key not in self._models:
            t0 = time.perf_counter()
            self._models[key] = self._read_folded(network, batch) if self.graph == "folded" else self._read(network)
            log.info("openvino engine: read %s from %s (%.2f s)", key, self._sources[key], time.perf_counter() - t0)
        return self._models[key]

    def prepare(self, networks: Sequence[str]) -> None:
        from engines.model.msnet_folded import FOLDED_BATCH

        for n in networks:
            self._model(n, FOLDED_BATCH)

    def _config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "PERFORMANCE_HINT": self.hint,
            "INFERENCE_NUM_THREADS": self.threads,
            "INFERENCE_PRECISION_HINT": self.precision,
            **OPENVINO_CPU_CONFIG,  # denormals flushed (engines.runtimes.cpu_host)
        }
        if self.hint == "LATENCY":
            cfg["NUM_STREAMS"] = 1
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            cfg["CACHE_DIR"] = str(self.cache_dir)
        return cfg

    def _request(self, network: str, shape: tuple[int, ...]) -> tuple[Any, Any]:
        key = (network, shape)
        hit = self._compiled.get(key)
        if hit is not None:
            self._compiled.move_to_end(key)
            return hit
        t0 = time.perf_counter()
        model = self._model(network, shape[0]).clone()
        model.reshape({model.inputs[0].get_any_name(): self._ov.PartialShape(list(shape))})
        compiled = self.core.compile_model(model, "CPU", self._config())
        request = compiled.create_infer_request()
        dt = time.perf_counter() - t0
        self.compile_seconds[f"{network}{list(shape)}"] = dt
        log.info("openvino engine: compiled %s for %s (%s, %d threads) in %.2f s",
                 network, shape, self.precision, self.threads, dt)
        self._compiled[key] = (compiled, request)
        while len(self._compiled) > self.max_cached_shapes:
            self._compiled.popitem(last=False)
        return compiled, request

    # ------------------------------------------------------------------ running
    def run(self, network: str, batch: np.ndarray) -> np.ndarray:
        batch = self.check_batch(batch)
        m = spatial_multiple(network)
        if batch.shape[3] % m or batch.shape[4] % m:
            raise ValueError(f"{network}: H, W must be multiples of {m}, got {batch.shape[3:]}")
        _, request = self._request(network, tuple(int(s) for s in batch.shape))
        request.infer({0: batch})
        out = request.get_output_tensor(0).data
        return np.array(out, dtype=np.float32, copy=True)  # the request's buffer is reused

    def describe(self) -> dict[str, Any]:
        return {
            "runtime": "openvino",
            "version": self._ov.get_version(),
            "device": "cpu",
            "device_name": str(self.core.get_property("CPU", "FULL_DEVICE_NAME")),
            "precision": "bf16" if self.precision == "bf16" else "fp32",
            "threads": self.threads,
            "performance_hint": self.hint,
            "graph": self.graph,
            "shapes": "static, compiled once per (network, batch shape)",
            "compiled_shapes": len(self._compiled),
        }

