"""What the engine benchmarks measure with (``benchmarks.run`` and ``benchmarks.gpu_check``): the
reference batch and each network's protocol batch, the four-sequence scenarios, the model-only
latency of one network, a case cropped around its tumour, and the host's hardware and runtime
versions.

NumPy and the engine package's model definitions only (no DICOM stack): the GPU check imports it
on a machine without SimpleITK or pydicom.
"""
from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.reporting import percentiles
from engines.model.cascade import protocol_shape
from engines.model.weights import NETWORKS

__all__ = [
    "PROTOCOL_SHAPES",
    "REFERENCE_SHAPE",
    "REGIONS",
    "SCENARIOS",
    "crop_to_tumour",
    "hardware_facts",
    "reference_batch",
    "runtime_versions",
    "time_network",
]

#: Sequences present (FLAIR, T1, T1ce, T2) in each scenario a case is run under.
SCENARIOS: dict[str, tuple[bool, bool, bool, bool]] = {
    "all": (True, True, True, True),
    "FLAIR+T1ce+T2": (True, False, True, True),
    "T1ce+T2": (False, False, True, True),
    "T2": (False, False, False, True),
}
REFERENCE_SHAPE = (5, 4, 19, 144, 144)  # issue 9's WT reference batch (NCDHW)
#: Protocol batch per network (engines.model.cascade: batch 5, 19 slices, base in-plane patch).
PROTOCOL_SHAPES: dict[str, tuple[int, int, int, int, int]] = {n: protocol_shape(n) for n in NETWORKS}
#: The BraTS regions the quality tables report, in their order.
REGIONS = ("WT", "TC", "ET")


def time_network(engine: Any, network: str, shape: Sequence[int], warmup: int, runs: int) -> dict[str, Any]:
    """Model-only latency of ``engine.run(network, batch)`` on :func:`reference_batch` ``(shape)``.

    ``warmup`` untimed-for-the-statistics runs first (their times are kept in ``warmup_s``),
    then ``runs`` timed runs (wall clock, seconds) summarised by :func:`benchmarks.reporting.percentiles`.
    """
    x = reference_batch(tuple(shape))
    warm, samples = [], []
    for times, count in ((warm, warmup), (samples, runs)):
        for _ in range(count):
            t = time.perf_counter()
            engine.run(network, x)
            times.append(time.perf_counter() - t)
    return {"network": network, "shape": list(shape), "warmup_s": warm, "samples_s": samples, **percentiles(samples)}


def reference_batch(shape: Sequence[int], seed: int = 0) -> np.ndarray:
    """Deterministic z-scored-like input (N(0, 1)) of ``shape``, float32."""
    return np.random.default_rng([seed, *shape]).standard_normal(tuple(shape), dtype=np.float32)


def hardware_facts() -> dict[str, Any]:
    """CPU model, cores, memory; GPU / driver / CUDA / cuDNN when present."""
    facts: dict[str, Any] = {"platform": platform.platform(), "machine": platform.machine(),
                             "cpu_count": os.cpu_count(), "python": platform.python_version()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                facts["cpu_model"] = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                facts["cpu_isa"] = sorted(f for f in flags if f.startswith(("avx512", "amx", "avx2", "fma")))
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                facts["memory_gib"] = round(int(line.split()[1]) / 2**20, 1)
        facts["load_average_at_start"] = os.getloadavg()
    except OSError:
        pass
    try:
        import torch

        facts["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            facts["gpu"] = torch.cuda.get_device_name(0)
            facts["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
            facts["cuda"] = torch.version.cuda
            facts["cudnn"] = torch.backends.cudnn.version()
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                     capture_output=True, text=True, timeout=20)
                facts["driver"] = out.stdout.strip()
            except (OSError, subprocess.SubprocessError):
                facts["driver"] = "unknown (nvidia-smi not runnable)"
    except ImportError:
        facts["cuda_available"] = False
    return facts


def runtime_versions() -> dict[str, str]:
    """Installed versions of the runtimes (``absent`` when not importable)."""
    import importlib.metadata as md

    out = {}
    for pkg in ("torch", "onnx", "onnxruntime", "onnxruntime-gpu", "openvino", "tensorrt", "monai", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def crop_to_tumour(vols: np.ndarray, seg: np.ndarray, size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Crop ``(4, Z, Y, X)`` volumes and the seg to ``size`` voxels centred on the tumour (``--crop``)."""
    centre = [int(np.mean(ix)) for ix in np.nonzero(seg > 0)] if seg.any() else [n // 2 for n in seg.shape]
    sl = []
    for c, s, n in zip(centre, size, seg.shape):
        s = min(int(s), n)
        a = min(max(c - s // 2, 0), n - s)
        sl.append(slice(a, a + s))
    return np.ascontiguousarray(vols[(slice(None), *sl)]), np.ascontiguousarray(seg[tuple(sl)])
