"""The GPU check's start-up phase: the FP16 engine in a fresh process, loaded ahead of time or compiled.

A MAP runs one study per process, so what a study waits for before its first network call is
the engine's start: ``torch-cuda-fp16`` compiles each network in the process (its Inductor cache
in the engine cache makes a later process faster), ``torch-cuda-fp16-aot`` loads AOTInductor
packages built once (:mod:`engines.runtimes.aot_packages`). Measured here, each in fresh
processes sharing one engine cache:

1. ``build``: ``python -m engines.prepare --gpu`` for the networks, split over ``--aot-jobs``
   processes (the packages' compile time, once per GPU / driver / CUDA / torch);
2. per engine, ``--aot-starts`` fresh processes (the JIT engine's first one with its cache still
   empty: ``jit-cold``, the later ``jit-warm``; the AOT engine's all ``aot``): for each network
   the seconds to create and prepare it, the first call on the reference batch (loading or
   compiling, CUDA graph capture) and the p50 of ``--runs`` later calls, and the process' wall time.

``python -m benchmarks.gpu_check_aot --child ...`` is one such process (JSON on stdout).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.gpu_check_measure import Budget
from benchmarks.reporting import percentiles
from engines.runtimes.aot_packages import describe_packages

REPO = Path(__file__).resolve().parents[1]
#: The engines compared: JIT-compiled in the process, AOT packages loaded.
START_ENGINES = {"jit": "torch-cuda-fp16", "aot": "torch-cuda-fp16-aot"}


def child(argv: Sequence[str]) -> int:
    """One fresh process: create the engine, then per network the first call and ``--runs`` more."""
    t_process = time.perf_counter()
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", required=True)
    ap.add_argument("--models", type=Path, required=True)
    ap.add_argument("--cache-dir", type=Path, required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--networks", required=True)
    ap.add_argument("--shape", required=True)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args(argv)
    from engines.runtimes.registry import create_engine

    options = {} if a.device == "cuda" else {"device": a.device, "precision": "fp32"}
    t = time.perf_counter()
    engine = create_engine(a.engine, model_dir=a.models, cache_dir=a.cache_dir, **options)
    networks = a.networks.split(",")
    engine.prepare(networks)
    out: dict[str, Any] = {"engine": a.engine, "create_and_prepare_s": time.perf_counter() - t, "networks": {}}
    batch = np.random.default_rng(0).standard_normal(tuple(int(v) for v in a.shape.split("x"))).astype(np.float32)
    for network in networks:
        t = time.perf_counter()
        engine.run(network, batch)
        first = time.perf_counter() - t
        later = []
        for _ in range(a.runs):
            t = time.perf_counter()
            engine.run(network, batch)
            later.append(time.perf_counter() - t)
        out["networks"][network] = {"first_call_s": first, "later_p50_s": float(np.median(later))}
    out["aot_packages"] = getattr(engine, "aot_sources", {})
    out["in_process_s"] = time.perf_counter() - t_process
    print(json.dumps(out))
    return 0


def _child_env() -> dict[str, str]:
    """The environment of the measured processes: Inductor's cache is the engine cache's (the JIT
    engine's default), never one this process was started with."""
    return {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}


def _child_run(engine: str, args: argparse.Namespace, cache: Path, networks: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.gpu_check_aot", "--child", "--engine", engine, "--models", str(args.models),
           "--cache-dir", str(cache), "--device", args.device, "--networks", ",".join(networks),
           "--shape", "x".join(map(str, args.reference_shape)), "--runs", str(min(args.runs, 5))]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=_child_env())
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        return {"exit_code": proc.returncode, "process_wall_s": wall, "log_tail": (proc.stdout + proc.stderr)[-600:]}
    return {"exit_code": 0, "process_wall_s": wall, **json.loads(proc.stdout.strip().splitlines()[-1])}


def _build(args: argparse.Namespace, cache: Path, networks: list[str]) -> dict[str, Any]:
    """The packages of ``networks``, built by ``--aot-jobs`` ``engines.prepare --gpu`` processes at once."""
    jobs = max(1, min(args.aot_jobs, len(networks)))
    groups = [networks[i::jobs] for i in range(jobs)]
    t = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "engines.prepare", "--out", str(args.models), "--gpu",
                               "--cache-dir", str(cache), "--device", args.device, "--networks", *g],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_child_env())
             for g in groups]
    logs = [p.communicate()[0] for p in procs]
    res = {"jobs": jobs, "wall_s": time.perf_counter() - t, "exit_codes": [p.returncode for p in procs]}
    res["packages"] = {meta["key"]["network"]: {k: meta[k] for k in ("export_s", "compile_s", "package_bytes")}
                       for meta in describe_packages(cache)}
    if any(res["exit_codes"]):
        res["log_tail"] = "\n".join(log[-400:] for log in logs)
    return res


def aot_start(args: argparse.Namespace, budget: Budget) -> dict[str, Any]:
    """The phase (see the module docstring); ``--no-aot`` or a budget too short skips it."""
    if not args.aot:
        return {"status": "skipped", "reason": "not asked for (--aot; on by default on CUDA: building the packages "
                                               "takes minutes per network on a CPU)"}
    networks = list(args.networks)
    # a package's export + compile: ~2 min on a 2-core CPU (measured); a GPU host's 16 cores: assumed half
    need = (60.0 if args.device == "cuda" else 120.0) * len(networks) / max(args.aot_jobs, 1) + 60.0
    if not budget.allows(need):
        return {"status": "skipped", "reason": budget.skip_reason("AOT start-up phase", need)}
    cache = Path(tempfile.mkdtemp(prefix="gpu-check-aot-"))
    res: dict[str, Any] = {"status": "ok", "networks": networks, "reference_shape": list(args.reference_shape)}
    res["build"] = _build(args, cache, networks)
    if any(res["build"]["exit_codes"]):
        return {**res, "status": "failed", "reason": "building the AOT packages failed"}
    starts: dict[str, list[dict[str, Any]]] = {"jit-cold": [], "jit-warm": [], "aot": []}
    for i in range(args.aot_starts):
        for kind, engine in START_ENGINES.items():
            last = (starts["aot"] or starts["jit-cold"] or [{"process_wall_s": 60.0}])[-1]["process_wall_s"]
            if not budget.allows(1.2 * last):
                res["skipped"] = budget.skip_reason(f"start {i + 1} of {engine}", 1.2 * last)
                break
            run = _child_run(engine, args, cache, networks)
            starts["aot" if kind == "aot" else ("jit-cold" if i == 0 else "jit-warm")].append(run)
    res["starts"] = starts
    res["summary"] = {}
    for kind, runs in starts.items():
        ok = [r for r in runs if r.get("exit_code") == 0]
        if ok:
            res["summary"][kind] = {
                "process_wall_s": percentiles([r["process_wall_s"] for r in ok]),
                "first_call_s_sum_over_networks": percentiles([sum(n["first_call_s"] for n in r["networks"].values())
                                                               for r in ok]),
                "first_call_s_max_network": percentiles([max(n["first_call_s"] for n in r["networks"].values())
                                                         for r in ok]),
                "later_call_p50_s_mean": float(np.mean([n["later_p50_s"] for r in ok for n in r["networks"].values()])),
            }
    if not res["summary"]:
        res["status"] = "failed"
        res["reason"] = "no start succeeded"
    return res


if __name__ == "__main__":
    if "--child" in sys.argv:
        sys.exit(child([a for a in sys.argv[1:] if a != "--child"]))
    sys.exit("python -m benchmarks.gpu_check_aot is run by benchmarks.gpu_check (--aot), or as --child")
