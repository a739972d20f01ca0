"""What every CPU engine needs from the host: denormal numbers flushed, and what this CPU is.

Denormals
---------
A float32 below 1.18e-38 in magnitude is *denormal*. Intel cores compute on them through a
micro-code assist that is 80-100x slower than the normal path; a convolution whose
activations decay into that range (instance / batch normalisation of near-constant
background, deep layers of a U-Net) then runs that much slower. AMD cores barely slow down.
Flushing them to zero (FTZ: results, DAZ: inputs) changes values by less than 1.2e-38, far
below float32's rounding of any value the networks compute with, so it is always on:

* PyTorch: :func:`flush_denormals` (``torch.set_flush_denormal(True)``: FTZ / DAZ in the
  calling thread's MXCSR, inherited by every thread started after it: torch's intra-op pool,
  the graph's worker thread), called first thing at app start and by every engine factory;
* OpenVINO: :data:`OPENVINO_CPU_CONFIG` (``CPU_DENORMALS_OPTIMIZATION``) in every CPU
  ``compile_model`` config;
* ONNX Runtime: :data:`ORT_SESSION_CONFIG` (``session.set_denormal_as_zero``) in every CPU
  session's options (:func:`ort_session_options`) for its pool threads; the thread that calls
  ``run`` is flushed by :func:`flush_denormals`.

CPU identity
------------
:func:`cpu_identity` reads ``/proc/cpuinfo`` (model name, vendor, the vector / matrix flags
that decide the engines' speed) and gives a short signature, the key under which a measured
choice for this CPU is cached (:mod:`engines.runtimes.cpu_precision`).
:func:`fp32_peak_gflops` states the FP32 peak the benchmark compares the networks with.
"""
from __future__ import annotations

import hashlib
import os
import platform
from functools import lru_cache
from typing import Any

__all__ = [
    "OPENVINO_CPU_CONFIG",
    "ORT_SESSION_CONFIG",
    "VECTOR_FLAGS",
    "cpu_identity",
    "denormals_record",
    "flush_denormals",
    "fp32_peak_gflops",
    "ort_session_options",
]

#: OpenVINO CPU plugin property: flush denormals (FTZ + DAZ) in the compiled model's threads.
OPENVINO_CPU_CONFIG: dict[str, Any] = {"CPU_DENORMALS_OPTIMIZATION": True}
#: ONNX Runtime session config entries: treat denormals as zero in the session's threads.
ORT_SESSION_CONFIG: dict[str, str] = {"session.set_denormal_as_zero": "1"}
#: The ``/proc/cpuinfo`` flags that decide which engine / precision is fastest here.
VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni",
                "amx_bf16", "amx_tile", "amx_int8")

_TORCH_FLUSHED: bool | None = None


def flush_denormals() -> bool:
    """Make torch flush denormals to zero (FTZ / DAZ in the calling thread's MXCSR, which the
    threads it starts afterwards inherit: call it first thing; idempotent, cheap).

    Returns
    -------
    bool
        True when torch accepted it (x86 with SSE3, every CPU this app runs on); False when
        torch is absent or the CPU does not support it.
    """
    global _TORCH_FLUSHED
    try:
        import torch
    except ImportError:
        _TORCH_FLUSHED = False
    else:
        _TORCH_FLUSHED = bool(torch.set_flush_denormal(True))
    return bool(_TORCH_FLUSHED)


def denormals_record() -> dict[str, Any]:
    """``report.json`` ``host.denormals_flushed``: what flushes denormals, per runtime."""
    return {
        "torch": bool(_TORCH_FLUSHED),
        "openvino": "CPU_DENORMALS_OPTIMIZATION=YES in every compiled CPU model",
        "onnxruntime": "session.set_denormal_as_zero=1 in every CPU session",
    }


def ort_session_options(threads: int | None = None) -> Any:
    """``onnxruntime.SessionOptions`` with denormals flushed (and ``threads`` intra-op)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    for key, value in ORT_SESSION_CONFIG.items():
        so.add_session_config_entry(key, value)
    if threads is not None:
        so.intra_op_num_threads = int(threads)
    return so


def _cpuinfo() -> dict[str, str]:
    """The first processor's block of ``/proc/cpuinfo`` (empty off Linux)."""
    out: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    if out:
                        break
                    continue
                key, _, value = line.partition(":")
                out.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return out


@lru_cache(maxsize=1)
def cpu_identity() -> dict[str, Any]:
    """This CPU: model, vendor, logical cores, clock, the flags of :data:`VECTOR_FLAGS`.

    Returns
    -------
    dict
        ``model``, ``vendor``, ``logical_cores``, ``mhz`` (``/proc/cpuinfo``'s, the TSC rate
        under a hypervisor: a nominal clock, not the boost clock), ``flags`` (those of
        :data:`VECTOR_FLAGS` present), ``signature`` (16 hex digits of model + flags +
        cores: the key of a choice measured on this CPU).
    """
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    present = [f for f in VECTOR_FLAGS if f in flags]
    try:
        mhz = float(info.get("cpu MHz", "0") or 0.0)
    except ValueError:
        mhz = 0.0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    model = info.get("model name", platform.processor() or platform.machine())
    vendor = info.get("vendor_id", "")
    text = "|".join([model, vendor, ",".join(present), str(cores)])
    return {
        "model": model,
        "vendor": vendor,
        "logical_cores": cores,
        "mhz": round(mhz, 1),
        "flags": present,
        "signature": hashlib.sha256(text.encode()).hexdigest()[:16],
    }


def fp32_peak_gflops(identity: dict[str, Any] | None = None) -> dict[str, Any]:
    """The FP32 peak the benchmark compares the networks' GFLOP/s with, and how it was computed.

    ``cores x clock x FP32 FLOP per cycle``. FLOP per cycle: two FMA pipes of the widest
    vector the core executes natively: 512-bit on Intel with AVX-512 (2 x 16 x 2 = 64);
    256-bit on AMD Zen 4 / 5 with AVX-512 (executed as two 256-bit halves on Zen 4: 32) and on
    any AVX2 core (2 x 8 x 2 = 32). The clock is ``/proc/cpuinfo``'s nominal one.

    Returns
    -------
    dict
        ``gflops``, ``cores``, ``ghz``, ``flop_per_cycle``, ``how`` (one line).
    """
    ident = identity or cpu_identity()
    flags = set(ident["flags"])
    amd = "AMD" in ident["vendor"].upper()
    if "avx512f" in flags and not amd:
        fpc, why = 64, "2 x 512-bit FMA x 16 float32 x 2 FLOP (Intel AVX-512)"
    elif "avx2" in flags and "fma" in flags or "avx512f" in flags:
        fpc, why = 32, ("2 x 256-bit FMA x 8 float32 x 2 FLOP ("
                        + ("AMD: AVX-512 runs as 256-bit halves" if amd and "avx512f" in flags else "AVX2") + ")")
    else:
        fpc, why = 8, "SSE: 2 x 128-bit x 4 float32, no FMA"
    ghz = ident["mhz"] / 1000.0
    cores = int(ident["logical_cores"])
    return {"gflops": round(cores * ghz * fpc, 1), "cores": cores, "ghz": round(ghz, 3),
            "flop_per_cycle": fpc, "how": f"{cores} cores x {ghz:.2f} GHz x {fpc} FLOP/cycle ({why})"}
