"""The GPU check's measurements (``python -m benchmarks.gpu_check``, phases 2 to 4): the engines
compared and their CPU stand-ins, the time budget, one engine's latency on the reference batch,
GPU memory and the case under each scenario, the networks' FLOPs and model file sizes, and the
quality of every engine's labels.

Imports what the GPU machine's image has (torch, NumPy; MONAI from the carry for the metrics),
never the app's DICOM stack.
"""
from __future__ import annotations

import argparse
import gc
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.measurement import REGIONS, SCENARIOS, time_network
from benchmarks.reporting import jsonable, percentiles

__all__ = ["BASELINE", "CPU_ENGINES", "ENGINES", "FP16_VARIANTS", "LATENCY_ONLY", "PRODUCT", "Budget", "count_flops",
           "measure_engine", "model_file_sizes", "quality", "write_fp16_state_dicts"]

log = logging.getLogger("benchmarks.gpu_check")

#: Measured engine name -> (registry name, options, precision the peak FLOP rate is taken for).
ENGINES: dict[str, tuple[str, dict[str, Any], str]] = {
    "eager-fp32": ("torch-cuda", {}, "tf32"),
    "fp16": ("torch-cuda-fp16", {}, "fp16"),
    # torch.compile's default: static shapes. Reference batch only: a case meets 7-10 shapes,
    # each a compile of about a minute.
    "compile-fp32": ("torch-compile", {"device": "cuda"}, "tf32"),
    "tensorrt-fp16": ("tensorrt", {"precision": "fp16"}, "fp16"),
}
#: On the CPU (quick mode) the same roles, CPU engines.
CPU_ENGINES: dict[str, tuple[str, dict[str, Any], str]] = {
    "eager-fp32": ("torch", {}, "fp32"),
    # FP32 on the CPU: the engine's plumbing (runners, keys, layout) at the speed of eager; its
    # half-precision arithmetic is unit-tested on small batches (tests/test_torch_fp16_engine.py).
    "fp16": ("torch-cuda-fp16", {"device": "cpu", "precision": "fp32"}, "fp16"),
    "compile-fp32": ("torch-compile", {"device": "cpu"}, "fp32"),
    "tensorrt-fp16": ("tensorrt", {"precision": "fp16"}, "fp16"),
}
#: FP16 engine variants (options over the registry defaults), reference batch only.
FP16_VARIANTS: dict[str, dict[str, Any]] = {
    "fp16-no-compile": {"compile": False},
    "fp16-no-cudagraphs": {"cuda_graphs": False},
    "fp16-folded": {"graph": "folded"},
    "fp16-cudnn-benchmark": {"cudnn_benchmark": True},
    "fp16-static-shapes": {"dynamic_hw": False},
}
#: Engines that run the reference batch only (no case), with the reason.
LATENCY_ONLY = {"compile-fp32": "static shapes: each of the case's 7-10 batch shapes would be a compile of about "
                                "a minute; its arithmetic is eager FP32's (reduction order aside)"}
BASELINE = "eager-fp32"
PRODUCT = "fp16"


@dataclass
class Budget:
    """Wall-clock budget of the run: work is skipped, with the reason, when it would not fit."""

    seconds: float | None
    #: Kept back for the phases that must run (quality, the report) when measuring.
    reserve_s: float = 0.0
    start: float = field(default_factory=time.perf_counter)

    def left(self) -> float:
        return float("inf") if self.seconds is None else self.seconds - (time.perf_counter() - self.start)

    def allows(self, estimate_s: float, final: bool = False) -> bool:
        """Whether work of ``estimate_s`` fits; measuring phases leave ``reserve_s`` untouched."""
        return self.left() >= estimate_s + (0.0 if final else self.reserve_s)

    def skip_reason(self, what: str, estimate_s: float) -> str:
        return f"time budget: {what} needs ~{estimate_s:.0f} s, {max(self.left(), 0):.0f} s left of {self.seconds:.0f} s"


def cuda_ready(device: str) -> bool:
    import torch

    return device == "cuda" and torch.cuda.is_available()


def reset_gpu(device: str) -> dict[str, float]:
    """Free cached blocks, reset the peak counters; returns the device memory in use (MiB)."""
    import torch

    gc.collect()
    if not cuda_ready(device):
        return {}
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    free, total = torch.cuda.mem_get_info()
    return {"device_used_mb": (total - free) / 2**20}


def gpu_peaks(device: str, before: dict[str, float]) -> dict[str, float]:
    """Peak allocated / reserved by PyTorch's allocator since :func:`reset_gpu`, and the
    device memory in use now beyond ``before`` (covers allocations outside PyTorch, e.g. TensorRT)."""
    import torch

    if not cuda_ready(device):
        return {}
    torch.cuda.synchronize()
    free, total = torch.cuda.mem_get_info()
    return {"peak_allocated_mb": torch.cuda.max_memory_allocated() / 2**20,
            "peak_reserved_mb": torch.cuda.max_memory_reserved() / 2**20,
            "device_used_beyond_start_mb": (total - free) / 2**20 - before.get("device_used_mb", 0.0)}


def count_flops(networks: Sequence[str], shapes: Sequence[tuple[int, ...]]) -> dict[str, dict[str, float]]:
    """Floating-point operations (2 per multiply-add) of each network per batch shape, GFLOP.

    Counted once on the meta device (no data, no time): convolutions and transposed
    convolutions, which are all of MSNet's multiply-adds; normalisation and PReLU are not
    counted (memory-bound, a few FLOPs per element)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from engines.model.msnet import MSNet
    from engines.model.weights import network_kind

    out: dict[str, dict[str, float]] = {}
    for net_name in networks:
        net = MSNet(network_kind(net_name)).to("meta")
        for shape in shapes:
            with FlopCounterMode(display=False) as counter, torch.inference_mode():
                net(torch.empty(tuple(shape), device="meta"))
            out.setdefault(net_name, {})["x".join(map(str, shape))] = counter.get_total_flops() / 1e9
    return out


def model_file_sizes(models: Path, weights_fp16: Path) -> dict[str, Any]:
    """MB of the model files each engine loads or builds from (MPA table 2's 'model size')."""
    from engines.model.weights import NETWORKS

    def total(pattern: str, folder: Path) -> float:
        return sum((folder / pattern.format(n)).stat().st_size for n in NETWORKS if (folder / pattern.format(n)).is_file()) / 1e6

    return {
        "fp32_state_dicts_mb": total("{}.pt", models),
        "fp32_onnx_mb": total("{}.onnx", models),
        "fp16_state_dicts_mb": total("{}.pt", weights_fp16),
        "note": "eager / torch.compile FP32 load the FP32 state dicts; the FP16 engine casts them on load "
                "(its weights in memory and as a half-precision state dict: fp16_state_dicts_mb); TensorRT "
                "builds from the FP32 ONNX files (its plan sizes are in the engine's entry when it ran)",
    }


def write_fp16_state_dicts(models: Path, out: Path) -> Path:
    """Half-precision copies of the state dicts (only to weigh them; the engine casts on load)."""
    import torch

    from engines.model.weights import NETWORKS

    out.mkdir(parents=True, exist_ok=True)
    for n in NETWORKS:
        sd = torch.load(models / f"{n}.pt", map_location="cpu", weights_only=True)
        torch.save({k: v.half() for k, v in sd.items()}, out / f"{n}.pt")
    return out


def measure_engine(name: str, registry: str, options: dict[str, Any], args: argparse.Namespace,
                   case: tuple[np.ndarray, np.ndarray], budget: Budget, estimates: dict[str, float],
                   labels: dict[str, dict[str, np.ndarray]], networks: Sequence[str],
                   with_case: bool) -> dict[str, Any]:
    """Create one engine; latency on the reference batch; the case under each scenario."""
    from engines.model import cascade as C
    from engines.runtimes.registry import create_engine

    res: dict[str, Any] = {"engine": name, "registry_name": registry, "options": options, "status": "ok"}
    before = reset_gpu(args.device)
    t0 = time.perf_counter()
    try:
        engine = create_engine(registry, model_dir=args.models, **options)
        engine.prepare(list(networks))
    except Exception as exc:  # noqa: BLE001 - an engine that cannot run here is reported, not fatal
        res.update(status="skipped", reason=f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
        log.warning("%s: skipped (%s)", name, res["reason"])
        return res
    res["create_s"] = time.perf_counter() - t0
    shape = tuple(args.reference_shape)
    latency: dict[str, Any] = {}
    try:
        for i, net in enumerate(networks):
            need = estimates.get(f"{name}.network", estimates["network"])
            if not budget.allows(need):
                latency[net] = {"skipped": budget.skip_reason(f"{name} {net}", need)}
                continue
            t = time.perf_counter()
            r = time_network(engine, net, shape, args.warmup, args.runs)
            r["first_call_s"] = r["warmup_s"][0] if r["warmup_s"] else None
            device_s = getattr(engine, "device_seconds", None)
            if device_s and len(device_s) >= args.runs:
                r["device"] = percentiles(device_s[-args.runs:])  # CUDA events: the network alone
            latency[net] = r
            estimates[f"{name}.network"] = time.perf_counter() - t
            log.info("%s %s %s: first call %.2f s, p50 %.2f ms, p95 %.2f ms (%d/%d)", name, net, list(shape),
                     r["first_call_s"] or 0, 1e3 * r["p50"], 1e3 * r["p95"], i + 1, len(networks))
        res["latency"] = latency
        res["memory_reference_batch"] = gpu_peaks(args.device, before)
        if latency and all("skipped" in v for v in latency.values()):
            res.update(status="skipped", reason=next(iter(latency.values()))["skipped"])
            return res

        res["case"] = {}
        if not with_case:
            res["case_note"] = f"reference batch only: {LATENCY_ONLY.get(name, 'variant')}"
        before_case = reset_gpu(args.device)
        vols, _ = case
        for scen in args.scenarios:
            need = estimates.get(f"{name}.case", estimates["case"])
            if not with_case:
                break
            if not budget.allows(need):
                res["case"][scen] = {"skipped": budget.skip_reason(f"{name} case {scen}", need)}
                log.warning("%s case %s: %s", name, scen, res["case"][scen]["skipped"])
                continue
            t = time.perf_counter()
            out = C.segment_brats_full(vols, SCENARIOS[scen], engine, seed=0,
                                       stages=C.smoke_stages() if args.quick else None)
            wall = time.perf_counter() - t
            estimates[f"{name}.case"] = wall
            timings = out.timings
            infer = sum(v for k, v in timings.items() if k.split(".")[0] in C.STAGE_ORDER and "." in k)
            res["case"][scen] = {"wall_s": wall, "preprocess_s": timings["preprocess"], "networks_s": infer,
                                 "postprocess_s": timings["cascade"] - infer,
                                 "views_s": {k: v for k, v in timings.items() if "." in k}}
            labels.setdefault(name, {})[scen] = out.labels
            log.info("%s case %s: %.1f s (networks %.1f s)", name, scen, wall, infer)
        res["memory_case"] = gpu_peaks(args.device, before_case)
        res["describe"] = jsonable(engine.describe())
    except Exception as exc:  # noqa: BLE001 - recorded; the other engines still run
        log.exception("%s failed", name)
        res.update(status="failed", reason=f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}",
                   latency=latency)
    finally:
        del engine
        reset_gpu(args.device)
    res["seconds"] = time.perf_counter() - t0
    return res


def quality(labels: dict[str, dict[str, np.ndarray]], seg: np.ndarray, brain: np.ndarray,
            spacing: Sequence[float], budget: Budget) -> dict[str, Any]:
    """Dice / HD95 / sensitivity vs the expert labels; agreement with eager FP32 per scenario."""
    from benchmarks.evaluation import brats_metrics, dice, region_mask

    out: dict[str, Any] = {}
    base = labels.get(BASELINE, {})
    per_case_s = 5.0
    for name, by_scen in labels.items():
        for scen, lab in by_scen.items():
            if not budget.allows(per_case_s, final=True):
                out.setdefault(name, {})[scen] = {"skipped": budget.skip_reason("metrics", per_case_s)}
                continue
            t = time.perf_counter()
            item: dict[str, Any] = {"vs_ground_truth": brats_metrics(lab, seg, spacing)}
            ref = base.get(scen)
            if ref is not None:
                differ = lab != ref
                item["label_agreement_brain"] = float(1.0 - differ[brain].sum() / max(int(brain.sum()), 1))
                item["voxels_differing"] = int(differ.sum())
                item["dice_vs_eager_fp32"] = {r: dice(region_mask(lab, r), region_mask(ref, r)) for r in REGIONS}
            out.setdefault(name, {})[scen] = item
            per_case_s = max(per_case_s, time.perf_counter() - t)
    # ΔDice (engine minus eager FP32, both against the expert labels), per scenario and region.
    for by_scen in out.values():
        for scen, item in by_scen.items():
            ref_item = out.get(BASELINE, {}).get(scen, {})
            if "vs_ground_truth" in item and "vs_ground_truth" in ref_item:
                item["delta_dice_vs_eager_fp32"] = {
                    r: item["vs_ground_truth"][r]["dice"] - ref_item["vs_ground_truth"][r]["dice"] for r in REGIONS
                }
    return out
