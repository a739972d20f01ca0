"""The GPU check's end-to-end phases: the study made from the case, ``python -m app`` on it, and
the stages without Holoscan (``python -m app.direct``) cold and warm.

Cold: a fresh process per study, the engine already built (a first, uncounted process fills the
engine cache in the shared work folder, as a MAP with a mounted cache has it); warm: one process
given ``--e2e-warm`` studies, the first of which is left out (it is that process' cold one). Per
stage (``report.json``'s ``stage_breakdown_s``) and for the wall time: p50 / p95 / max / mean.

Labels: the first cold run's SEG against the expert labels (Dice per written region, on the
reference series' grid) and, for the whole case of the CPU reference, against the Dice the CPU
path reached on the same study (:data:`CPU_REFERENCE`, written on the CPU by
``python -m benchmarks.gpu_check_e2e --cpu-reference``).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
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

log = logging.getLogger("benchmarks.gpu_check")

REPO = Path(__file__).resolve().parents[1]
#: What ``python -m app`` imports beyond torch / numpy / scipy.
APP_MODULES = ("holoscan", "monai.deploy", "SimpleITK", "pydicom", "highdicom")
#: What ``python -m app.direct`` imports beyond torch / numpy / scipy (no Holoscan, no SDK).
DIRECT_MODULES = ("SimpleITK", "pydicom", "highdicom")
#: The CPU path's Dice on run.sh's study (the case the GPU check's phase 5 runs by default).
CPU_REFERENCE = REPO / "benchmarks" / "results" / "cpu_reference" / "Brats18_TCIA01_201_1.json"


def missing_modules(names: Sequence[str]) -> list[str]:
    """Those of ``names`` this interpreter cannot import."""
    out = []
    for n in names:
        try:
            if importlib.util.find_spec(n) is None:
                out.append(n)
        except (ImportError, ValueError):
            out.append(n)
    return out


def make_case_study(args: argparse.Namespace, seg: np.ndarray, work: Path) -> tuple[Path | None, str]:
    """A DICOM study of the case in ``work/study`` (``--quick``: a 12-slice slab around the
    tumour; ``seg``: the labels, uncropped, (Z, Y, X)). Returns ``(dicom folder, description)``,
    or ``(None, why not)``."""
    cmd = [sys.executable, "-m", "samples.make_study", str(args.case), str(work / "study"), "--quiet"]
    if args.quick:  # a slab of the case around the tumour: same code, fewer slices
        z = np.nonzero(seg.any(axis=(1, 2)))[0]
        centre = int(z.mean()) if z.size else seg.shape[0] // 2
        cmd += ["--slices", f"{max(centre - 6, 0)}:{min(centre + 6, seg.shape[0])}"]
        what = f"slab {cmd[-1]} of {args.case.name}"
    else:
        what = f"{args.case.name}, four series, {seg.shape[2]}x{seg.shape[1]}x{seg.shape[0]}"
    made = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if made.returncode != 0:
        return None, f"make_study exit {made.returncode}: {made.stderr.strip()[-300:]}"
    return work / "study" / "dicom", what


def _report_facts(report: dict[str, Any]) -> dict[str, Any]:
    engine = (report.get("segmentation") or {}).get("engine", {})
    return {"status": report.get("status"), "stages_s": report.get("timings_s", {}),
            "breakdown_s": report.get("stage_breakdown_s", {}), "engine": engine.get("engine"),
            "choice_reason": engine.get("choice_reason"),
            "segmentation_timings_s": (report.get("segmentation") or {}).get("timings_s", {})}


def app_end_to_end(args: argparse.Namespace, study: Path, budget: Budget, engine: str, work: Path) -> dict[str, Any]:
    """``python -m app`` on ``study``, ``--app-runs`` times: stage times from ``report.json``.

    The first run starts cold (compilation, engine cache empty); later runs reuse the engine
    cache in the same work folder, as a MAP with a mounted cache does.
    """
    missing = missing_modules(APP_MODULES)
    if missing:
        return {"status": "skipped", "reason": f"the app's stack is not importable here (missing: {', '.join(missing)})"}
    res: dict[str, Any] = {"status": "ok", "engine_requested": engine, "runs": []}
    env = {**os.environ, "BRATS_ENGINE": engine, "PYTHONUNBUFFERED": "1"}
    for i in range(args.app_runs):
        need = res["runs"][-1]["wall_s"] * 1.2 if res["runs"] else 60.0
        if not budget.allows(need):
            res["runs"].append({"skipped": budget.skip_reason(f"app run {i + 1}", need)})
            break
        out_dir = work / f"app-out{i}"
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "app", "-i", str(study), "-o", str(out_dir),
                               "-m", str(args.models), "-w", str(work / "work")],
                              cwd=REPO, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t
        run: dict[str, Any] = {"exit_code": proc.returncode, "wall_s": wall, "cold": i == 0}
        if (out_dir / "report.json").is_file():
            run.update(_report_facts(json.loads((out_dir / "report.json").read_text())))
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


def _direct(studies: list[Path], out: Path, args: argparse.Namespace, work: Path, env: dict[str, str]) -> dict[str, Any]:
    """One ``python -m app.direct`` process on ``studies``: its wall time and its runs."""
    timings = out.parent / f"{out.name}.json"
    cmd = [sys.executable, "-m", "app.direct", *[a for s in studies for a in ("-i", str(s))], "-o", str(out),
           "-m", str(args.models), "-w", str(work / "work"), "--timings", str(timings)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    runs = json.loads(timings.read_text())["runs"] if timings.is_file() else []
    reports = [Path(r["output"]) / "report.json" for r in runs]
    for r, path in zip(runs, reports):
        if path.is_file():
            r.update(_report_facts(json.loads(path.read_text())))
    res = {"exit_code": proc.returncode, "process_wall_s": wall, "runs": runs}
    if proc.returncode != 0:
        res["log_tail"] = (proc.stdout + proc.stderr)[-600:]
    return res


def stage_percentiles(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """p50 / p95 / max / mean / n per stage of ``stage_breakdown_s`` over ``runs``."""
    stages = sorted({k for r in runs for k in (r.get("breakdown_s") or {})})
    return {s: percentiles([float((r.get("breakdown_s") or {}).get(s, 0.0)) for r in runs]) for s in stages}


def direct_end_to_end(args: argparse.Namespace, study: Path, budget: Budget, engine: str, work: Path) -> dict[str, Any]:
    """The stages without Holoscan (``app.direct``), cold and warm (see the module docstring)."""
    missing = missing_modules(DIRECT_MODULES)
    if missing:
        return {"status": "skipped", "reason": f"app.direct's stack is not importable here (missing: {', '.join(missing)}; "
                                               "the spatial stages and the DICOM reading / writing need them: they travel "
                                               "in .gpu-carry, bash benchmarks/stage_gpu_carry.sh)"}
    env = {**os.environ, "BRATS_ENGINE": engine, "PYTHONUNBUFFERED": "1"}
    res: dict[str, Any] = {"status": "ok", "engine_requested": engine, "study": str(study)}
    if args.e2e_build:
        t = time.perf_counter()
        res["build"] = _direct([study], work / "direct-build", args, work, env)
        log.info("app.direct build run: exit %d, %.1f s", res["build"]["exit_code"], time.perf_counter() - t)
    cold: list[dict[str, Any]] = []
    for i in range(args.e2e_cold):
        need = cold[-1]["process_wall_s"] * 1.2 if cold else 60.0
        if not budget.allows(need):
            res["cold_skipped"] = budget.skip_reason(f"cold process {i + 1}", need)
            break
        cold.append(_direct([study], work / f"direct-cold{i}", args, work, env))
        log.info("app.direct cold process %d: exit %d, %.1f s", i + 1, cold[-1]["exit_code"], cold[-1]["process_wall_s"])
    res["cold_processes"] = cold
    warm_need = (cold[-1]["process_wall_s"] if cold else 60.0) * args.e2e_warm
    if budget.allows(warm_need):
        res["warm_process"] = _direct([study] * args.e2e_warm, work / "direct-warm", args, work, env)
        log.info("app.direct warm process (%d studies): exit %d, %.1f s", args.e2e_warm,
                 res["warm_process"]["exit_code"], res["warm_process"]["process_wall_s"])
    else:
        res["warm_skipped"] = budget.skip_reason("warm process", warm_need)
    ok_cold = [c for c in cold if c["exit_code"] == 0]
    warm_runs = [r for r in (res.get("warm_process") or {}).get("runs", [])[1:] if r.get("exit_code") == 0]
    if ok_cold:
        res["cold"] = {"process_wall_s": percentiles([c["process_wall_s"] for c in ok_cold]),
                       "study_wall_s": percentiles([c["runs"][0]["wall_s"] for c in ok_cold]),
                       "stages_s": stage_percentiles([c["runs"][0] for c in ok_cold])}
    if warm_runs:
        res["warm"] = {"study_wall_s": percentiles([r["wall_s"] for r in warm_runs]),
                       "stages_s": stage_percentiles(warm_runs)}
    if not ok_cold and not warm_runs:
        res["status"] = "failed"
        res["reason"] = "no app.direct run succeeded"
    elif ok_cold:
        try:
            res["labels"] = labels_against_references(Path(ok_cold[0]["runs"][0]["output"]), study.parent,
                                                      whole_case=not args.quick)
        except Exception as exc:  # the timings stand without it; say why (a device run is not repeated lightly)
            res["labels"] = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"[:300]}
    return res


def labels_against_references(output: Path, study_root: Path, whole_case: bool,
                              reference_file: Path = CPU_REFERENCE) -> dict[str, Any]:
    """Dice per written region of ``output``'s SEG against the expert labels of the study made
    by ``samples.make_study`` in ``study_root``; ``whole_case``: also the change against the
    CPU path's Dice in ``reference_file`` when it is of the same case and regions."""
    from benchmarks.clinical_profiles import region_dice

    report = json.loads((output / "report.json").read_text())
    res: dict[str, Any] = {"dice_vs_expert": region_dice(output, report, study_root)}
    case = json.loads((study_root / "study.json").read_text()).get("patient_id")
    ref = json.loads(reference_file.read_text()) if reference_file.is_file() else None
    if not whole_case or ref is None or ref["case"] != case or set(ref["dice_vs_expert"]) != set(res["dice_vs_expert"]):
        res["vs_cpu_path"] = {"status": "skipped", "reason": f"no CPU reference for this study ({case}, "
                                                                f"{'whole case' if whole_case else 'a slab'})"}
        return res
    delta = {r: round(res["dice_vs_expert"][r] - d, 4) for r, d in ref["dice_vs_expert"].items()}
    res["vs_cpu_path"] = {"status": "ok", "cpu_dice_vs_expert": ref["dice_vs_expert"], "delta_dice": delta,
                          "max_abs_delta_dice": max(abs(d) for d in delta.values()), "reference": ref["command"]}
    return res


def write_cpu_reference(output: Path, study_root: Path, path: Path, command: str) -> dict[str, Any]:
    """The CPU path's Dice on a ``samples.make_study`` study, as :func:`labels_against_references`
    compares a GPU run with it: written to ``path`` with the command, the engine and the CPU."""
    from engines.runtimes.cpu_host import cpu_identity

    report = json.loads((output / "report.json").read_text())
    doc = {"case": json.loads((study_root / "study.json").read_text()).get("patient_id"),
           "dice_vs_expert": labels_against_references(output, study_root, whole_case=False)["dice_vs_expert"],
           "engine": (report.get("segmentation") or {}).get("engine", {}).get("engine"),
           "command": command, "cpu": cpu_identity()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return doc


def end_to_end(args: argparse.Namespace, seg: np.ndarray, budget: Budget, engine: str) -> dict[str, Any]:
    """Phase 5: the study, then ``python -m app`` and ``app.direct`` on it; ``--no-app`` skips both."""
    if args.no_app:
        return {"status": "skipped", "reason": "--no-app"}
    work = Path(tempfile.mkdtemp(prefix="gpu-check-app-"))
    t = time.perf_counter()
    study, what = make_case_study(args, seg, work)
    if study is None:
        return {"status": "failed", "reason": what}
    res: dict[str, Any] = {"status": "ok", "study": what, "make_study_s": time.perf_counter() - t}
    res["app"] = app_end_to_end(args, study, budget, engine, work)
    res["direct"] = direct_end_to_end(args, study, budget, engine, work)
    if all(res[k]["status"] != "ok" for k in ("app", "direct")):
        res["status"] = "failed" if any(res[k]["status"] == "failed" for k in ("app", "direct")) else "skipped"
        res["reason"] = "; ".join(f"{k}: {res[k].get('reason')}" for k in ("app", "direct"))
    return res


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check_e2e",
                                description="Write the CPU path's Dice on a make_study study (the GPU check's reference).")
    p.add_argument("--cpu-reference", type=Path, required=True, metavar="OUTPUT",
                   help="the output folder of python -m app (or app.direct) on the study")
    p.add_argument("--study", type=Path, required=True, help="the folder samples.make_study wrote (study.json, dicom/)")
    p.add_argument("--out", type=Path, default=CPU_REFERENCE)
    args = p.parse_args(argv)
    doc = write_cpu_reference(args.cpu_reference, args.study, args.out,
                              "python -m benchmarks.gpu_check_e2e " + " ".join(sys.argv[1:] if argv is None else argv))
    print(json.dumps(doc["dice_vs_expert"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
