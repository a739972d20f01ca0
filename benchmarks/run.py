"""Engine benchmark: latency, memory, end-to-end stage times and quality, one run, all engines.

Usage::

    python -m benchmarks.run --cases ../shared/data/brats18 --engines torch,onnxruntime,openvino \
        --out bench-out [--runs 5] [--warmup 2] [--models DIR] [--case-limit 1] \
        [--scenarios all,FLAIR+T1ce+T2,T1ce+T2,T2] [--latency-networks wt32,tc32,en32] \
        [--e2e-engines torch,openvino] [--threads N] [--quick | --full] \
        [--triton [--triton-concurrency 1,2,4] [--triton-url HOST:PORT] [--triton-protocol http|grpc]]

The default is what a user can wait for: the first case under all four sequences, and one
network per architecture (wt32; en32: TC networks are WT-shaped) on the reference batch. ``--full`` is the whole protocol
(all nine networks on the reference and the protocol batches, every case under the four
scenarios); the plan line printed first says how much longer that is. Every step of every
engine prints a progress line with the time left for that engine and for the ones after it.

Every engine runs in its own subprocess (``--worker``), one after the other, so that its
peak RSS (``ru_maxrss``) and, on a GPU, ``torch.cuda.max_memory_allocated/reserved`` are its
own and engines never compete for the cores. ``torch`` (PyTorch eager FP32) is always run:
it is the latency baseline (speed-ups are ratios within the same run) and the FP32
reference labels for the quality delta.

Outputs in ``--out``: ``results.json``, ``deployment_manifest.json`` (hardware, runtimes,
precision, input protocol, latency protocol, quality delta), ``tables.md``,
``latency.png``, ``memory.png``, ``end_to_end.png``, ``workers/<engine>.json|.log`` and
``labels/<engine>/<case>__<scenario>.npy``. The tables, figures and manifest are
:mod:`benchmarks.run_report`'s; the protocol shared with the GPU check (reference batch,
scenarios, timing) is :mod:`benchmarks.measurement`.

``--triton`` adds the remote engine (:mod:`engines.runtimes.triton_engine`; :mod:`benchmarks.run_triton`),
measured in the main process against a real Triton server: twice, the Python-backend repository with and without
``dynamic_batching`` (:mod:`engines.serving.triton_repository`), each served by a local
``tritonserver`` from ``.venv-triton`` (``bash scripts/bootstrap_triton.sh``); or once against
``--triton-url`` (e.g. the NGC container on a GPU server, repository as generated there).
It reports latency per network call (same protocol as the local engines), latency per study
(the cascade on the first case / scenario ``all``, ``--crop`` applied), and throughput with
1, 2 and 4 concurrent studies (client threads, one engine each) against one server, with the
server's request / ``execute`` counts (``triton/`` in ``--out``: repositories, server logs;
``throughput.png``). Every concurrent study's labels are compared with the single study's and
with the local ``onnxruntime`` labels when that engine ran end to end.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.measurement import (
    PROTOCOL_SHAPES,
    REFERENCE_SHAPE,
    REGIONS,
    SCENARIOS,
    crop_to_tumour,
    hardware_facts,
    runtime_versions,
    time_network,
)
from benchmarks.reporting import jsonable
from benchmarks.run_report import deployment_manifest, write_plots, write_tables
from benchmarks.run_triton import triton_section
from engines.model.brats_cases import load_case
from engines.model.weights import NETWORKS

log = logging.getLogger("benchmarks.run")

ALL_ENGINES = ("torch", "onnxruntime", "openvino", "openvino-bf16", "torch-compile", "tensorrt",
               "torch-cuda", "onnxruntime-cuda")
#: Benchmark engine name -> (registry name, create_engine options).
ENGINE_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "openvino-bf16": ("openvino", {"precision": "bf16"}),
    "tensorrt-fp32": ("tensorrt", {"precision": "fp32"}),
    # Issue 9 (CPU): ORT with its memory arena (the folded OpenVINO graphs are registry
    # engines of their own: openvino-folded, openvino-folded-bf16).
    "onnxruntime-arena": ("onnxruntime", {"cpu_mem_arena": True}),
}


# ----------------------------------------------------------------------------- helpers


def peak_rss_mb() -> float:
    """Peak resident set size of this process, MiB (``ru_maxrss``, KiB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def amdahl_bound(infer_fraction: float) -> float:
    """Largest end-to-end speed-up from an infinitely fast ``infer``: ``1 / (1 - f)``."""
    return float("inf") if infer_fraction >= 1 else 1.0 / (1.0 - infer_fraction)


def make_engine(name: str, models: Path, threads: int | None) -> Any:
    """Create a benchmark engine (registry name or variant such as ``openvino-bf16``)."""
    from engines.runtimes.registry import create_engine

    reg, opts = ENGINE_VARIANTS.get(name, (name, {}))
    if threads and reg in ("torch", "onnxruntime", "openvino", "openvino-folded", "openvino-folded-bf16", "torch-compile"):
        opts = {**opts, "threads": threads}
    return create_engine(reg, model_dir=models, **opts)


# ----------------------------------------------------------------------------- worker


def worker(args: argparse.Namespace) -> int:
    """Benchmark one engine in this process; writes ``workers/<engine>.json``."""
    name = args.worker
    wdir = args.out / "workers"
    res: dict[str, Any] = {"engine": name, "status": "ok"}
    try:
        t0 = time.perf_counter()
        engine = make_engine(name, args.models, args.threads)
        res["create_seconds"] = time.perf_counter() - t0
    except Exception as exc:  # noqa: BLE001 - reported as skipped with the reason
        res.update(status="skipped", reason=f"{type(exc).__name__}: {exc}")
        (wdir / f"{name}.json").write_text(json.dumps(res, indent=2))
        return 0
    cuda = "cuda" in json.dumps(engine.describe()) and _cuda_ok()
    latency: dict[str, Any] = {}
    ref_shape = tuple(args.latency_shape) if args.latency_shape else REFERENCE_SHAPE
    # Every network on the one reference batch (issue 9 compares all nine on it), then on the
    # batch the protocol feeds it.
    jobs = [(f"{n}@ref{list(ref_shape)}", n, ref_shape) for n in args.latency_networks]
    if not args.reference_only:
        jobs += [(f"{n}@protocol{list(PROTOCOL_SHAPES[n])}", n, PROTOCOL_SHAPES[n]) for n in args.latency_networks]
    n_cases = len(args.case_dirs) * len(args.scenarios) if name in args.e2e_engines else 0
    eta = Progress(name, len(jobs), n_cases)
    for key, net, shape in jobs:
        t_job = time.perf_counter()
        engine.prepare([net])
        latency[key] = time_network(engine, net, shape, args.warmup, args.runs)
        log.info("%s %s: p50 %.3f s p95 %.3f s (warm-up %s)", name, key, latency[key]["p50"],
                 latency[key]["p95"], [round(w, 2) for w in latency[key]["warmup_s"]])
        eta.done("latency", time.perf_counter() - t_job, f"{key}: p50 {latency[key]['p50']:.3f} s")
    res["latency"] = latency
    res["peak_rss_mb_after_latency"] = peak_rss_mb()

    e2e: list[dict[str, Any]] = []
    if name in args.e2e_engines:
        from engines.model import cascade as C

        ldir = args.out / "labels" / name
        ldir.mkdir(parents=True, exist_ok=True)
        for case_dir in args.case_dirs:
            for scen in args.scenarios:
                row: dict[str, Any] = {"case": case_dir.name, "scenario": scen}
                w0, c0 = time.perf_counter(), time.process_time()
                vols, seg, _ = load_case(case_dir)
                if args.crop:
                    vols, seg = crop_to_tumour(vols, seg, args.crop)
                row["load"] = time.perf_counter() - w0
                res_c = C.segment_brats_full(vols, SCENARIOS[scen], engine, seed=0,
                                             stages=C.smoke_stages() if args.smoke_patches else None)
                t = res_c.timings
                infer = sum(v for k, v in t.items() if k.split(".")[0] in ("wt", "tc", "en") and "." in k)
                row["preprocess"] = t["preprocess"]
                row["infer"] = infer
                row["postprocess"] = t["cascade"] - infer
                row["total_wall"] = time.perf_counter() - w0
                row["total_cpu"] = time.process_time() - c0
                row["infer_fraction"] = infer / row["total_wall"]
                row["amdahl_bound"] = amdahl_bound(row["infer_fraction"])
                row["views"] = {k: v for k, v in t.items() if "." in k}
                np.save(ldir / f"{case_dir.name}__{scen}.npy", res_c.labels)
                e2e.append(row)
                eta.done("case", row["total_wall"], f"{case_dir.name} {scen}: {row['total_wall']:.0f} s")
                log.info("%s %s %s: %.1f s wall, %.1f s CPU (infer %.0f%%)", name, case_dir.name, scen,
                         row["total_wall"], row["total_cpu"], 100 * row["infer_fraction"])
    else:
        res["e2e_note"] = "end-to-end not run for this engine (not in --e2e-engines)"
    res["e2e"] = e2e
    res["describe"] = jsonable(engine.describe())
    res["peak_rss_mb"] = peak_rss_mb()
    if cuda:
        import torch

        res["gpu_max_memory_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        res["gpu_max_memory_reserved_mb"] = torch.cuda.max_memory_reserved() / 2**20
    (wdir / f"{name}.json").write_text(json.dumps(res, indent=2))
    return 0


class Progress:
    """One line per finished step of a worker, on its stdout (the parent shows it), with the
    time left for this engine: remaining latency batches x their mean so far, plus remaining
    cases x the mean case time (guessed as 5 latency batches until a case has run)."""

    def __init__(self, engine: str, latency_jobs: int, cases: int) -> None:
        self.engine, self.todo = engine, {"latency": latency_jobs, "case": cases}
        self.spent: dict[str, list[float]] = {"latency": [], "case": []}

    def done(self, kind: str, seconds: float, what: str) -> None:
        self.spent[kind].append(seconds)
        left = 0.0
        for k, total in self.todo.items():
            times = self.spent[k] or self.spent["latency"]
            scale = 5.0 if k == "case" and not self.spent[k] else 1.0
            left += (total - len(self.spent[k])) * (float(np.mean(times)) * scale if times else 0.0)
        n_done = sum(len(v) for v in self.spent.values())
        print(f"PROGRESS {self.engine}: {kind} {n_done}/{sum(self.todo.values())} {what}; "
              f"~{_minutes(left)} left for this engine", flush=True)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _cuda_ok() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


# ----------------------------------------------------------------------------- main


def model_sizes(models: Path) -> dict[str, Any]:
    """MB per network and total for each model file kind in the folder."""
    out: dict[str, Any] = {}
    for ext in ("onnx", "pt"):
        per = {n: (models / f"{n}.{ext}").stat().st_size / 1e6 for n in NETWORKS if (models / f"{n}.{ext}").is_file()}
        out[ext] = {"per_network_mb": per, "total_mb": sum(per.values())}
    return out


def quality(results: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Metrics per engine / case / scenario vs ground truth and vs the torch FP32 labels."""
    from benchmarks.evaluation import brats_metrics

    q: dict[str, Any] = {}
    gts = {}
    for c in args.case_dirs:
        vols, seg, spacing = load_case(c)
        gts[c.name] = ((crop_to_tumour(vols, seg, args.crop)[1] if args.crop else seg), spacing)
    for name, r in results.items():
        if r.get("status") != "ok" or not r.get("e2e"):
            continue
        rows = []
        for row in r["e2e"]:
            lab = np.load(args.out / "labels" / name / f"{row['case']}__{row['scenario']}.npy")
            seg, spacing = gts[row["case"]]
            item = {"case": row["case"], "scenario": row["scenario"], "vs_ground_truth": brats_metrics(lab, seg, spacing)}
            ref_path = args.out / "labels" / "torch" / f"{row['case']}__{row['scenario']}.npy"
            if ref_path.is_file():
                ref = np.load(ref_path)
                item["vs_fp32_reference"] = brats_metrics(lab, ref, spacing)
                item["voxels_differing_from_reference"] = int((lab != ref).sum())
            rows.append(item)
        q[name] = rows
    # Delta Dice vs the torch FP32 run (both against ground truth), mean over cases per scenario.
    delta: dict[str, Any] = {}
    ref_rows = {(i["case"], i["scenario"]): i for i in q.get("torch", [])}
    for name, rows in q.items():
        per_s: dict[str, dict[str, list[float]]] = {}
        for i in rows:
            ref = ref_rows.get((i["case"], i["scenario"]))
            if ref is None:
                continue
            for reg in REGIONS:
                d = i["vs_ground_truth"][reg]["dice"] - ref["vs_ground_truth"][reg]["dice"]
                per_s.setdefault(i["scenario"], {}).setdefault(reg, []).append(d)
        delta[name] = {s: {reg: float(np.mean(v)) for reg, v in d.items()} for s, d in per_s.items()}
    return {"per_case": q, "delta_dice_vs_fp32": delta}


def speedups(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """p50 latency ratio torch eager / engine per latency key (same run)."""
    base = results.get("torch", {}).get("latency", {})
    out: dict[str, dict[str, float]] = {}
    for name, r in results.items():
        for key, v in r.get("latency", {}).items():
            if key in base:
                out.setdefault(name, {})[key] = base[key]["p50"] / v["p50"]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", type=Path, required=True, help="folder of BraTS case folders")
    p.add_argument("--engines", default="torch,onnxruntime,openvino", help="comma list or 'all'")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--models", type=Path, default=None, help="model folder (default: build into OUT/models)")
    p.add_argument("--case-limit", type=int, default=None, help="cases used (default 1; --full: all)")
    p.add_argument("--scenarios", default=None, help=f"comma list of {list(SCENARIOS)} (default all; --full: every one)")
    p.add_argument("--latency-networks", default=None,
                   help="comma list (default: wt32,en32, one per architecture; --full: all nine)")
    p.add_argument("--full", action="store_true",
                   help="the whole protocol: nine networks on the reference and the protocol batches, every case "
                        "under the four scenarios (hours on a 2-core CPU; the plan line says how much longer)")
    p.add_argument("--e2e-engines", default=None, help="engines that run whole cases (default: all)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per engine (default: all cores)")
    p.add_argument("--quick", action="store_true",
                   help="1 case, scenario 'all', runs 2, warm-up 1, wt32 latency only, --smoke-patches")
    p.add_argument("--smoke-patches", action="store_true",
                   help="cases with 48 x 48 in-plane patches (engines.model.cascade.smoke_stages): not the protocol")
    p.add_argument("--reference-only", action="store_true", help="latency on the reference batch only (no protocol batches)")
    p.add_argument("--crop", default=None,
                   help="Z,Y,X: crop every case to this box around the tumour (smoke tests; --quick uses 48,64,64)")
    p.add_argument("--latency-shape", default=None,
                   help="N,C,D,H,W replacing the 5,4,19,144,144 reference batch (smoke tests only)")
    p.add_argument("--triton", action="store_true", help="also benchmark remote inference on a Triton server")
    p.add_argument("--triton-url", default=None, help="use this server (host:port, grpc://host:port) instead of a local one")
    p.add_argument("--triton-protocol", choices=("http", "grpc"), default="http", help="local server: endpoint used")
    p.add_argument("--triton-concurrency", default="1,2,4", help="concurrent studies (comma list)")
    p.add_argument("--triton-timeout", type=float, default=900.0, help="seconds per request")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.quick:
        args.smoke_patches = True
        args.case_limit, args.scenarios, args.runs, args.warmup = 1, "all", min(args.runs, 2), min(args.warmup, 1)
        args.latency_networks = args.latency_networks or "wt32"
        args.reference_only = True
        args.crop = args.crop or "48,64,64"
    if args.full or args.worker:
        args.scenarios = args.scenarios or ",".join(SCENARIOS)
        args.latency_networks = args.latency_networks or ",".join(NETWORKS)
    else:
        # The default a user can wait for (<= 10 min for two CPU engines on 2 cores): one case,
        # all four sequences, one network per architecture, on the reference batch only.
        args.case_limit = args.case_limit or 1
        args.scenarios = args.scenarios or "all"
        args.latency_networks = args.latency_networks or "wt32,en32"  # one per architecture (TC = WT)
        args.reference_only = True
    args.crop = [int(v) for v in args.crop.split(",")] if args.crop else None
    args.latency_shape = [int(v) for v in args.latency_shape.split(",")] if args.latency_shape else None
    args.latency_networks = [n for n in (args.latency_networks or ",".join(NETWORKS)).split(",") if n]
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    args.triton_concurrency = [int(v) for v in str(args.triton_concurrency).split(",") if v]
    bad = [s for s in args.scenarios if s not in SCENARIOS]
    if bad:
        p.error(f"unknown scenarios {bad}; choose from {list(SCENARIOS)}")
    case_dirs = sorted(d for d in args.cases.iterdir() if d.is_dir() and (d / f"{d.name}_seg.nii.gz").is_file())
    args.case_dirs = case_dirs[: args.case_limit] if args.case_limit else case_dirs
    if not args.case_dirs:
        p.error(f"no BraTS case folders in {args.cases}")
    engines = list(ALL_ENGINES) if args.engines == "all" else [e for e in args.engines.split(",") if e]
    if "torch" in engines:
        engines.remove("torch")
    engines.insert(0, "torch")  # the baseline and FP32 reference runs first, always
    args.e2e_engines = engines if args.e2e_engines is None else [e for e in args.e2e_engines.split(",") if e]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "workers").mkdir(exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)

    if args.models is None:
        args.models = args.out / "models"
        if not (args.models / "manifest.json").is_file():
            from engines.model.weights import default_weights_dir
            from engines.prepare import prepare

            prepare(args.models, default_weights_dir(), NETWORKS)
    if args.worker:
        return worker(args)

    doc: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "hardware": hardware_facts(), "runtime_versions": runtime_versions(),
        "protocol": {"runs": args.runs, "warmup": args.warmup, "threads": args.threads or os.cpu_count(),
                     "cases": [c.name for c in args.case_dirs], "scenarios": args.scenarios,
                     "latency_networks": args.latency_networks, "e2e_engines": args.e2e_engines,
                     "quick": args.quick, "crop": args.crop, "smoke_patches": args.smoke_patches,
                     "reference_batch": args.latency_shape or list(REFERENCE_SHAPE)},
        "model_sizes": model_sizes(args.models), "engines": {},
    }
    passthrough = ["--cases", str(args.cases), "--out", str(args.out), "--runs", str(args.runs),
                   "--warmup", str(args.warmup), "--models", str(args.models),
                   "--scenarios", ",".join(args.scenarios), "--latency-networks", ",".join(args.latency_networks),
                   "--e2e-engines", ",".join(args.e2e_engines) or ","]
    if args.case_limit:
        passthrough += ["--case-limit", str(args.case_limit)]
    if args.threads:
        passthrough += ["--threads", str(args.threads)]
    if args.reference_only:
        passthrough += ["--reference-only"]
    if args.smoke_patches:
        passthrough += ["--smoke-patches"]
    if args.crop:
        passthrough += ["--crop", ",".join(map(str, args.crop))]
    if args.latency_shape:
        passthrough += ["--latency-shape", ",".join(map(str, args.latency_shape))]
    n_lat = len(args.latency_networks) * (1 if args.reference_only else 2)
    n_case = len(args.case_dirs) * len(args.scenarios)
    longer = (18 / max(n_lat, 1) + 4 * len(case_dirs) / max(n_case, 1)) / 2
    print(f"plan: {len(engines)} engines ({', '.join(engines)}); each: {n_lat} latency batches x "
          f"{args.warmup + args.runs} calls, then {n_case} cascades ({len(args.case_dirs)} cases x "
          f"{len(args.scenarios)} scenarios) for {len(args.e2e_engines)} of them"
          + ("" if args.full else f"; --full (9 networks x 2 batch shapes, every case x 4 scenarios) is ~{longer:.0f}x longer"),
          file=sys.stderr)
    engine_seconds: list[float] = []
    for i, name in enumerate(engines):
        t0 = time.perf_counter()
        logf = args.out / "workers" / f"{name}.log"
        with open(logf, "w") as lf:
            proc = subprocess.Popen([sys.executable, "-m", "benchmarks.run", *passthrough, "--worker", name],
                                    stdout=subprocess.PIPE, stderr=lf, text=True,
                                    cwd=Path(__file__).resolve().parents[1])
            assert proc.stdout is not None
            for line in proc.stdout:
                lf.write(line)
                if line.startswith("PROGRESS "):
                    rest = len(engines) - i - 1
                    after = (f"; then ~{_minutes(float(np.mean(engine_seconds)) * rest)} for {rest} more engines"
                             if engine_seconds and rest else "")
                    print(f"[{i + 1}/{len(engines)}] {line[9:].rstrip()}{after}", file=sys.stderr, flush=True)
            rc = proc.wait()
        jf = args.out / "workers" / f"{name}.json"
        if rc == 0 and jf.is_file():
            doc["engines"][name] = json.loads(jf.read_text())
        else:
            doc["engines"][name] = {"engine": name, "status": "failed", "reason": f"worker exit {rc}, see {logf}"}
        doc["engines"][name]["worker_seconds"] = time.perf_counter() - t0
        engine_seconds.append(time.perf_counter() - t0)
        log.info("engine %s: %s in %.0f s", name, doc["engines"][name]["status"], time.perf_counter() - t0)

    if args.triton:
        t0 = time.perf_counter()
        try:
            doc["triton"] = triton_section(args)
        except Exception as exc:  # noqa: BLE001 - reported, the rest of the benchmark stands
            log.exception("triton section failed")
            doc["triton"] = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
        doc["triton"]["seconds"] = time.perf_counter() - t0
    doc["speedup_vs_torch"] = speedups(doc["engines"])
    doc["quality"] = quality(doc["engines"], args)
    doc["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    (args.out / "results.json").write_text(json.dumps(jsonable(doc), indent=2) + "\n")
    (args.out / "deployment_manifest.json").write_text(json.dumps(jsonable(deployment_manifest(doc)), indent=2) + "\n")
    write_tables(doc, args.out / "tables.md")
    doc["plots"] = write_plots(doc, args.out)
    (args.out / "results.json").write_text(json.dumps(jsonable(doc), indent=2) + "\n")
    print(f"benchmark written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
