"""The application end to end, as a user runs it: DICOM in -> SEG on disk, repeated.

``python -m benchmarks.app_e2e --study <dicom folder> --models <model folder> --out DIR
[--runs 3] [--warmup 1] [--engine auto] [--env KEY=VALUE ...] [--runner app|direct|both]``

Each run is a fresh ``python -m app`` process (what a clinical orchestrator starts;
``--runner direct``: ``python -m app.direct``, the same stages without the Holoscan scheduler;
``both``: the two alternated, compared in ``app_vs_direct.json``), so the
warm-up runs fill the engine cache and the file-system cache, not a process' memory. Per
stage (``report.json``'s ``stage_breakdown_s``: load, select, series to volume, registration,
resampling, brain extraction, the networks alone, the rest of the cascade, back to the
reference grid, SEG, SR, overlay) and for the wall time of the whole process: p50, p95,
mean over the measured runs; each stage's share of the stages' total; and the Amdahl bound
(the end-to-end speed-up an infinitely fast network would give, from the p50s).

With ``--flops`` the networks' work is counted once, in this process: the app's own operators
(load, select, register, brain extraction, the cascade) run with the engine the app chooses,
wrapped so that every batch shape is recorded; the FLOP of each (network, shape) and of
HD-BET's pass are counted on the meta device. The summary then gives the networks' GFLOP/s
(cascade: FLOP / the ``network`` stage's p50; HD-BET: FLOP / its pass's p50) against this
CPU's FP32 peak (:func:`engines.runtimes.cpu_host.fp32_peak_gflops`), and the CPU's model and
flags.

Writes ``DIR/app_e2e.json`` and ``DIR/app_e2e.png`` (one bar per stage, p50 with the p95 as
whisker) and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.reporting import find_key, percentiles, pyplot, save_figure
from engines.runtimes.base import InferenceEngine
from engines.runtimes.cpu_host import cpu_identity, fp32_peak_gflops

__all__ = ["main", "summarise"]

REPO_ROOT = Path(__file__).resolve().parents[1]


#: ``--runner``: the module each process runs (``app.direct``: the stages without Holoscan).
RUNNERS = {"app": "app", "direct": "app.direct"}


def _run_app(study: Path, models: Path, out: Path, env: dict[str, str], runner: str = "app") -> tuple[float, dict[str, Any]]:
    """One app process (``runner``: a key of :data:`RUNNERS`); returns its wall time (s) and its report."""
    cmd = [sys.executable, "-m", RUNNERS[runner], "-i", str(study), "-o", str(out), "-m", str(models)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env={**os.environ, **env}, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        raise RuntimeError(f"app exited {proc.returncode}: {' | '.join(tail)}")
    return wall, json.loads((out / "report.json").read_text())


def summarise(walls: Sequence[float], reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per stage p50 / p95 / mean, shares (of the p50 stage total) and the Amdahl bound."""
    stages = list(reports[0]["stage_breakdown_s"])
    per_stage = {s: percentiles([float(r["stage_breakdown_s"].get(s, 0.0)) for r in reports]) for s in stages}
    total_p50 = sum(v["p50"] for v in per_stage.values())
    network = per_stage.get("network", {"p50": 0.0})["p50"]
    pre_post = total_p50 - network
    return {
        "runs": len(reports),
        "wall_s": percentiles(walls),
        "stages_s": per_stage,
        "stage_share_of_p50_total": {s: (v["p50"] / total_p50 if total_p50 else 0.0) for s, v in per_stage.items()},
        "stages_total_p50_s": total_p50,
        "network_p50_s": network,
        "registration_and_resampling_share": (
            (per_stage.get("registration", {"p50": 0})["p50"] + per_stage.get("resampling", {"p50": 0})["p50"])
            / total_p50 if total_p50 else 0.0),
        "amdahl_bound_zero_time_network": (total_p50 / pre_post) if pre_post > 0 else None,
        "engine": reports[-1].get("segmentation", {}).get("engine", {}).get("name"),
    }


class ShapeRecordingEngine(InferenceEngine):
    """Runs another engine and records every ``(network, batch shape)`` it is given."""

    def __init__(self, inner: InferenceEngine) -> None:
        self.inner = inner
        self.name = inner.name
        self.calls: list[tuple[str, tuple[int, ...]]] = []

    def prepare(self, networks: Sequence[str]) -> None:
        self.inner.prepare(networks)

    def run(self, network: str, batch: Any) -> Any:
        self.calls.append((network, tuple(int(s) for s in batch.shape)))
        return self.inner.run(network, batch)

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()


def count_network_flops(study: Path, models: Path) -> dict[str, Any]:
    """GFLOP of the cascade's networks and of HD-BET's pass on ``study``, as the app runs it
    (its own operators in this process; see the module docstring)."""
    import logging
    from collections import Counter

    from benchmarks.gpu_check_measure import count_flops
    from benchmarks.hd_bet_engines import network_gflop
    from engines.model.cascade import segment_brats_full
    from engines.runtimes.registry import choose_engine
    from operators.dicom.study_loader import load_study
    from operators.segmentation.segment import missing_sequence_plan
    from operators.selection.modality_selector import SelectionRules, select_modalities
    from operators.spatial.model_input import register_and_resample

    log = logging.getLogger("app_e2e.flops")
    with tempfile.TemporaryDirectory() as cache:
        selection = select_modalities(load_study(study), SelectionRules.load())
        registered = register_and_resample(selection, 0, log, "hd-bet", "auto", models, Path(cache))
        model_input = registered.model_input
        engine, _ = choose_engine("auto", models, cache_dir=Path(cache))
        recorder = ShapeRecordingEngine(engine)
        _, fill = missing_sequence_plan(model_input.available, log)
        segment_brats_full(model_input.volumes, model_input.available, recorder, seed=0, fill=fill)
    calls = Counter(recorder.calls)
    flops = count_flops(sorted({n for n, _ in calls}), sorted({s for _, s in calls}))
    cascade = sum(k * flops[n]["x".join(map(str, s))] for (n, s), k in calls.items())
    brain = registered.record.brain_extraction
    hd_shape = (brain.get("hd_bet") or {}).get("network_input_shape")
    return {"cascade_gflop": round(cascade, 1), "cascade_calls": sum(calls.values()),
            "hd_bet_gflop": round(network_gflop(tuple(hd_shape)), 1) if hd_shape else None,
            "hd_bet_input_shape": hd_shape}


def network_rates(summary: dict[str, Any], reports: Sequence[dict[str, Any]], flops: dict[str, Any]) -> dict[str, Any]:
    """GFLOP/s of the cascade's networks and of HD-BET against this CPU's FP32 peak."""
    peak = fp32_peak_gflops()
    out: dict[str, Any] = {"fp32_peak": peak, **flops}
    net_s = summary["network_p50_s"]
    if net_s:
        rate = flops["cascade_gflop"] / net_s
        out["cascade_gflops_per_s"] = round(rate, 1)
        out["cascade_share_of_fp32_peak"] = round(rate / peak["gflops"], 3)
    hd = [find_key(r, "duration_network_s") for r in reports]
    hd = [float(v) for v in hd if v is not None]
    if hd and flops.get("hd_bet_gflop"):
        hd_p50 = percentiles(hd)["p50"]
        out["hd_bet_network_p50_s"] = round(hd_p50, 2)
        out["hd_bet_gflops_per_s"] = round(flops["hd_bet_gflop"] / hd_p50, 1)
        out["hd_bet_share_of_fp32_peak"] = round(flops["hd_bet_gflop"] / hd_p50 / peak["gflops"], 3)
    return out


def plot(summary: dict[str, Any], path: Path) -> None:
    """One bar per stage (p50, whisker to the p95), labelled with its share of the stages' total."""
    plt = pyplot()
    stages = list(summary["stages_s"])
    p50 = [summary["stages_s"][s]["p50"] for s in stages]
    p95 = [summary["stages_s"][s]["p95"] for s in stages]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.barh(stages, p50, xerr=[[0] * len(stages), [max(b - a, 0) for a, b in zip(p50, p95)]], color="#4c72b0")
    for y, (v, s) in enumerate(zip(p50, stages)):
        ax.text(v, y, f" {v:.1f} s ({summary['stage_share_of_p50_total'][s]:.0%})", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds (bar: p50, whisker: p95)")
    bound = summary["amdahl_bound_zero_time_network"]
    ax.set_title(f"App end to end, {summary['runs']} runs, engine {summary['engine']}: wall p50 "
                 f"{summary['wall_s']['p50']:.1f} s; zero-time network bound x{bound:.2f}" if bound else "App end to end")
    save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.app_e2e", description=__doc__.split("\n")[0])
    p.add_argument("--study", type=Path, required=True, help="DICOM study folder (the app's input)")
    p.add_argument("--models", type=Path, required=True, help="model folder (python -m engines.prepare)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--engine", default=None, help="BRATS_ENGINE for the runs (default: the app's auto)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="more environment for the app")
    p.add_argument("--runner", choices=(*RUNNERS, "both"), default="app",
                   help="python -m app (default), app.direct (the stages without Holoscan), or both, alternated run by "
                        "run (compared in app_vs_direct.json)")
    p.add_argument("--flops", action="store_true",
                   help="count the networks' FLOP once in this process (GFLOP/s against the CPU's FP32 peak)")
    args = p.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        p.error("--runs must be >= 1 and --warmup >= 0")
    env = dict(kv.split("=", 1) for kv in args.env)
    if args.engine:
        env["BRATS_ENGINE"] = args.engine
    args.out.mkdir(parents=True, exist_ok=True)
    if args.runner == "both":
        return compare_runners(args, env)
    walls: list[float] = []
    reports: list[dict[str, Any]] = []
    total = args.warmup + args.runs
    with tempfile.TemporaryDirectory(dir=args.out) as scratch:
        for i in range(total):
            kind = "warm-up" if i < args.warmup else "run"
            wall, report = _run_app(args.study, args.models, Path(scratch) / f"run{i}", env, args.runner)
            left = (total - i - 1) * wall
            print(f"[app_e2e] {kind} {i + 1}/{total}: {wall:.1f} s (about {left / 60:.1f} min left)", flush=True)
            if i >= args.warmup:
                walls.append(wall)
                reports.append(report)
    summary = summarise(walls, reports)
    summary["runner"] = RUNNERS[args.runner]
    summary["study"] = str(args.study)
    summary["host"] = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
                       "cpu": cpu_identity()}
    summary["engines"] = {"cascade": (reports[-1].get("segmentation", {}).get("engine") or {}).get("engine"),
                          "cascade_precision": (find_key(reports[-1].get("segmentation", {}), "precision_choice") or {}),
                          "hd_bet": find_key(reports[-1].get("registration", {}), "engine_choice_reason")}
    if args.flops:
        print("[app_e2e] counting the networks' FLOP (one more pass, in this process)", flush=True)
        summary["networks"] = network_rates(summary, reports, count_network_flops(args.study, args.models))
    summary["command"] = "python -m benchmarks.app_e2e " + " ".join(sys.argv[1:] if argv is None else argv)
    (args.out / "app_e2e.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(summary, args.out / "app_e2e.png")
    print(f"{'stage':<20}{'p50 s':>8}{'p95 s':>8}{'share':>8}")
    for stage, v in summary["stages_s"].items():
        print(f"{stage:<20}{v['p50']:>8.2f}{v['p95']:>8.2f}{summary['stage_share_of_p50_total'][stage]:>8.1%}")
    nets = summary.get("networks")
    if nets:
        print(f"networks: cascade {nets.get('cascade_gflop')} GFLOP at {nets.get('cascade_gflops_per_s')} GFLOP/s "
              f"({nets.get('cascade_share_of_fp32_peak', 0):.0%} of {nets['fp32_peak']['gflops']} GFLOP/s FP32 peak)"
              + (f"; HD-BET {nets['hd_bet_gflop']} GFLOP at {nets.get('hd_bet_gflops_per_s')} GFLOP/s"
                 if nets.get("hd_bet_gflop") else ""))
    bound = summary["amdahl_bound_zero_time_network"]
    print(f"wall p50 {summary['wall_s']['p50']:.1f} s, p95 {summary['wall_s']['p95']:.1f} s; registration + "
          f"resampling {summary['registration_and_resampling_share']:.1%} of the stages; zero-time network bound "
          f"x{bound:.2f}" if bound else "no network time recorded")
    return 0


def compare_runners(args: argparse.Namespace, env: dict[str, str]) -> int:
    """``--runner both``: ``python -m app`` and ``app.direct`` alternated (``--warmup`` rounds of
    each first), each a fresh process per study; ``app_vs_direct.json`` holds both summaries and,
    per stage and for the wall, the direct runner's p50 minus the app's."""
    walls: dict[str, list[float]] = {r: [] for r in RUNNERS}
    reports: dict[str, list[dict[str, Any]]] = {r: [] for r in RUNNERS}
    total = args.warmup + args.runs
    with tempfile.TemporaryDirectory(dir=args.out) as scratch:
        for i in range(total):
            for runner in RUNNERS:  # alternated: a slow spell of a shared machine hits both
                wall, report = _run_app(args.study, args.models, Path(scratch) / f"{runner}{i}", env, runner)
                print(f"[app_e2e] {runner} {'warm-up' if i < args.warmup else 'run'} {i + 1}/{total}: {wall:.1f} s", flush=True)
                if i >= args.warmup:
                    walls[runner].append(wall)
                    reports[runner].append(report)
    summaries = {r: summarise(walls[r], reports[r]) for r in RUNNERS}
    app, direct = summaries["app"], summaries["direct"]
    diff = {"wall_p50_s": direct["wall_s"]["p50"] - app["wall_s"]["p50"],
            "wall_p50_ratio": direct["wall_s"]["p50"] / app["wall_s"]["p50"],
            "stages_p50_s": {s: direct["stages_s"][s]["p50"] - v["p50"] for s, v in app["stages_s"].items()
                             if s in direct["stages_s"]},
            "outside_stages_p50_s": {r: summaries[r]["wall_s"]["p50"] - summaries[r]["stages_total_p50_s"] for r in RUNNERS}}
    doc = {"study": str(args.study), "runs_each": args.runs, "warmup_each": args.warmup, "cpu": cpu_identity(),
           "command": "python -m benchmarks.app_e2e " + " ".join(sys.argv[1:]), "app": app, "direct": direct,
           "direct_minus_app": diff}
    (args.out / "app_vs_direct.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wall p50: app {app['wall_s']['p50']:.1f} s, direct {direct['wall_s']['p50']:.1f} s "
          f"(ratio {diff['wall_p50_ratio']:.3f}); outside the stages: {diff['outside_stages_p50_s']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
