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
   agreement of each engine with eager FP32; then the PyTorch registration on this device and
   the engine's start in fresh processes, AOT packages loaded against the JIT-compiled FP16
   engine (:mod:`benchmarks.gpu_check_aot`; ``--aot``, on by default with CUDA);
5. the app end to end on a DICOM study made from the same case (:mod:`benchmarks.gpu_check_e2e`):
   ``python -m app`` with its stage breakdown from ``report.json``, where the app's own stack
   (Holoscan, SimpleITK, pydicom, highdicom) is importable; then the stages without Holoscan
   (``python -m app.direct``): cold (a fresh process per study, the engine already built) and
   warm (later studies of one process), p50 / p95 per stage, and the labels against the expert's
   and the CPU path's, where SimpleITK, pydicom and highdicom are importable (on a GPU image:
   from ``.gpu-carry``); otherwise each skipped with the missing modules named.

Outputs in ``--out`` (at most 8 files, what the GPU tool brings back): ``results.json``,
``results.md`` (MPA tables 1 and 2 and the goals), ``latency.png``, ``memory.png``,
``quality.png``, ``stages.png`` and ``gpu_check.log``. ``results.json`` is rewritten after
every phase, so a run cut short still leaves what it measured. Phases 2 to 4 are
:mod:`benchmarks.gpu_check_measure`'s, the summary, tables and figures
:mod:`benchmarks.gpu_check_report`'s; this module runs them and phase 5.

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
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.gpu_check_aot import aot_start
from benchmarks.gpu_check_e2e import end_to_end, missing_modules
from benchmarks.gpu_check_measure import (
    CPU_ENGINES,
    ENGINES,
    FP16_VARIANTS,
    LATENCY_ONLY,
    PRODUCT,
    Budget,
    count_flops,
    measure_engine,
    model_file_sizes,
    quality,
    write_fp16_state_dicts,
)
from benchmarks.gpu_check_report import summarise, write_markdown, write_plots
from benchmarks.measurement import REFERENCE_SHAPE, SCENARIOS, crop_to_tumour, hardware_facts, runtime_versions
from engines.model.brats_cases import load_case

log = logging.getLogger("benchmarks.gpu_check")

DEFAULT_CASE = "Brats18_TCIA01_201_1"
#: Seconds of the budget kept for the quality metrics (MONAI HD95 on the CPU) and the report.
QUALITY_RESERVE_S = 45.0


# ----------------------------------------------------------------------------- registration


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
    p.add_argument("--app-runs", type=int, default=None, help="python -m app runs (default 3; quick 1)")
    p.add_argument("--aot", action=argparse.BooleanOptionalAction, default=None,
                   help="the start-up phase: AOT packages built, then loaded in fresh processes against the JIT engine "
                        "(default: on with CUDA, off on the CPU)")
    p.add_argument("--aot-jobs", type=int, default=3, help="processes building the AOT packages at once (default 3)")
    p.add_argument("--aot-starts", type=int, default=None, help="fresh processes per engine (default 3; quick 1)")
    p.add_argument("--e2e-cold", type=int, default=None,
                   help="app.direct: fresh processes of one study each, after an uncounted build process (default 5; quick 1)")
    p.add_argument("--e2e-warm", type=int, default=None,
                   help="app.direct: studies in the one warm process, the first left out (default 6; quick 2)")
    args = p.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device")
    args.aot = args.device == "cuda" if args.aot is None else args.aot
    args.aot_starts = args.aot_starts or (1 if args.quick else 3)
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
        args.e2e_cold, args.e2e_warm, args.e2e_build = args.e2e_cold or 1, args.e2e_warm or 2, False
    else:
        from engines.model.weights import NETWORKS

        args.reference_shape = list(REFERENCE_SHAPE)
        args.networks = list(NETWORKS)
        args.scenarios = list(SCENARIOS)
        args.crop = None
        args.runs, args.warmup = args.runs or 20, 3 if args.warmup is None else args.warmup
        args.app_runs = args.app_runs or 3
        args.e2e_cold, args.e2e_warm, args.e2e_build = args.e2e_cold or 5, args.e2e_warm or 6, True
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

    # 4c. the engine's start in a fresh process: AOT packages loaded against the JIT engine
    doc["aot_start"] = aot_start(args, budget)
    log.info("AOT start-up: %s %s", doc["aot_start"].get("status"), doc["aot_start"].get("summary", ""))
    save()

    # 5. the app end to end
    doc["app"] = end_to_end(args, seg_full, budget, table[PRODUCT][0])
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
