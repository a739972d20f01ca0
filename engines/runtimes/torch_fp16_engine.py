"""Half-precision PyTorch engine for CUDA GPUs: the FP16 engine where TensorRT is absent.

What it runs
------------
The MSNet port (:class:`engines.model.msnet.MSNet`, or its folded layout
:class:`engines.model.msnet_folded.FoldedMSNet` with ``graph="folded"``) with every parameter and
activation in ``float16`` (``bfloat16`` on request), activations in the channels-last 3-D
layout (NDHWC in memory, what cuDNN's half-precision tensor-core convolutions want), cuDNN
autotuning on. The batch-statistics normalisation keeps its statistics in FP32
(:class:`engines.model.msnet.BatchStatNorm`): a half-precision square overflows above 256.

Compilation and replay, per (network, batch shape)
--------------------------------------------------
Each network is wrapped by ``torch.compile`` (Inductor, full graph). ``N`` (5) and ``D`` (19)
are static; ``H`` and ``W`` are compiled symbolic (``dynamic_hw=True``, the default), because
the cascade's in-plane patch grows with the brain box: a case meets 7 to 10 shapes, and a
static compile per shape costs tens of seconds each at the first call of every run (a
dynamic-range TensorRT profile makes the same trade). ``dynamic_hw=False`` compiles each shape
statically. The whole call -- FP32 input cast to half and re-laid out, the network, the logits cast back to
FP32 into a fixed output buffer -- is then captured into one CUDA graph per
:class:`RunnerKey` and replayed: one launch per call instead of hundreds. All graphs of one
engine share one memory pool and, per batch shape, one set of input / output buffers
(:class:`ShapeBuffers`; calls are serialised by a lock, so no two graphs run at once). Input
and output cross the bus through pinned host buffers. ``compile=False`` and
``cuda_graphs=False`` switch either part off (ablation; fallbacks when one cannot run).

Ahead of time (``aot=True``, registered as ``torch-cuda-fp16-aot``): instead of ``torch.compile``
in the process, each network -- the same cast, layout, network and cast back -- is an AOTInductor
package built once per device and software stack into the engine cache
(:mod:`engines.runtimes.aot_packages`; ``python -m engines.prepare --gpu``, or the first run) and
only loaded by later processes; CUDA graphs are captured per shape as above.

Devices
-------
Registered as ``torch-cuda-fp16``; construction raises :class:`engines.runtimes.base.EngineUnavailable`
without a CUDA device
(``choose_engine`` then falls back). ``device="cpu"`` is for tests and the benchmark's CPU
quick mode only: no CUDA graphs, ``bfloat16`` where the CPU has native BF16 (AVX512-BF16 /
AMX), else FP32 -- stated by :meth:`describe`, never silently.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engines.model.msnet_folded import FoldedMSNet
from engines.runtimes import aot_packages
from engines.runtimes.base import EngineUnavailable
from engines.runtimes.engine_cache import default_cache_dir
from engines.runtimes.torch_compile_engine import compile_network, mark_hw_dynamic
from engines.runtimes.torch_engine import TorchEngine

log = logging.getLogger(__name__)

PRECISIONS: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
GRAPHS = ("plain", "folded")
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16; Linux flags)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass(frozen=True)
class RunnerKey:
    """What one compiled graph / CUDA graph is specific to.

    Attributes
    ----------
    network
        One of :data:`engines.model.weights.NETWORKS`.
    shape
        Input ``(N, 4, D, H, W)``.
    dtype
        ``"fp16"``, ``"bf16"`` or ``"fp32"``.
    graph
        ``"plain"`` or ``"folded"``.
    """

    network: str
    shape: tuple[int, int, int, int, int]
    dtype: str
    graph: str

    def text(self) -> str:
        """Canonical text, e.g. ``wt32:5x4x19x180x160:fp16:plain`` (logs, ``describe``)."""
        return f"{self.network}:{'x'.join(map(str, self.shape))}:{self.dtype}:{self.graph}"


class ShapeBuffers:
    """The fixed buffers of one batch shape, shared by every network run at that shape.

    Pinned host input / output (on CUDA) and device input / output, all FP32: the CUDA graphs
    of all networks of this shape read ``dev_in`` and write ``dev_out`` (calls are serialised),
    so GPU memory holds one set per shape, not one per (network, shape).
    """

    def __init__(self, shape: tuple[int, ...], device: torch.device) -> None:
        n, _, d, h, w = shape
        out_shape = (n, 2, d - 8, h, w)
        pin = device.type == "cuda"
        self.host_in = torch.empty(shape, dtype=torch.float32, pin_memory=pin)
        self.host_out = torch.empty(out_shape, dtype=torch.float32, pin_memory=pin)
        self.dev_in = torch.zeros(shape, dtype=torch.float32, device=device)
        self.dev_out = torch.empty(out_shape, dtype=torch.float32, device=device)


class _Runner:
    """One (network, shape): its body and, on CUDA, the CUDA graph replaying it.

    ``body`` maps the FP32 device input ``(N, 4, D, H, W)`` to FP32 logits; it is run twice
    (compilation, cuDNN and Triton autotuning happen there), then captured.
    """

    def __init__(self, key: RunnerKey, body: Callable[[torch.Tensor], torch.Tensor], buffers: ShapeBuffers,
                 device: torch.device, cuda_graphs: bool, pool: Any) -> None:
        self.key = key
        self.device = device
        self.body = body
        self.buf = buffers
        self.graph: Any = None
        self.capture_error = ""
        self.capture_s = 0.0
        self.events: tuple[Any, Any] | None = None
        t0 = time.perf_counter()
        b = buffers
        if device.type == "cuda":
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(2):  # compile + autotune, then one call on the tuned kernels
                    b.dev_out.copy_(body(b.dev_in))
            torch.cuda.current_stream(device).wait_stream(side)
            torch.cuda.synchronize(device)
            self.warmup_s = time.perf_counter() - t0
            self.events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            if cuda_graphs:
                t1 = time.perf_counter()
                g = torch.cuda.CUDAGraph()
                try:
                    with torch.cuda.graph(g, pool=pool):
                        b.dev_out.copy_(body(b.dev_in))
                    torch.cuda.synchronize(device)
                    self.graph = g
                except RuntimeError as exc:  # capture refused: run uncaptured, say so
                    self.capture_error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
                    torch.cuda.synchronize(device)
                self.capture_s = time.perf_counter() - t1
        else:
            b.dev_out.copy_(body(b.dev_in))
            self.warmup_s = time.perf_counter() - t0

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, float | None]:
        """Logits for ``batch`` and the device time of the network alone (seconds; None on CPU)."""
        b = self.buf
        # torch's copy_ is multi-threaded (a NumPy assignment is not): ~30 MB per WT batch.
        b.host_in.copy_(torch.from_numpy(batch))
        if self.device.type != "cuda":
            return body_out(self.body(b.host_in)), None
        b.dev_in.copy_(b.host_in, non_blocking=True)
        start, stop = self.events  # type: ignore[misc]
        start.record()
        if self.graph is not None:
            self.graph.replay()
        else:
            b.dev_out.copy_(self.body(b.dev_in))
        stop.record()
        b.host_out.copy_(b.dev_out, non_blocking=True)
        torch.cuda.current_stream(self.device).synchronize()
        out = torch.empty(b.host_out.shape, dtype=torch.float32)
        out.copy_(b.host_out)  # the pinned buffer is reused by the next call
        return out.numpy(), start.elapsed_time(stop) / 1e3


def body_out(y: torch.Tensor) -> np.ndarray:
    """FP32 NumPy copy of a logits tensor."""
    return y.float().contiguous().numpy().copy()


class TorchHalfEngine(TorchEngine):
    """MSNet in half precision on a CUDA GPU: compiled, CUDA-graph replayed, per shape.

    Parameters
    ----------
    model_dir, weights_dir
        As :class:`engines.runtimes.torch_engine.TorchEngine` (FP32 state dicts; cast on load).
    threads
        CPU threads (host-side work only).
    device
        ``"cuda"`` (default; ``RuntimeError`` when there is none) or ``"cpu"`` (tests).
    precision
        ``"fp16"`` (default), ``"bf16"`` or ``"fp32"`` (ablation). On the CPU ``"fp16"``
        becomes ``"bf16"`` where the CPU has native BF16, else ``"fp32"``.
    graph
        ``"plain"`` (:class:`~engines.model.msnet.MSNet`) or ``"folded"``
        (:class:`~engines.model.msnet_folded.FoldedMSNet`, batch normalisation as one instance norm).
    compile
        Wrap each network in ``torch.compile`` (default ``True`` on CUDA, ``False`` on CPU).
    cuda_graphs
        Capture and replay one CUDA graph per (network, shape) (CUDA only).
    channels_last
        Run activations in the channels-last 3-D memory layout (default: on CUDA only; on the
        CPU it is slower).
    dynamic_hw
        Compile ``H`` and ``W`` as symbolic sizes (one compile per network architecture);
        ``False``: one static compile per shape.
    cache_dir
        Engine cache folder (:func:`engines.runtimes.engine_cache.default_cache_dir`); Inductor's
        compiled kernels go to ``<cache_dir>/inductor`` unless ``TORCHINDUCTOR_CACHE_DIR`` is
        set, so that a later run (a new process) loads them instead of compiling again.
    cudnn_benchmark
        cuDNN autotuning (``torch.backends.cudnn.benchmark``, process-wide). Off by default: it
        tries every algorithm of every convolution at each new shape, and the cascade meets a
        new shape with almost every case.
    aot
        Run each network as an AOTInductor package from ``<cache_dir>/aot`` (built there when
        absent or stale) instead of ``torch.compile``; ``compile`` is then ignored.
    """

    name = "torch-cuda-fp16"

    def __init__(
        self,
        model_dir: Path | None = None,
        weights_dir: Path | None = None,
        threads: int | None = None,
        device: str = "cuda",
        precision: str = "fp16",
        graph: str = "plain",
        compile: bool | None = None,
        cuda_graphs: bool = True,
        channels_last: bool | None = None,
        dynamic_hw: bool = True,
        cache_dir: Path | None = None,
        cudnn_benchmark: bool = False,
        aot: bool = False,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        if graph not in GRAPHS:
            raise ValueError(f"graph must be one of {GRAPHS}, got {graph!r}")
        self.notes: list[str] = []
        if device.startswith("cuda"):
            if not torch.cuda.is_available():
                raise EngineUnavailable(f"torch-cuda-fp16: no CUDA device (torch {torch.__version__}, "
                                   f"built with CUDA {torch.version.cuda})")
        elif device == "cpu":
            if precision == "fp16":
                precision = "bf16" if cpu_has_native_bf16() else "fp32"
                self.notes.append(f"CPU: fp16 replaced by {precision} "
                                  f"({'native BF16' if precision == 'bf16' else 'no native half precision'})")
            cuda_graphs = False
        else:
            raise ValueError(f"device must be 'cuda', 'cuda:N' or 'cpu', got {device!r}")
        super().__init__(model_dir=model_dir, weights_dir=weights_dir, threads=threads, device=device)
        self.precision = precision
        self.dtype = PRECISIONS[precision]
        self.graph_kind = graph
        self.aot = bool(aot)
        self.compile = False if self.aot else (self.device.type == "cuda") if compile is None else bool(compile)
        #: Per network: ``"loaded"`` or ``"built"`` and the seconds it took (``aot`` only).
        self.aot_sources: dict[str, dict[str, Any]] = {}
        self._weights_sha256: dict[str, str] = {}
        self.cuda_graphs = bool(cuda_graphs)
        self.channels_last = (self.device.type == "cuda") if channels_last is None else bool(channels_last)
        self.dynamic_hw = dynamic_hw
        self._bodies: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
        self._eager_networks: set[str] = set()  # networks whose compilation failed
        self._runners: dict[RunnerKey, _Runner] = {}
        self._buffers: dict[tuple[int, ...], ShapeBuffers] = {}
        #: Device time of the network alone per call (CUDA events around the replay), seconds.
        self.device_seconds: list[float] = []
        self._lock = threading.Lock()
        self._pool: Any = None
        self.build_seconds: dict[str, float] = {}
        self.compile_cache = ""
        self.cache_dir = default_cache_dir(cache_dir)
        if self.compile:
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(self.cache_dir / "inductor"))
            self.compile_cache = os.environ["TORCHINDUCTOR_CACHE_DIR"]
        self.cudnn_benchmark = bool(cudnn_benchmark)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = self.cudnn_benchmark
            self._pool = torch.cuda.graph_pool_handle()

    # ------------------------------------------------------------------ building
    def key_for(self, network: str, shape: Sequence[int]) -> RunnerKey:
        """The :class:`RunnerKey` of a call (one compiled graph and one CUDA graph each)."""
        s = tuple(int(v) for v in shape)
        if len(s) != 5 or s[1] != 4:
            raise ValueError(f"batch must be (N, 4, D, H, W), got {s}")
        return RunnerKey(network, s, self.precision, self.graph_kind)  # type: ignore[arg-type]

    def aot_key(self, network: str) -> aot_packages.AotKey:
        """The :class:`~engines.runtimes.aot_packages.AotKey` of ``network`` on this engine's
        device, precision, graph and layout (its weights loaded)."""
        if network not in self._nets:
            super().prepare([network])
        if network not in self._weights_sha256:  # the FP32 weights, before any cast to half
            self._weights_sha256[network] = aot_packages.state_sha256(self._nets[network])
        return aot_packages.AotKey(
            network=network, weights_sha256=self._weights_sha256[network], graph=self.graph_kind,
            precision=self.precision, memory_format="channels_last_3d" if self.channels_last else "contiguous",
            torch=torch.__version__, **aot_packages.device_identity(self.device))

    def load_packages(self, networks: Sequence[str]) -> dict[str, dict[str, Any]]:
        """``aot`` only: load, or build and store, each network's package now (``engines.prepare
        --gpu``; otherwise it happens at a network's first call). Returns :attr:`aot_sources`."""
        if not self.aot:
            raise ValueError("load_packages: this engine was not created with aot=True")
        for network in networks:
            self._body(network, compiled=False)
        return {n: self.aot_sources[n] for n in networks}

    def _aot_body(self, network: str) -> Callable[[torch.Tensor], torch.Tensor]:
        """The network's AOTInductor package (loaded, or built and stored)."""
        key = self.aot_key(network)  # hashes the FP32 weights: before they are cast below
        example = torch.zeros((aot_packages.BATCH_SLABS, 4, aot_packages.SLAB_DEPTH, 96, 96), device=self.device)
        compiled, how, seconds = aot_packages.load_or_build(
            lambda: aot_packages.HalfPrecisionNetwork(self._model(network), self.dtype, self._layout()).eval(),
            example, self.cache_dir, key)
        self.aot_sources[network] = {"package": how, "seconds": round(seconds, 3), "key": key.digest()}
        log.info("torch-cuda-fp16: %s AOT package %s in %.2f s", network, how, seconds)

        def body(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return compiled(x)

        return body

    def _layout(self) -> torch.memory_format:
        return torch.channels_last_3d if self.channels_last else torch.contiguous_format

    def _model(self, network: str) -> torch.nn.Module:
        """The network in this engine's precision, graph and memory layout."""
        net = self._nets[network].to(self.dtype).eval()
        model: torch.nn.Module = FoldedMSNet(net).to(self.dtype).eval() if self.graph_kind == "folded" else net
        return model.to(memory_format=self._layout())

    def _body(self, network: str, compiled: bool) -> Callable[[torch.Tensor], torch.Tensor]:
        """FP32 ``(N, 4, D, H, W)`` -> FP32 logits, through the half-precision network."""
        key = f"{network}:{'aot' if self.aot else 'compiled' if compiled else 'eager'}"
        if key in self._bodies:
            return self._bodies[key]
        if self.aot:
            self._bodies[key] = self._aot_body(network)
            return self._bodies[key]
        model = self._model(network)
        layout = self._layout()
        if compiled:
            model = compile_network(model, self.dynamic_hw)  # type: ignore[assignment]
        dtype, dynamic = self.dtype, compiled and self.dynamic_hw

        def body(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                xh = x.to(dtype=dtype, memory_format=layout)
                if dynamic:
                    mark_hw_dynamic(xh)
                return model(xh).float()

        self._bodies[key] = body
        return body

    def _runner(self, network: str, shape: Sequence[int]) -> _Runner:
        key = self.key_for(network, shape)
        runner = self._runners.get(key)
        if runner is None:
            if network not in self._nets:
                super().prepare([network])
            t0 = time.perf_counter()
            compiled = self.compile and network not in self._eager_networks
            buffers = self._buffers.get(key.shape)
            if buffers is None:
                buffers = self._buffers[key.shape] = ShapeBuffers(key.shape, self.device)
            try:
                runner = _Runner(key, self._body(network, compiled), buffers, self.device, self.cuda_graphs, self._pool)
            except Exception as exc:  # noqa: BLE001 - a compiler failure must not stop the run
                if not compiled:
                    raise
                self._eager_networks.add(network)
                self.notes.append(f"{key.text()}: torch.compile failed ({type(exc).__name__}: "
                                  f"{' '.join(str(exc).split())[:200]}); {network} runs uncompiled")
                log.warning("torch-cuda-fp16: %s", self.notes[-1])
                runner = _Runner(key, self._body(network, False), buffers, self.device, self.cuda_graphs, self._pool)
            if runner.capture_error:
                self.notes.append(f"{key.text()}: CUDA graph capture failed ({runner.capture_error}); replayed uncaptured")
                log.warning("torch-cuda-fp16: %s", self.notes[-1])
            self.build_seconds[key.text()] = time.perf_counter() - t0
            log.info("torch-cuda-fp16: built %s in %.1f s (compile=%s, cuda_graphs=%s)", key.text(),
                     self.build_seconds[key.text()], self.compile, runner.graph is not None)
            self._runners[key] = runner
        return runner

    # ------------------------------------------------------------------ interface
    def prepare(self, networks: Sequence[str]) -> None:
        """Load the networks' weights (compilation and capture happen per shape, at first use)."""
        super().prepare(networks)

    def run(self, network: str, batch: np.ndarray) -> np.ndarray:
        batch = self.check_batch(batch)
        with self._lock:
            out, device_s = self._runner(network, batch.shape)(batch)
            if device_s is not None:
                self.device_seconds.append(device_s)
            return out

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "runtime": "torch-cuda-fp16" if self.device.type == "cuda" else "torch-cpu-half",
            "version": torch.__version__,
            "device": str(self.device),
            "precision": self.precision,
            "graph": self.graph_kind,
            "compile": ("AOTInductor packages (engine cache), H, W symbolic" if self.aot else
                        f"torch.compile(inductor, fullgraph), {'H, W symbolic' if self.dynamic_hw else 'static shapes'}"
                        if self.compile else "none (eager)"),
            "cuda_graphs": self.cuda_graphs,
            "memory_format": "channels_last_3d" if self.channels_last else "contiguous",
            "cudnn_benchmark": self.cudnn_benchmark,
            "normalisation_statistics": "fp32",
            "compile_cache": self.compile_cache,
            **({"aot_packages": dict(self.aot_sources)} if self.aot else {}),
            "shapes_built": len(self._runners),
            "build_seconds": dict(self.build_seconds),
            "notes": list(self.notes),
        }
        if self.device.type == "cuda":
            d.update({"gpu": torch.cuda.get_device_name(self.device), "cuda": torch.version.cuda,
                      "cudnn": torch.backends.cudnn.version()})
        else:
            d["threads"] = self.threads
        return d
