"""FP32 or BF16 on this CPU: chosen by a measurement on this CPU, cached, never assumed.

Native bfloat16 (AVX512-BF16, AMX) is necessary for BF16 to help, not sufficient: a core
with AVX512-BF16 but no AMX may compute a 3-D convolution in BF16 no faster than in FP32
(the conversions cost what the narrower multiply saves), while another core of the same
flags gains 1.5-2x. So the choice is measured: one network of each role, compiled by
OpenVINO in both precisions at a small fixed shape, the median of a few runs each. BF16 is
chosen only when it is faster by :data:`MIN_GAIN` (it costs accuracy: the benchmark's
quality delta), else FP32.

The result is cached per CPU signature (:func:`engines.runtimes.cpu_host.cpu_identity`),
OpenVINO version and thread count in ``<cache_dir>/cpu-precision.json`` (written atomically;
a corrupt or foreign file is measured again), so a process pays the measurement (a few
seconds) once per machine. ``python -m engines.prepare`` measures into the model folder,
which is read first when it matches the CPU.

Roles: ``"cascade"`` (``wt32``'s folded graph, the cascade's most-run network) and
``"hd_bet"`` (HD-BET's graph), each a :data:`PROBES` entry.
"""
from __future__ import annotations

import json
import logging
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engines.atomic_write import write_bytes_atomically
from engines.runtimes.cpu_host import OPENVINO_CPU_CONFIG, cpu_identity

log = logging.getLogger(__name__)

__all__ = ["CACHE_FILE", "MIN_GAIN", "PROBES", "PrecisionChoice", "choose_cpu_precision"]

CACHE_FILE = "cpu-precision.json"
#: BF16 is taken only when its time is below ``(1 - MIN_GAIN)`` x FP32's.
MIN_GAIN = 0.10
#: role -> (ONNX file in the model folder, probe input shape).
PROBES: dict[str, tuple[str, tuple[int, ...]]] = {
    "cascade": ("wt32.folded.onnx", (5, 4, 19, 48, 48)),
    "hd_bet": ("hd_bet.onnx", (1, 1, 32, 64, 64)),
}
_REPEATS = 3


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision one role's networks run in on this CPU, and why.

    Attributes
    ----------
    role
        A :data:`PROBES` key.
    precision
        ``"bf16"`` or ``"fp32"``.
    reason
        One line for ``report.json``.
    seconds
        Measured median seconds per probe run, ``{"fp32": s, "bf16": s}``; empty when nothing
        was measured (no native BF16).
    source
        ``"measured"`` (this process), ``"cache"`` (an earlier measurement on this CPU),
        ``"model folder"`` (``engines.prepare`` on this CPU) or ``"cpu flags"``.
    key
        What the measurement is valid for: CPU signature, OpenVINO version, threads.
    """

    role: str
    precision: str
    reason: str
    seconds: dict[str, float] = field(default_factory=dict)
    source: str = "measured"
    key: dict[str, Any] = field(default_factory=dict)

    def as_report(self) -> dict[str, Any]:
        return asdict(self)


def _key(threads: int) -> dict[str, Any]:
    import openvino as ov

    ident = cpu_identity()
    return {"cpu_signature": ident["signature"], "cpu_model": ident["model"],
            "openvino": ov.get_version(), "threads": int(threads)}


def _time_precision(model_path: Path, shape: tuple[int, ...], precision: str, threads: int) -> float:
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(model_path))
    model.reshape({model.inputs[0].get_any_name(): ov.PartialShape(list(shape))})
    compiled = core.compile_model(model, "CPU", {
        "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "INFERENCE_NUM_THREADS": int(threads),
        "INFERENCE_PRECISION_HINT": precision, **OPENVINO_CPU_CONFIG})
    request = compiled.create_infer_request()
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    request.infer({0: x})  # warm-up: first-run allocations and kernel selection
    times = []
    for _ in range(_REPEATS):
        t0 = time.perf_counter()
        request.infer({0: x})
        times.append(time.perf_counter() - t0)
    return float(statistics.median(times))


def measure(role: str, model_dir: Path, threads: int) -> PrecisionChoice:
    """Time the role's probe in FP32 and BF16 here and choose (see the module docstring)."""
    file, shape = PROBES[role]
    path = Path(model_dir) / file
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (python -m engines.prepare writes it)")
    secs = {p: _time_precision(path, shape, p, threads) for p in ("f32", "bf16")}
    seconds = {"fp32": round(secs["f32"], 4), "bf16": round(secs["bf16"], 4)}
    ratio = secs["bf16"] / secs["f32"]
    bf16 = ratio < 1.0 - MIN_GAIN
    reason = (f"measured on this CPU: {file} {list(shape)} BF16 {seconds['bf16']:.3f} s vs FP32 {seconds['fp32']:.3f} s "
              f"(x{1 / ratio:.2f}); BF16 {'taken' if bf16 else 'not taken'} (needs > {MIN_GAIN:.0%} gain)")
    log.info("CPU precision for %s: %s", role, reason)
    return PrecisionChoice(role, "bf16" if bf16 else "fp32", reason, seconds, "measured", _key(threads))


def _read(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
        return doc if isinstance(doc, dict) and isinstance(doc.get("choices"), list) else {"choices": []}
    except (OSError, ValueError):
        return {"choices": []}


def _cached(path: Path, role: str, key: dict[str, Any], source: str) -> PrecisionChoice | None:
    for entry in _read(path)["choices"]:
        if entry.get("role") == role and entry.get("key") == key and entry.get("precision") in ("fp32", "bf16"):
            return PrecisionChoice(role, entry["precision"], str(entry.get("reason", "")),
                                   dict(entry.get("seconds", {})), source, key)
    return None


def store(path: Path, choice: PrecisionChoice) -> None:
    """Add ``choice`` to the cache file at ``path`` (replacing one of the same role and key)."""
    doc = _read(path)
    doc["choices"] = [e for e in doc["choices"] if not (e.get("role") == choice.role and e.get("key") == choice.key)]
    doc["choices"].append({k: v for k, v in choice.as_report().items() if k != "source"})
    doc["format"] = "brats-cpu-precision/1"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomically(Path(path), (json.dumps(doc, indent=2) + "\n").encode())


def choose_cpu_precision(role: str, model_dir: Path, cache_dir: Path | None, threads: int) -> PrecisionChoice:
    """The precision ``role``'s networks run in on this CPU.

    FP32 without a measurement when OpenVINO reports no native BF16; else the model folder's
    entry for this CPU, else the cache's, else a measurement now (stored in the cache when
    ``cache_dir`` is given and writable).
    """
    from engines.runtimes.openvino_engine import cpu_supports_bf16

    if not cpu_supports_bf16():
        return PrecisionChoice(role, "fp32", "this CPU has no native bfloat16 (AVX512-BF16 / AMX): FP32",
                               {}, "cpu flags", {"cpu_signature": cpu_identity()["signature"]})
    key = _key(threads)
    for path, source in ((Path(model_dir) / CACHE_FILE, "model folder"),
                         ((Path(cache_dir) / CACHE_FILE) if cache_dir else None, "cache")):
        if path is not None and path.is_file():
            hit = _cached(path, role, key, source)
            if hit is not None:
                return hit
    choice = measure(role, model_dir, threads)
    if cache_dir is not None:
        try:
            store(Path(cache_dir) / CACHE_FILE, choice)
        except OSError as exc:  # a read-only work folder: measured again next time, said so
            log.warning("CPU precision not cached (%s)", exc)
    return choice
