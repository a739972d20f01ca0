"""The cascade with and without denormals flushed: labels and time, case by case.

``python -m benchmarks.denormals --cases ../shared/data/brats18 --models <model folder> --out DIR
[--case-limit N] [--engine auto]``

Each case's four sequences (BraTS NIfTI, skull-stripped, on their 1 mm grid) go through the
cascade twice with the engine the app would choose: once as the app runs it (denormals flushed:
:mod:`engines.runtimes.cpu_host`), once with flushing off (torch's flag cleared, OpenVINO
compiled without ``CPU_DENORMALS_OPTIMIZATION``, ONNX Runtime without
``session.set_denormal_as_zero``). Reported per case: the networks' seconds both ways, the Dice
per region (WT / TC / ET) between the two label maps and against the expert labels. On AMD
cores the times barely differ; on Intel cores a denormal-heavy network runs many times slower
unflushed. The labels should not change (flushing moves values by < 1.2e-38).

Writes ``DIR/denormals.json`` and ``DIR/denormals.md``.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.evaluation import brats_metrics, dice, region_mask
from benchmarks.reporting import markdown_header, markdown_row, write_result
from engines.model.brats_cases import load_case
from engines.model.cascade import segment_brats_full
from engines.runtimes import cpu_host
from engines.runtimes.registry import choose_engine

REGIONS = ("WT", "TC", "ET")


@contextmanager
def denormals_kept() -> Iterator[None]:
    """Flushing off in every runtime for the duration (the control), restored after."""
    saved_ov, saved_ort = dict(cpu_host.OPENVINO_CPU_CONFIG), dict(cpu_host.ORT_SESSION_CONFIG)
    cpu_host.OPENVINO_CPU_CONFIG.clear()
    cpu_host.OPENVINO_CPU_CONFIG["CPU_DENORMALS_OPTIMIZATION"] = False
    cpu_host.ORT_SESSION_CONFIG.clear()
    torch.set_flush_denormal(False)
    try:
        yield
    finally:
        cpu_host.OPENVINO_CPU_CONFIG.clear()
        cpu_host.OPENVINO_CPU_CONFIG.update(saved_ov)
        cpu_host.ORT_SESSION_CONFIG.update(saved_ort)
        cpu_host.flush_denormals()


def run_case(case_dir: Path, models: Path, engine_name: str) -> dict[str, Any]:
    volumes, truth, spacing = load_case(case_dir)
    out: dict[str, Any] = {"case": case_dir.name}
    labels = {}
    for mode in ("flushed", "kept"):
        with denormals_kept() if mode == "kept" else nullcontext():
            engine, _ = choose_engine(engine_name, models)  # a fresh engine: compiled under the mode's settings
            if mode == "kept":
                torch.set_flush_denormal(False)  # the engine factory flushed again: undone for the control
            t0 = time.perf_counter()
            res = segment_brats_full(volumes, (True,) * 4, engine, seed=0)
            out[f"{mode}_s"] = round(time.perf_counter() - t0, 2)
            out[f"{mode}_network_s"] = round(float(res.timings.get("network", 0.0)), 2)
            out["engine"] = engine.registry_name
        labels[mode] = res.labels
        out[f"{mode}_vs_truth"] = {r: round(m["dice"], 4) for r, m in brats_metrics(res.labels, truth, spacing).items()}
    out["dice_flushed_vs_kept"] = {r: round(dice(region_mask(labels["flushed"], r), region_mask(labels["kept"], r)), 5)
                                   for r in REGIONS}
    out["identical"] = bool(np.array_equal(labels["flushed"], labels["kept"]))
    return out


def markdown(result: dict[str, Any]) -> str:
    cpu = result["cpu"]
    lines = [f"# Denormals flushed or kept: {cpu['model']} ({', '.join(cpu['flags'])})", "",
             f"Command: `{result['command']}`", "",
             *markdown_header(["case", "engine", "networks flushed s", "networks kept s", "kept / flushed",
                               "labels identical", "Dice flushed vs kept WT / TC / ET", "flushed vs truth WT / TC / ET"],
                              "llllllll")]
    for r in result["rows"]:
        ratio = r["kept_network_s"] / r["flushed_network_s"] if r["flushed_network_s"] else float("nan")
        lines.append(markdown_row([r["case"], r["engine"], f"{r['flushed_network_s']:.1f}", f"{r['kept_network_s']:.1f}",
                                   f"{ratio:.2f}", "yes" if r["identical"] else "no",
                                   " / ".join(f"{r['dice_flushed_vs_kept'][k]:.4f}" for k in REGIONS),
                                   " / ".join(f"{r['flushed_vs_truth'][k]:.3f}" for k in REGIONS)]))
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", type=Path, required=True, help="folder of BraTS case folders")
    p.add_argument("--models", type=Path, required=True, help="model folder (python -m engines.prepare)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--case-limit", type=int, default=0, help="only the first N cases (0: all)")
    p.add_argument("--engine", default="auto")
    args = p.parse_args(argv)
    cases = sorted(d for d in args.cases.iterdir() if d.is_dir())
    cases = cases[: args.case_limit] if args.case_limit > 0 else cases
    rows = []
    for i, case in enumerate(cases, 1):
        rows.append(run_case(case, args.models, args.engine))
        r = rows[-1]
        print(f"[{i}/{len(cases)}] {case.name}: networks {r['flushed_network_s']:.1f} s flushed, "
              f"{r['kept_network_s']:.1f} s kept; identical {r['identical']}; Dice {r['dice_flushed_vs_kept']}", flush=True)
    result = {"cpu": cpu_host.cpu_identity(), "rows": rows,
              "command": "python -m benchmarks.denormals " + " ".join(sys.argv[1:] if argv is None else argv)}
    write_result(args.out, "denormals", result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
