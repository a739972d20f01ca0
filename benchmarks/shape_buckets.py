"""In-plane shape buckets: what they change in the labels, and how many batch shapes they leave.

Usage::

    python -m benchmarks.shape_buckets --cases ../shared/data/brats18 --out benchmarks/results/shape_buckets \
        [--models models/brats17-cascade] [--engine auto] [--buckets 16,32]

Protocol: every case with all four sequences, the cascade on one engine in this process, once
per variant: ``exact`` (the patches as the CPU engines run them, seed 0), ``bucket<N>`` (the
in-plane patches rounded up to ``base + k * N``, seed 0: what a GPU engine asks for,
:data:`engines.runtimes.base.GPU_INPLANE_BUCKET`) and ``seed1`` (exact patches, noise seed 1:
how far the labels move when only the noise padding changes, the scale any bucket's change is
read against). Per run: Dice / HD95 per region against the expert labels, the Dice of each
region against the ``exact`` run's labels, the ``(network, batch shape)`` pairs the engine was
given and the seconds inside the engine. Each run is a line of ``runs.jsonl`` in ``--out``
(resumed where it stopped); ``summary.json``, ``table.md`` and ``shape_buckets.png`` (per case:
the change of each region's Dice against the expert labels, per variant) are rewritten at the end.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.app_e2e import ShapeRecordingEngine
from benchmarks.evaluation import dice, region_mask
from benchmarks.missing_sequences import REGIONS, rounded_metrics
from benchmarks.reporting import markdown_header, markdown_row, pyplot, save_figure
from engines.model.brats_cases import load_case
from engines.model.cascade import CascadePredictor
from engines.runtimes.registry import choose_engine

log = logging.getLogger("benchmarks.shape_buckets")


def variant_settings(variant: str) -> tuple[int | None, int]:
    """``(in-plane bucket, noise seed)`` of a variant name (``exact``, ``seed1``, ``bucket16`` ...)."""
    if variant == "exact":
        return None, 0
    if variant == "seed1":
        return None, 1
    if variant.startswith("bucket") and variant[6:].isdigit():
        return int(variant[6:]), 0
    raise ValueError(f"unknown variant {variant!r}")


def measure_case(name: str, case_dir: Path, engine: Any, variants: Sequence[str]) -> list[dict[str, Any]]:
    """Every variant on one case; ``exact`` first (the others are compared with its labels)."""
    vols, seg, spacing = load_case(case_dir)
    rows, exact_labels = [], None
    for variant in ["exact", *[v for v in variants if v != "exact"]]:
        bucket, seed = variant_settings(variant)
        recorder = ShapeRecordingEngine(engine)
        t0 = time.perf_counter()
        result = CascadePredictor(recorder, inplane_bucket=bucket).predict(vols, [True] * 4, seed=seed)
        seconds = time.perf_counter() - t0
        if exact_labels is None:
            exact_labels = result.labels
        agreement = {r: round(dice(region_mask(result.labels, r), region_mask(exact_labels, r)), 5) for r in REGIONS}
        shapes = sorted({f"{net}:{'x'.join(map(str, shape[3:]))}" for net, shape in recorder.calls})
        rows.append({"case": name, "variant": variant, "bucket": bucket, "seed": seed,
                     "metrics": rounded_metrics(result.labels, seg, spacing),
                     "dice_exact": {r: round(dice(region_mask(result.labels, r), region_mask(seg, r)), 5) for r in REGIONS},
                     "agreement_with_exact": agreement, "shapes": shapes, "network_calls": len(recorder.calls),
                     "network_s": round(float(result.timings.get("network", 0.0)), 2), "seconds": round(seconds, 1)})
        log.info("%s %s: agreement %s, %d shapes, %.0f s", name, variant, agreement, len(shapes), seconds)
    return rows


def summarise(rows: Sequence[dict[str, Any]], variants: Sequence[str]) -> dict[str, Any]:
    """Per variant: the mean and largest |change| of each region's Dice against the expert labels
    (vs ``exact``), the lowest agreement with ``exact``, distinct shapes per case and over all cases."""
    by_case: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_case.setdefault(row["case"], {})[row["variant"]] = row
    out: dict[str, Any] = {"cases": sorted(by_case), "variants": {}}
    for variant in ["exact", *[v for v in variants if v != "exact"]]:
        done = [c for c in by_case.values() if variant in c and "exact" in c]
        deltas = {r: [c[variant]["dice_exact"][r] - c["exact"]["dice_exact"][r] for c in done] for r in REGIONS}
        shapes_all = sorted({s for c in done for s in c[variant]["shapes"]})
        out["variants"][variant] = {
            "cases": len(done),
            "mean_dice": {r: round(float(np.mean([c[variant]["dice_exact"][r] for c in done])), 5) for r in REGIONS},
            "mean_delta_dice": {r: round(float(np.mean(deltas[r])), 5) for r in REGIONS},
            "max_abs_delta_dice": {r: round(float(np.max(np.abs(deltas[r]))), 5) for r in REGIONS},
            "min_agreement_with_exact": {r: min(c[variant]["agreement_with_exact"][r] for c in done) for r in REGIONS},
            "shapes_per_case_mean": round(float(np.mean([len(c[variant]["shapes"]) for c in done])), 2),
            "shapes_all_cases": len(shapes_all),
            "network_s_ratio_to_exact": round(float(np.sum([c[variant]["network_s"] for c in done])
                                                    / np.sum([c["exact"]["network_s"] for c in done])), 3),
        }
    return out


def markdown_table(summary: dict[str, Any], engine: str, command: str) -> str:
    lines = [f"# In-plane shape buckets ({len(summary['cases'])} cases, all four sequences, engine {engine})", "",
             f"`{command}`", "",
             *markdown_header(["variant", "mean Dice WT / TC / ET", "mean change", "largest \\|change\\|",
                               "lowest agreement with exact", "shapes per case", "shapes, all cases",
                               "network time / exact"], "lrrrrrrr")]
    def per_region(values: dict[str, float], fmt: str = ".4f") -> str:
        return " / ".join(format(values[r], fmt) for r in REGIONS)

    for variant, v in summary["variants"].items():
        lines.append(markdown_row([
            variant, per_region(v["mean_dice"]), per_region(v["mean_delta_dice"], "+.4f"),
            per_region(v["max_abs_delta_dice"]), per_region(v["min_agreement_with_exact"]),
            f"{v['shapes_per_case_mean']:.1f}", str(v["shapes_all_cases"]), f"{v['network_s_ratio_to_exact']:.2f}"]))
    lines += ["", "Change: Dice against the expert labels minus the exact run's (same case, same engine, this run); "
              "agreement: Dice of the variant's region against the exact run's. Network time: CPU, a patch's cost "
              "grows with its area (GPU engines gain from fewer shapes, which this CPU run does not show)."]
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[dict[str, Any]], variants: Sequence[str], path: Path) -> None:
    plt = pyplot()
    cases = sorted({r["case"] for r in rows})
    exact = {r["case"]: r for r in rows if r["variant"] == "exact"}
    others = [v for v in variants if v != "exact"]
    fig, axes = plt.subplots(1, len(REGIONS), figsize=(4 * len(REGIONS), 3.5), sharey=True)
    for ax, region in zip(axes, REGIONS):
        for i, variant in enumerate(others):
            ys = [next((r["dice_exact"][region] - exact[c]["dice_exact"][region] for r in rows
                        if r["case"] == c and r["variant"] == variant), np.nan) for c in cases]
            ax.plot(np.arange(len(cases)) + 0.15 * i, ys, "o", label=variant)
        ax.axhspan(-0.001, 0.001, color="0.85", zorder=0)
        ax.axhline(0, color="0.4", lw=0.8)
        ax.set_title(f"{region}: Dice change vs exact patches")
        ax.set_xticks(range(len(cases)), [c.replace("Brats18_", "")[:-2] for c in cases], rotation=60, fontsize=7)
    axes[0].set_ylabel("Dice (variant) - Dice (exact)")
    axes[-1].legend(fontsize=8)
    save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=Path, required=True, help="folder of BraTS case folders")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--models", type=Path, default=Path("models/brats17-cascade"))
    ap.add_argument("--engine", default="auto")
    ap.add_argument("--buckets", default="16,32", help="bucket sizes to compare, comma-separated")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    variants = ["exact", *[f"bucket{int(b)}" for b in args.buckets.split(",")], "seed1"]
    args.out.mkdir(parents=True, exist_ok=True)
    runs_path = args.out / "runs.jsonl"
    rows = [json.loads(ln) for ln in runs_path.read_text().splitlines() if ln.strip()] if runs_path.exists() else []
    done = {r["case"] for r in rows if {x["variant"] for x in rows if x["case"] == r["case"]} >= set(variants)}
    engine, _ = choose_engine(args.engine, args.models)
    cases = sorted(p for p in args.cases.iterdir() if p.is_dir())
    t0 = time.perf_counter()
    for i, case_dir in enumerate(cases):
        if case_dir.name in done:
            continue
        rows = [r for r in rows if r["case"] != case_dir.name] + measure_case(case_dir.name, case_dir, engine, variants)
        runs_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        log.info("case %d/%d done, %.0f s", i + 1, len(cases), time.perf_counter() - t0)
    summary = summarise(rows, variants)
    summary["engine"] = engine.describe()
    command = "python -m benchmarks.shape_buckets " + " ".join(sys.argv[1:] if argv is None else argv)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (args.out / "table.md").write_text(markdown_table(summary, engine.registry_name, command))
    plot(rows, variants, args.out / "shape_buckets.png")
    print((args.out / "table.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
