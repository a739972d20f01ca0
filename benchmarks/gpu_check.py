"""The GPU measurement: FP16 engine vs PyTorch eager FP32 and torch.compile FP32, in one process.

Usage (``bash benchmarks/gpu_check.sh`` wraps it)::

    python -m benchmarks.gpu_check --out DIR [--device auto|cuda|cpu] [--quick] [--budget-s 420] \
        [--case CASE_DIR] [--weights DIR] [--models DIR] [--runs 20] [--warmup 3] [--no-app]

What it measures, in this order (the order is the priority: when the time budget runs out,
what is left is skipped and the reason recorded):

1. the model folder (``engines.prepare``: state dicts, ONNX files) and the networks' FLOPs
   (counted once, on the meta device, per network and batch shape);
2. per engine -- eager FP32 (``torch-cuda``), the FP16 engine (``torch-cuda-fp16``),
   torch.compile FP32 (``torch-compile``), TensorRT FP16 when importable -- every network on
   the reference batch ``(5, 4, 19, 144, 144)``: first-call time, then mean / p50 / p95 of
   ``--runs`` timed calls after ``--warmup`` calls; peak allocated / reserved GPU memory; then
   one whole BraTS case through the cascade under the MPA paper's three missing-sequence
   scenarios plus all four sequences (labels kept, stage times);
3. FP16 variants on the reference batch (no compile, no CUDA graphs, folded graph, static
   shapes), to show what each part of the engine buys;
4. quality: Dice / HD95 / sensitivity against the expert labels per scenario, and the label
   agreement of each engine with eager FP32;
5. the app end to end (``python -m app``) on a DICOM study made from the same case, with its
   stage breakdown from ``report.json`` -- where the app's own stack (Holoscan, SimpleITK,
   pydicom, highdicom) is importable; otherwise skipped with the missing modules named.

Outputs in ``--out`` (at most 8 files, what the GPU tool brings back): ``results.json``,
``results.md`` (MPA tables 1 and 2 and the goals), ``latency.png``, ``memory.png``,
``quality.png``, ``stages.png`` and ``gpu_check.log``. ``results.json`` is rewritten after
every phase, so a run cut short still leaves what it measured.

``--device cpu --quick`` runs the same code on the CPU with a small reference batch, one
network, a case cropped around the tumour with 48 x 48 in-plane patches (not the protocol's:
:func:`engines.model.cascade.smoke_stages`), one scenario, and the app on a 12-slice slab (the
test suite's check).

Timing protocol: wall clock around ``engine.run`` (host->device copy, inference,
device->host copy, NumPy output); engines run one after another in this process, their
objects released and the CUDA caching allocator emptied between them; speed-ups are ratios of
p50 latencies within this run.
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.measurement import (
    REFERENCE_SHAPE,
    SCENARIOS,
    crop_to_tumour,
    hardware_facts,
    runtime_versions,
    time_network,
)
from benchmarks.reporting import percentiles, save_figure
from engines.model.brats_cases import load_case

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
REGIONS = ("WT", "TC", "ET")
#: Dense peak rates (TFLOP/s) by GPU name fragment: FP16 / TF32 tensor cores, FP32 CUDA cores
#: (NVIDIA data sheets, SXM parts unless named). Eager FP32 convolutions run in TF32 on these
#: GPUs (PyTorch's default ``torch.backends.cudnn.allow_tf32 = True``).
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H200": {"fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H100 PCIe": {"fp16": 756.0, "tf32": 378.0, "fp32": 51.2},
    "H100 NVL": {"fp16": 835.0, "tf32": 417.5, "fp32": 60.0},
    "H100": {"fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "A100": {"fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "L40S": {"fp16": 362.0, "tf32": 183.0, "fp32": 91.6},
}
#: The issue's goals for the FP16 engine on the GPU.
GOALS = {"speedup_vs_eager": 3.0, "speedup_vs_compile": 1.5, "peak_allocated_ratio": 0.20,
         "abs_delta_dice": 0.001, "label_agreement": 0.999, "end_to_end_s": 5.0}
DEFAULT_CASE = "Brats18_TCIA01_201_1"
#: Seconds of the budget kept for the quality metrics (MONAI HD95 on the CPU) and the report.
QUALITY_RESERVE_S = 45.0


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


# ----------------------------------------------------------------------------- helpers


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


def peak_rate(gpu_name: str | None, precision: str) -> float | None:
    """The device's dense peak TFLOP/s for ``precision`` (None when the GPU is not listed)."""
    if not gpu_name:
        return None
    for fragment, rates in PEAK_TFLOPS.items():
        if fragment in gpu_name:
            return rates.get(precision)
    return None


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


# ----------------------------------------------------------------------------- per engine


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
        res["describe"] = json.loads(json.dumps(engine.describe(), default=str))
    except Exception as exc:  # noqa: BLE001 - recorded; the other engines still run
        log.exception("%s failed", name)
        res.update(status="failed", reason=f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}",
                   latency=latency)
    finally:
        del engine
        reset_gpu(args.device)
    res["seconds"] = time.perf_counter() - t0
    return res


# ----------------------------------------------------------------------------- quality


def quality(labels: dict[str, dict[str, np.ndarray]], seg: np.ndarray, brain: np.ndarray,
            spacing: Sequence[float], budget: Budget) -> dict[str, Any]:
    """Dice / HD95 / sensitivity vs the expert labels; agreement with eager FP32 per scenario."""
    from benchmarks.evaluation import brats_metrics, region_mask

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
                item["dice_vs_eager_fp32"] = {r: _dice(region_mask(lab, r), region_mask(ref, r)) for r in REGIONS}
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


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


# ----------------------------------------------------------------------------- app end to end

APP_MODULES = ("holoscan", "monai.deploy", "SimpleITK", "pydicom", "highdicom")


def missing_modules(names: Sequence[str]) -> list[str]:
    """Those of ``names`` this interpreter cannot import."""
    import importlib.util

    out = []
    for n in names:
        try:
            if importlib.util.find_spec(n) is None:
                out.append(n)
        except (ImportError, ValueError):
            out.append(n)
    return out


#: What the registration phase imports: no SimpleITK (the GPU image has none). hf-deepali travels
#: in .gpu-carry (benchmarks/stage_gpu_carry.sh); its mi_loss also needs `packaging` (matplotlib's
#: dependency, so present wherever the plots can be drawn).
REGISTRATION_MODULES = ("deepali", "scipy", "nibabel")


def registration_timing(args: argparse.Namespace, budget: Budget) -> dict[str, Any]:
    """The PyTorch registration on this device, without SimpleITK: the core
    (``operators.spatial.registration_torch_core.register_rigid_arrays``; the app's
    ``register_rigid_torch`` is a SimpleITK wrapper around it with bit-identical results).

    The pair: T2 of the case moved as ``make_study --misalign 3`` does (``samples.volumes``:
    the same transform and grid, resampled with SciPy -- equal voxel for voxel to make_study's),
    registered back to its T1ce. Error at the T1ce's brain-box corners against the known
    transform (``rigid_error``, NumPy), wall time of the first call and of a repeat.
    """
    missing = missing_modules(REGISTRATION_MODULES)
    if missing:
        return {"status": "skipped", "reason": f"not importable here: {', '.join(missing)}"}
    try:
        from deepali.losses.functional import mi_loss  # noqa: F401 -- all the core takes from hf-deepali
    except ImportError as exc:  # e.g. `packaging` absent
        return {"status": "skipped", "reason": f"hf-deepali's mi_loss does not import here: {exc}"}
    if not budget.allows(30.0):
        return {"status": "skipped", "reason": budget.skip_reason("registration", 30.0)}
    from operators.spatial.registration_torch_core import ArrayImage, register_rigid_arrays, rigid_error
    from samples import volumes as sv

    def array_image(vol: sv.Volume) -> ArrayImage:
        # !! nibabel's data[i, j, k] -> (Z, Y, X) = data.transpose(2, 1, 0); geometry stays (x, y, z) = (i, j, k)
        return ArrayImage(np.ascontiguousarray(vol.data.transpose(2, 1, 0)), vol.spacing, vol.origin,
                          tuple(float(v) for v in vol.direction.ravel()))

    vols = sv.load_case(args.case, ["t1ce", "t2"])
    ref = vols["t1ce"]
    truth = sv.draw_transform(3, "t2", sv.volume_center(ref))
    moved = sv.resample_moving_numpy(vols["t2"], truth, sv.draw_grid(3, "t2", ref))
    fixed, moving = array_image(ref), array_image(moved)
    m = truth.matrix4x4_numpy()
    truth_affine = (m[:3, :3], m[:3, 3])
    corners = sv.nonzero_box_corners(ref)
    # --quick: one coarse level, once (a smoke test of the phase, not the protocol)
    kw = dict(level_spacings_mm=(4.0,), samples_per_level=(10_000,), iterations_per_level=(60,),
              learning_rates=(0.02,)) if args.quick else {}
    runs = []
    for _ in range(1 if args.quick else 2):
        res = register_rigid_arrays(fixed, moving, device=args.device, seed=2, **kw)
        disp, rot = rigid_error(res.fixed_to_moving(), truth_affine, corners)
        runs.append({"wall_s": round(res.duration_s, 3), "corner_error_mm": round(disp, 3), "rotation_error_deg": round(rot, 3)})
    return {"status": "ok", "device": args.device, "series": "T2 (make_study --misalign 3) -> T1ce", "runs": runs,
            "untouched_corner_error_mm": round(rigid_error((np.eye(3), np.zeros(3)), truth_affine, corners)[0], 3),
            "protocol": "quick: one 4 mm level" if args.quick else "4 / 2 / 1 mm pyramid (the app's)"}


def app_end_to_end(args: argparse.Namespace, seg: np.ndarray, budget: Budget, engine: str) -> dict[str, Any]:
    """``python -m app`` on a DICOM study of the case (``seg``: its labels, uncropped, (Z, Y, X)):
    stage times from ``report.json``.

    The first run starts cold (compilation, engine cache empty); later runs reuse the engine
    cache in the same work folder, as a MAP with a mounted cache does.
    """
    if args.no_app:
        return {"status": "skipped", "reason": "--no-app"}
    missing = missing_modules(APP_MODULES)
    if missing:
        return {"status": "skipped", "reason": f"the app's stack is not importable here (missing: {', '.join(missing)})"}
    repo = Path(__file__).resolve().parents[1]
    work = Path(tempfile.mkdtemp(prefix="gpu-check-app-"))
    res: dict[str, Any] = {"status": "ok", "engine_requested": engine, "runs": []}
    cmd = [sys.executable, "-m", "samples.make_study", str(args.case), str(work / "study"), "--quiet"]
    if args.quick:  # a slab of the case around the tumour: same code, fewer slices
        z = np.nonzero(seg.any(axis=(1, 2)))[0]
        centre = int(z.mean()) if z.size else seg.shape[0] // 2
        cmd += ["--slices", f"{max(centre - 6, 0)}:{min(centre + 6, seg.shape[0])}"]
        res["study"] = f"slab {cmd[-1]} of {args.case.name}"
    else:
        res["study"] = f"{args.case.name}, four series, {seg.shape[2]}x{seg.shape[1]}x{seg.shape[0]}"
    t = time.perf_counter()
    made = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
    if made.returncode != 0:
        return {"status": "failed", "reason": f"make_study exit {made.returncode}: {made.stderr.strip()[-300:]}"}
    res["make_study_s"] = time.perf_counter() - t
    env = {**os.environ, "BRATS_ENGINE": engine, "PYTHONUNBUFFERED": "1"}
    for i in range(args.app_runs):
        need = res["runs"][-1]["wall_s"] * 1.2 if res["runs"] else 60.0
        if not budget.allows(need):
            res["runs"].append({"skipped": budget.skip_reason(f"app run {i + 1}", need)})
            break
        out_dir = work / f"out{i}"
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "app", "-i", str(work / "study" / "dicom"), "-o", str(out_dir),
                               "-m", str(args.models), "-w", str(work / "work")],
                              cwd=repo, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t
        run: dict[str, Any] = {"exit_code": proc.returncode, "wall_s": wall, "cold": i == 0}
        report_path = out_dir / "report.json"
        if report_path.is_file():
            report = json.loads(report_path.read_text())
            run["status"] = report.get("status")
            run["stages_s"] = report.get("timings_s", {})
            run["engine"] = (report.get("segmentation") or {}).get("engine", {}).get("engine")
            run["choice_reason"] = (report.get("segmentation") or {}).get("engine", {}).get("choice_reason")
            run["segmentation_timings_s"] = (report.get("segmentation") or {}).get("timings_s", {})
        if proc.returncode != 0:
            run["log_tail"] = (proc.stdout + proc.stderr)[-600:]
        res["runs"].append(run)
        log.info("app run %d: exit %d, %.1f s, stages %s", i + 1, proc.returncode, wall, run.get("stages_s"))
    done = [r for r in res["runs"] if r.get("exit_code") == 0]
    if not done:
        res["status"] = "failed"
        res["reason"] = "no app run succeeded"
    warm = [r["wall_s"] for r in done if not r["cold"]] or [r["wall_s"] for r in done]
    if warm:
        res["wall_after_first_s"] = percentiles(warm)
    return res


# ----------------------------------------------------------------------------- summary


def summarise(doc: dict[str, Any]) -> dict[str, Any]:
    """Speed-ups, throughput and memory ratios vs eager FP32, and the goals (met or not)."""
    eng = {n: r for n, r in doc["engines"].items() if r.get("status") == "ok"}
    base = eng.get(BASELINE, {}).get("latency", {})
    comp = eng.get("compile-fp32", {}).get("latency", {})
    gpu = doc["hardware"].get("gpu")
    shape_key = "x".join(map(str, doc["protocol"]["reference_shape"]))
    out: dict[str, Any] = {}
    for name, r in {**eng, **{n: v for n, v in doc.get("fp16_variants", {}).items() if v.get("status") == "ok"}}.items():
        lat = {n: v for n, v in r.get("latency", {}).items() if "p50" in v}
        row: dict[str, Any] = {}
        if lat:
            for key, ref in (("speedup_vs_eager", base), ("speedup_vs_compile", comp)):
                ratios = [ref[n]["p50"] / v["p50"] for n, v in lat.items() if "p50" in ref.get(n, {})]
                if ratios:
                    row[key] = float(np.exp(np.mean(np.log(ratios))))  # geometric mean over networks
            flops = [doc["flops_gflop"][n][shape_key] for n in lat]
            row["p50_ms_mean_over_networks"] = float(np.mean([1e3 * v["p50"] for v in lat.values()]))
            if all("device" in v for v in lat.values()):
                row["device_p50_ms_mean_over_networks"] = float(np.mean([1e3 * v["device"]["p50"] for v in lat.values()]))
            row["achieved_tflops"] = float(np.mean([f / 1e3 / v["p50"] for f, v in zip(flops, lat.values())]))
            prec = (ENGINES.get(name) or ENGINES[PRODUCT])[2]
            peak = peak_rate(gpu, prec)
            if peak:
                row["peak_tflops"] = peak
                row["peak_precision"] = prec
                row["fraction_of_peak"] = row["achieved_tflops"] / peak
        mem, mem0 = r.get("memory_reference_batch", {}), eng.get(BASELINE, {}).get("memory_reference_batch", {})
        if mem.get("peak_allocated_mb") and mem0.get("peak_allocated_mb"):
            row["peak_allocated_ratio_vs_eager"] = mem["peak_allocated_mb"] / mem0["peak_allocated_mb"]
            row["peak_reserved_ratio_vs_eager"] = mem["peak_reserved_mb"] / mem0["peak_reserved_mb"]
        out[name] = row
    goals: dict[str, Any] = {}
    p = out.get(PRODUCT, {})
    q = doc.get("quality", {}).get(PRODUCT, {})
    deltas = [abs(d) for item in q.values() for d in (item.get("delta_dice_vs_eager_fp32") or {}).values()]
    agreements = [item["label_agreement_brain"] for item in q.values() if "label_agreement_brain" in item]
    app = doc.get("app", {})
    measured = {
        "speedup_vs_eager": p.get("speedup_vs_eager"), "speedup_vs_compile": p.get("speedup_vs_compile"),
        "peak_allocated_ratio": p.get("peak_allocated_ratio_vs_eager"),
        "abs_delta_dice": max(deltas) if deltas else None, "label_agreement": min(agreements) if agreements else None,
        "end_to_end_s": (app.get("wall_after_first_s") or {}).get("p50"),
    }
    for key, target in GOALS.items():
        v = measured[key]
        lower_is_better = key in ("peak_allocated_ratio", "abs_delta_dice", "end_to_end_s")
        met = None if v is None else (v <= target if lower_is_better else v >= target)
        goals[key] = {"target": target, "measured": v, "met": met, "direction": "<=" if lower_is_better else ">="}
    return {"per_engine": out, "goals": goals}


# ----------------------------------------------------------------------------- report


def _f(v: Any, fmt: str = ".2f") -> str:
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, fmt)


def write_markdown(doc: dict[str, Any], path: Path) -> None:
    """MPA-style tables 1 and 2, the ablation, the case and app stage times, the goals."""
    hw, proto, summ = doc["hardware"], doc["protocol"], doc.get("summary", {})
    lines = ["# GPU check: FP16 engine vs eager FP32 and torch.compile FP32", "",
             f"Run {doc['started']} ({doc['wall_s']:.0f} s wall, budget {proto['budget_s']} s), "
             f"`python -m benchmarks.gpu_check {' '.join(doc['argv'])}`.", "",
             f"- Device: {hw.get('gpu', 'CPU: ' + str(hw.get('cpu_model')))}"
             + (f", driver {hw.get('driver')}, CUDA {hw.get('cuda')}, cuDNN {hw.get('cudnn')}" if hw.get("gpu") else ""),
             f"- Host: {hw.get('cpu_model')}, {hw.get('cpu_count')} CPUs; torch {doc['runtime_versions'].get('torch')}, "
             f"onnx {doc['runtime_versions'].get('onnx')}, TensorRT {doc['runtime_versions'].get('tensorrt')}",
             f"- Eager FP32 convolutions: TF32 allowed = {doc['tf32']['cudnn_allow_tf32']} (PyTorch default)",
             f"- Reference batch {proto['reference_shape']} (NCDHW), {proto['warmup']} warm-up + {proto['runs']} timed "
             f"calls per network, wall clock around engine.run (copies in and out included; [network alone]: "
             f"CUDA events around the graph replay); case {proto['case']}"
             + (f" cropped to {proto['crop']}" if proto.get("crop") else ""),
             ""]
    eng = doc["engines"]
    lines += ["## Model only (MPA table 2)", "",
              "| engine | model files MB | p50 ms (mean of 9 nets) [network alone] | speed-up vs eager | vs torch.compile | "
              "peak allocated MiB | peak reserved MiB | allocated vs eager | TFLOP/s (of peak) | first call s (max) |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    sizes = doc.get("model_sizes", {})
    size_of = {"eager-fp32": sizes.get("fp32_state_dicts_mb"), "compile-fp32": sizes.get("fp32_state_dicts_mb"),
               "fp16": sizes.get("fp16_state_dicts_mb"), "tensorrt-fp16": sizes.get("fp32_onnx_mb")}
    for name, r in {**eng, **doc.get("fp16_variants", {})}.items():
        if r.get("status") != "ok":
            lines.append(f"| {name} | {r.get('status')}: {r.get('reason', '')} |||||||||")
            continue
        s = summ.get("per_engine", {}).get(name, {})
        mem = r.get("memory_reference_batch", {})
        firsts = [v.get("first_call_s") or 0 for v in r.get("latency", {}).values() if "p50" in v]
        tf = _f(s.get("achieved_tflops"), ".1f")
        if s.get("fraction_of_peak"):
            tf += f" ({100 * s['fraction_of_peak']:.1f} % of {s['peak_precision']})"
        dev = f" [{s['device_p50_ms_mean_over_networks']:.2f}]" if "device_p50_ms_mean_over_networks" in s else ""
        lines.append(f"| {name} | {_f(size_of.get(name), '.1f')} | {_f(s.get('p50_ms_mean_over_networks'))}{dev} | "
                     f"{_f(s.get('speedup_vs_eager'))}x | {_f(s.get('speedup_vs_compile'))}x | "
                     f"{_f(mem.get('peak_allocated_mb'), '.0f')} | {_f(mem.get('peak_reserved_mb'), '.0f')} | "
                     f"{_f(s.get('peak_allocated_ratio_vs_eager'))} | {tf} | "
                     f"{_f(max(firsts) if firsts else None, '.1f')} |")
    nets = doc["protocol"]["networks"]
    ok = [n for n, r in {**eng, **doc.get("fp16_variants", {})}.items() if r.get("status") == "ok"]
    lines += ["", "Latency per network (ms: mean / p50 / p95):", "",
              "| network | GFLOP | " + " | ".join(ok) + " |", "| --- | ---: |" + " ---: |" * len(ok)]
    shape_key = "x".join(map(str, proto["reference_shape"]))
    for n in nets:
        cells = []
        for name in ok:
            v = ({**eng, **doc.get("fp16_variants", {})}[name].get("latency") or {}).get(n, {})
            cells.append(f"{1e3 * v['mean']:.2f} / {1e3 * v['p50']:.2f} / {1e3 * v['p95']:.2f}" if "p50" in v else "–")
        lines.append(f"| {n} | {doc['flops_gflop'][n][shape_key]:.1f} | " + " | ".join(cells) + " |")

    lines += ["", "## Quality on the case (MPA table 1)", "",
              "| scenario | engine | Dice WT / TC / ET | HD95 mm WT / TC / ET | sensitivity WT / TC / ET | "
              "ΔDice vs eager (points) | label agreement with eager (brain voxels) | voxels differing |",
              "| --- | --- | --- | --- | --- | --- | ---: | ---: |"]
    for scen in proto["scenarios"]:
        for name, by in doc.get("quality", {}).items():
            item = by.get(scen)
            if not item or "vs_ground_truth" not in item:
                continue
            g = item["vs_ground_truth"]
            dd = item.get("delta_dice_vs_eager_fp32") or {}
            lines.append(f"| {scen} | {name} | " + " / ".join(_f(g[r]["dice"], ".3f") for r in REGIONS) + " | "
                         + " / ".join(_f(g[r]["hd95"], ".1f") for r in REGIONS) + " | "
                         + " / ".join(_f(g[r]["sensitivity"], ".3f") for r in REGIONS) + " | "
                         + " / ".join(_f(100 * dd[r], "+.2f") if r in dd else "–" for r in REGIONS) + " | "
                         + _f(item.get("label_agreement_brain"), ".5f")
                         + f" | {item.get('voxels_differing', '–')} |")

    lines += ["", "## The case through the cascade (seconds)", "",
              "| engine | scenario | wall | preprocess | networks (9 views) | post-processing |",
              "| --- | --- | ---: | ---: | ---: | ---: |"]
    for name, r in eng.items():
        for scen, c in (r.get("case") or {}).items():
            if "wall_s" in c:
                lines.append(f"| {name} | {scen} | {c['wall_s']:.2f} | {c['preprocess_s']:.2f} | "
                             f"{c['networks_s']:.2f} | {c['postprocess_s']:.2f} |")
            else:
                lines.append(f"| {name} | {scen} | {c.get('skipped', '')} ||||")

    app = doc.get("app", {})
    lines += ["", "## The app end to end (DICOM in, SEG on disk)", ""]
    if app.get("status") != "ok" and not app.get("runs"):
        lines.append(f"{app.get('status', 'not run')}: {app.get('reason', '')}")
    else:
        lines.append(f"Study: {app.get('study')}; engine requested `{app.get('engine_requested')}`.")
        lines += ["", "| run | exit | wall s | engine | stages (s) |", "| --- | ---: | ---: | --- | --- |"]
        for i, run in enumerate(app.get("runs", [])):
            stages = ", ".join(f"{k} {v:.2f}" for k, v in (run.get("stages_s") or {}).items())
            lines.append(f"| {i + 1}{' (cold)' if run.get('cold') else ''} | {run.get('exit_code', '–')} | "
                         f"{_f(run.get('wall_s'))} | {run.get('engine', '–')} | "
                         f"{stages or run.get('skipped', '')} |")

    lines += ["", "## Goals (FP16 engine)", "", "| goal | target | measured | met |", "| --- | ---: | ---: | --- |"]
    for key, g in summ.get("goals", {}).items():
        met = {True: "yes", False: "**no**", None: "not measured"}[g["met"]]
        lines.append(f"| {key} | {g['direction']} {g['target']} | {_f(g['measured'], '.4g')} | {met} |")
    skipped = [f"- {n}: {r.get('reason')}" for n, r in {**eng, **doc.get("fp16_variants", {})}.items() if r.get("status") != "ok"]
    if skipped:
        lines += ["", "## Not measured", "", *skipped]
    path.write_text("\n".join(lines) + "\n")


def write_plots(doc: dict[str, Any], out: Path) -> list[str]:
    """latency.png, memory.png, quality.png, stages.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files: list[str] = []
    runs = {n: r for n, r in {**doc["engines"], **doc.get("fp16_variants", {})}.items() if r.get("status") == "ok"}
    nets = doc["protocol"]["networks"]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(nets) + 2), 4))
    width = 0.8 / max(1, len(runs))
    for j, (name, r) in enumerate(runs.items()):
        lat = r.get("latency", {})
        ax.bar(np.arange(len(nets)) + j * width, [1e3 * lat.get(n, {}).get("p50", np.nan) for n in nets], width, label=name)
    ax.set_xticks(np.arange(len(nets)) + width * (len(runs) - 1) / 2)
    ax.set_xticklabels(nets, fontsize=8)
    ax.set_ylabel("p50 latency (ms)")
    ax.set_title(f"Model only, batch {doc['protocol']['reference_shape']}")
    ax.legend(fontsize=7)
    save_figure(fig, out / "latency.png", files)

    fig, ax = plt.subplots(figsize=(7, 4))
    names = list(runs)
    alloc = [runs[n].get("memory_reference_batch", {}).get("peak_allocated_mb", 0) for n in names]
    resv = [runs[n].get("memory_reference_batch", {}).get("peak_reserved_mb", 0) for n in names]
    xs = np.arange(len(names))
    ax.bar(xs - 0.2, alloc, 0.4, label="peak allocated")
    ax.bar(xs + 0.2, resv, 0.4, label="peak reserved")
    ax.set_xticks(xs)
    ax.set_xticklabels(names, rotation=20, fontsize=8)
    ax.set_ylabel("GPU memory (MiB)" if doc["hardware"].get("gpu") else "GPU memory (none: CPU run)")
    ax.set_title("Peak GPU memory, reference batch")
    ax.legend(fontsize=8)
    save_figure(fig, out / "memory.png", files)

    q = doc.get("quality", {})
    scen = doc["protocol"]["scenarios"]
    fig, axes = plt.subplots(1, len(REGIONS), figsize=(4 * len(REGIONS), 3.8), sharey=True)
    for ax, reg in zip(np.atleast_1d(axes), REGIONS):
        width = 0.8 / max(1, len(q))
        for j, (name, by) in enumerate(q.items()):
            vals = [by.get(s, {}).get("vs_ground_truth", {}).get(reg, {}).get("dice", np.nan) for s in scen]
            ax.bar(np.arange(len(scen)) + j * width, vals, width, label=name)
        ax.set_xticks(np.arange(len(scen)) + width * (len(q) - 1) / 2)
        ax.set_xticklabels(scen, rotation=20, fontsize=7)
        ax.set_title(f"Dice {reg}")
        ax.set_ylim(0, 1)
    np.atleast_1d(axes)[0].legend(fontsize=7)
    save_figure(fig, out / "quality.png", files)

    fig, ax = plt.subplots(figsize=(7, 4))
    rows = [(n, r["case"]["all"]) for n, r in runs.items() if "wall_s" in (r.get("case") or {}).get("all", {})]
    bottom = np.zeros(len(rows))
    for part in ("preprocess_s", "networks_s", "postprocess_s"):
        vals = np.array([c[part] for _, c in rows])
        ax.bar([n for n, _ in rows], vals, bottom=bottom, label=part.removesuffix("_s"))
        bottom += vals
    app_runs = [r for r in doc.get("app", {}).get("runs", []) if r.get("stages_s")]
    if app_runs:
        last = app_runs[-1]["stages_s"]
        b = 0.0
        for k, v in last.items():
            ax.bar(["app (last run)"], [v], bottom=[b], label=f"app {k}")
            b += v
    ax.set_ylabel("seconds")
    ax.set_title("One case, all four sequences: where the time goes")
    ax.legend(fontsize=7)
    plt.setp(ax.get_xticklabels(), rotation=20, fontsize=8)
    save_figure(fig, out / "stages.png", files)
    return files


# ----------------------------------------------------------------------------- main


def default_shared() -> Path:
    """``$BRATS_SHARED``, else ``../shared`` beside the repository."""
    env = os.environ.get("BRATS_SHARED")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--quick", action="store_true", help="small batch, one network, cropped case, one scenario")
    p.add_argument("--budget-s", type=float, default=None, help="wall-clock budget (default 420 s; quick: none)")
    p.add_argument("--case", type=Path, default=None, help=f"BraTS case folder (default {DEFAULT_CASE} in the shared data)")
    p.add_argument("--weights", type=Path, default=None, help="original .npz weights (default: shared models)")
    p.add_argument("--models", type=Path, default=None, help="model folder (default: OUT/models, built here)")
    p.add_argument("--runs", type=int, default=None, help="timed calls per network (default 20; quick 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 3; quick 1)")
    p.add_argument("--engines", default=",".join(ENGINES), help=f"comma list of {list(ENGINES)}")
    p.add_argument("--no-variants", action="store_true", help="skip the FP16 variants")
    p.add_argument("--no-app", action="store_true", help="skip the app end to end")
    p.add_argument("--app-runs", type=int, default=None, help="app runs (default 3; quick 1)")
    args = p.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device")
    shared = default_shared()
    args.case = args.case or shared / "data" / "brats18" / DEFAULT_CASE
    args.weights = args.weights or shared / "models" / "brats17-cascade"
    for what, path in (("case", args.case), ("weights", args.weights)):
        if not path.is_dir():
            p.error(f"--{what} {path} is not a folder (set BRATS_SHARED or pass --{what})")
    if args.quick:
        args.reference_shape = [5, 4, 19, 32, 32]
        args.networks = ["wt32"]
        args.scenarios = ["all"]
        args.crop = [24, 48, 48]
        args.runs, args.warmup = args.runs or 2, 1 if args.warmup is None else args.warmup
        args.app_runs = args.app_runs or 1
    else:
        from engines.model.weights import NETWORKS

        args.reference_shape = list(REFERENCE_SHAPE)
        args.networks = list(NETWORKS)
        args.scenarios = list(SCENARIOS)
        args.crop = None
        args.runs, args.warmup = args.runs or 20, 3 if args.warmup is None else args.warmup
        args.app_runs = args.app_runs or 3
        args.budget_s = args.budget_s or 420.0
    args.engine_names = [e for e in args.engines.split(",") if e]
    bad = [e for e in args.engine_names if e not in ENGINES]
    if bad:
        p.error(f"unknown engines {bad}; choose from {list(ENGINES)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        handlers=[logging.StreamHandler(sys.stdout),
                                  logging.FileHandler(args.out / "gpu_check.log", mode="w")])
    import torch

    budget = Budget(args.budget_s, reserve_s=QUALITY_RESERVE_S)
    doc: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": args.argv, "hardware": hardware_facts(),
        "runtime_versions": runtime_versions(),
        "tf32": {"cudnn_allow_tf32": torch.backends.cudnn.allow_tf32, "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32},
        "protocol": {"device": args.device, "quick": args.quick, "budget_s": args.budget_s, "runs": args.runs,
                     "warmup": args.warmup, "reference_shape": args.reference_shape, "networks": args.networks,
                     "scenarios": args.scenarios, "case": args.case.name, "crop": args.crop, "seed": 0,
                     "case_patches": ("quick: every in-plane patch 48 x 48 (engines.model.cascade.smoke_stages; "
                                      "not the protocol)" if args.quick else "the protocol's"),
                     "timer": "time.perf_counter around engine.run (copies in and out included)"},
        "engines": {}, "fp16_variants": {}, "skipped": [],
    }
    results = args.out / "results.json"

    def save() -> None:
        doc["wall_s"] = time.perf_counter() - budget.start
        results.write_text(json.dumps(doc, indent=2, default=str) + "\n")

    log.info("gpu_check: %s, device %s, budget %s s", doc["hardware"].get("gpu", doc["hardware"].get("cpu_model")),
             args.device, args.budget_s)

    # 1. models, FLOPs, sizes
    t = time.perf_counter()
    if args.models is None:
        args.models = args.out / "models"
    if not (args.models / "manifest.json").is_file():
        from engines.prepare import prepare

        prepare(args.models, args.weights)  # all nine: the app needs them
    doc["prepare_s"] = time.perf_counter() - t
    shapes = {tuple(args.reference_shape)}
    doc["flops_gflop"] = count_flops(args.networks, sorted(shapes))
    with tempfile.TemporaryDirectory() as tmp:
        if not args.quick:
            doc["model_sizes"] = model_file_sizes(args.models, write_fp16_state_dicts(args.models, Path(tmp)))
    log.info("models ready in %.1f s", doc["prepare_s"])
    save()

    # The case: loaded once (nibabel), cropped in quick mode.
    vols, seg, spacing = load_case(args.case)
    seg_full = seg
    if args.crop:
        vols, seg = crop_to_tumour(vols, seg, args.crop)
    brain = (vols > 0).any(axis=0)

    # 2. engines
    table = ENGINES if args.device == "cuda" else CPU_ENGINES
    labels: dict[str, dict[str, np.ndarray]] = {}
    estimates = {"network": 30.0, "case": 60.0}
    for name in args.engine_names:
        registry, options, _ = table[name]
        with_case = name not in LATENCY_ONLY
        log.info("engine %s (%s %s), %.0f s left", name, registry, options, budget.left())
        doc["engines"][name] = measure_engine(name, registry, options, args, (vols, seg), budget, estimates,
                                              labels, args.networks, with_case)
        save()

    # 3. FP16 variants (CUDA only: on the CPU there are no CUDA graphs and compilation is off)
    if args.device != "cuda" or args.no_variants or PRODUCT not in args.engine_names:
        doc["fp16_variants_note"] = "not run: " + ("CPU run" if args.device != "cuda" else "switched off")
    else:
        for vname, opts in FP16_VARIANTS.items():
            need = 4 * estimates.get(f"{PRODUCT}.network", 30.0)
            if not budget.allows(need):
                doc["fp16_variants"][vname] = {"status": "skipped", "reason": budget.skip_reason(vname, need)}
                continue
            registry = table[PRODUCT][0]
            doc["fp16_variants"][vname] = measure_engine(
                vname, registry, {**table[PRODUCT][1], **opts}, args, (vols, seg), budget, dict(estimates), {},
                ["wt32", "en32"], with_case=False)
            save()

    # 4. quality
    t = time.perf_counter()
    doc["quality"] = quality(labels, seg, brain, spacing, budget)
    doc["quality_s"] = time.perf_counter() - t
    save()

    # 4b. registration on this device (the PyTorch backend)
    doc["registration"] = registration_timing(args, budget)
    log.info("registration: %s", doc["registration"])
    save()

    # 5. the app end to end
    doc["app"] = app_end_to_end(args, seg_full, budget, table[PRODUCT][0])
    log.info("app end to end: %s", doc["app"].get("status"))
    save()

    doc["summary"] = summarise(doc)
    doc["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    save()
    write_markdown(doc, args.out / "results.md")
    doc["plots"] = write_plots(doc, args.out)
    save()
    for key, g in doc["summary"]["goals"].items():
        log.info("goal %s: %s %s, measured %s -> %s", key, g["direction"], g["target"], g["measured"], g["met"])
    print(f"gpu_check written to {args.out} in {doc['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
