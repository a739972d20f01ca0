"""Networks compiled ahead of time (AOTInductor packages), built once per device and software stack.

A package (``torch._inductor.aoti_compile_and_package``) holds one network's compiled kernels
and weights; a later process loads it (``torch._inductor.aoti_load_package``) instead of
compiling again. It is only valid for what it was built with, so each package is stored under
an :class:`AotKey`: the network and the SHA-256 of its weights, graph layout, precision, memory
format, the device (GPU name and compute capability, NVIDIA driver, CUDA; or the CPU model and
its vector extensions) and the torch version. The input's ``N`` and ``D`` are the protocol's
(5, 19: the cascade always pads its batches to 5 slabs); ``H`` and ``W`` are symbolic,
multiples of 4 from :data:`MIN_HW` to :data:`MAX_HW` (every in-plane patch of the cascade,
bucketed or not).

Files, in ``<cache_dir>/aot/``: ``<network>-<key digest>.pt2`` (the package) and
``<network>-<key digest>.json`` (the key's fields and the package's SHA-256), both written
atomically. A package is loaded only when its sidecar's key equals the wanted key and the
package's SHA-256 matches; otherwise (missing, stale, foreign, truncated) it is built again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from engines.atomic_write import write_bytes_atomically
from engines.runtimes.cpu_host import cpu_identity
from engines.runtimes.engine_cache import file_sha256

log = logging.getLogger(__name__)

FORMAT = "brats-aot-package/1"
#: The symbolic in-plane range of a package: multiples of 4 within [MIN_HW, MAX_HW].
MIN_HW, MAX_HW = 16, 256
#: The protocol's slabs per call and input slices per slab (``engines.model.cascade.config``).
BATCH_SLABS, SLAB_DEPTH = 5, 19

#: A compiled network: FP32 ``(5, 4, 19, H, W)`` in, FP32 logits ``(5, 2, 11, H, W)`` out.
CompiledNetwork = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class AotKey:
    """Everything an AOTInductor package depends on.

    Attributes
    ----------
    network
        Network name (``wt32`` ...).
    weights_sha256
        SHA-256 of the FP32 state dict it was built from (``<model_dir>/<network>.pt``).
    graph, precision, memory_format
        As :class:`engines.runtimes.torch_fp16_engine.TorchHalfEngine`'s (``"plain"``,
        ``"fp16"``, ``"channels_last_3d"`` ...).
    device
        ``"cuda: NVIDIA H200"`` or ``"cpu: <model name>"``.
    device_features
        CUDA: compute capability (``"9.0"``); CPU: the vector extensions Inductor generates
        code for (``"avx2 avx512f ..."``).
    driver
        NVIDIA driver version (``"580.159.03"``; the CUDA driver API version where the kernel
        driver's cannot be read); ``""`` on the CPU.
    cuda
        ``torch.version.cuda`` (``""`` on the CPU).
    torch
        ``torch.__version__``.
    shapes
        Canonical text of the input shapes the package takes.
    """

    network: str
    weights_sha256: str
    graph: str
    precision: str
    memory_format: str
    device: str
    device_features: str
    driver: str
    cuda: str
    torch: str
    shapes: str = f"{BATCH_SLABS}x4x{SLAB_DEPTH}x(4k:{MIN_HW}..{MAX_HW})x(4k:{MIN_HW}..{MAX_HW})"

    def digest(self) -> str:
        """16 hex digits of the SHA-256 of the key's canonical JSON (the file names' suffix)."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


class HalfPrecisionNetwork(torch.nn.Module):
    """FP32 ``(N, 4, D, H, W)`` -> the network in ``dtype`` and ``layout`` -> FP32 logits: what an
    AOT package holds."""

    def __init__(self, net: torch.nn.Module, dtype: torch.dtype, layout: torch.memory_format) -> None:
        super().__init__()
        self.net, self.dtype, self.layout = net, dtype, layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.to(dtype=self.dtype, memory_format=self.layout)).float()


def state_sha256(net: torch.nn.Module) -> str:
    """SHA-256 of a network's state dict (names, dtypes, shapes and bytes, in name order)."""
    h = hashlib.sha256()
    for name, t in sorted(net.state_dict().items()):
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _nvidia_driver() -> str:
    """The NVIDIA kernel driver's version, else the CUDA driver API version, else ``"unknown"``."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
        for word in text.split():
            if word.count(".") >= 1 and word.replace(".", "").isdigit():
                return word
    except OSError:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        return f"cuda-driver-api {torch._C._cuda_getDriverVersion()}"
    except (AttributeError, RuntimeError):
        return "unknown"


def device_identity(device: torch.device) -> dict[str, str]:
    """The device fields of an :class:`AotKey` for ``device``."""
    if device.type == "cuda":
        cap = torch.cuda.get_device_capability(device)
        return {"device": f"cuda: {torch.cuda.get_device_name(device)}", "device_features": f"{cap[0]}.{cap[1]}",
                "driver": _nvidia_driver(), "cuda": str(torch.version.cuda)}
    cpu = cpu_identity()  # the vector extensions Inductor generates code for
    return {"device": f"cpu: {cpu['model']}", "device_features": " ".join(cpu["flags"]), "driver": "", "cuda": ""}


def package_paths(cache_dir: Path, key: AotKey) -> tuple[Path, Path]:
    """``(package, sidecar)`` of ``key`` in ``cache_dir``."""
    stem = cache_dir / "aot" / f"{key.network}-{key.digest()}"
    return stem.with_suffix(".pt2"), stem.with_suffix(".json")


def load_package(cache_dir: Path, key: AotKey) -> CompiledNetwork | None:
    """The compiled network stored under ``key``, or ``None`` when there is none that fits
    (absent, other key, corrupt: logged; the caller builds it)."""
    package, sidecar = package_paths(cache_dir, key)
    if not package.is_file() or not sidecar.is_file():
        return None
    try:
        meta = json.loads(sidecar.read_text())
        if meta.get("format") != FORMAT or meta.get("key") != asdict(key):
            log.warning("aot package %s: built for another key; rebuilding", package.name)
            return None
        if meta.get("package_sha256") != file_sha256(package):
            log.warning("aot package %s: SHA-256 differs from its sidecar (corrupt or replaced); rebuilding", package.name)
            return None
        return torch._inductor.aoti_load_package(str(package))
    except (OSError, ValueError, RuntimeError) as exc:
        log.warning("aot package %s unusable (%s: %s); rebuilding", package.name, type(exc).__name__,
                    " ".join(str(exc).split())[:200])
        return None


def build_package(module: torch.nn.Module, example: torch.Tensor, cache_dir: Path, key: AotKey) -> CompiledNetwork:
    """Export ``module`` (FP32 ``(5, 4, 19, H, W)`` in, ``H`` and ``W`` symbolic), compile it
    with AOTInductor, store it under ``key`` and return it loaded. ``example``: an input on the
    module's device."""
    package, sidecar = package_paths(cache_dir, key)
    package.parent.mkdir(parents=True, exist_ok=True)
    quarter = (MIN_HW // 4, MAX_HW // 4)
    # H and W as multiples of 4 (the patch rule): the networks' strided reductions need it.
    dims = {3: 4 * torch.export.Dim(f"{key.network}_h4", min=quarter[0], max=quarter[1]),
            4: 4 * torch.export.Dim(f"{key.network}_w4", min=quarter[0], max=quarter[1])}
    t0 = time.perf_counter()
    with torch.inference_mode(False), torch.no_grad():
        exported = torch.export.export(module, (example,), dynamic_shapes=(dims,))
    t_export = time.perf_counter() - t0
    fd, tmp = tempfile.mkstemp(dir=package.parent, prefix=f".{package.stem}.", suffix=".pt2")
    os.close(fd)
    try:
        torch._inductor.aoti_compile_and_package(exported, package_path=tmp)
        digest = file_sha256(Path(tmp))
        os.replace(tmp, package)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    meta = {"format": FORMAT, "key": asdict(key), "package_sha256": digest, "package_bytes": package.stat().st_size,
            "export_s": round(t_export, 2), "compile_s": round(time.perf_counter() - t0 - t_export, 2)}
    write_bytes_atomically(sidecar, (json.dumps(meta, indent=1, sort_keys=True) + "\n").encode())
    log.info("aot package %s built (export %.1f s, compile %.1f s, %.1f MB)", package.name, t_export,
             meta["compile_s"], meta["package_bytes"] / 1e6)
    return torch._inductor.aoti_load_package(str(package))


def load_or_build(module_factory: Callable[[], torch.nn.Module], example: torch.Tensor, cache_dir: Path,
                  key: AotKey) -> tuple[CompiledNetwork, str, float]:
    """The package under ``key``, built from ``module_factory()`` when there is none.

    Returns ``(compiled network, "loaded" or "built", seconds)``.
    """
    t0 = time.perf_counter()
    compiled = load_package(cache_dir, key)
    if compiled is not None:
        return compiled, "loaded", time.perf_counter() - t0
    return build_package(module_factory(), example, cache_dir, key), "built", time.perf_counter() - t0


def describe_packages(cache_dir: Path) -> list[dict[str, Any]]:
    """The sidecars of every package in ``cache_dir`` (for ``engines.prepare`` and reports)."""
    folder = cache_dir / "aot"
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
