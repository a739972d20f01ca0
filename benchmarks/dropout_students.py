"""The WT networks fine-tuned by modality dropout against the shipped ones, per subset of sequences.

Usage::

    python -m benchmarks.dropout_students --cases ../shared/data/brats18 --students <train_dropout --out> \
        --out benchmarks/results/dropout_students [--models models/brats17-cascade] \
        [--engine openvino-folded] [--subsets T1ce+T2,...]

Protocol (issue 19's fixed split, :data:`benchmarks.missing_sequences.SELECTION_CASES` /
``HELD_OUT_CASES``; the students were trained on the selection cases only): for each subset, on
every case, the cascade runs twice with the strategy table's TC / EN fill and core rule: once as
the table says (the shipped WT networks on the table's WT fill), once with the WT stage's three
networks replaced by the students (withheld channels zero, as they were trained). Every run is a
line of ``runs.jsonl`` in ``--out`` (resumed where it stopped); ``table.md`` and ``summary.json``
hold the means per case group, ``dropout_students.png`` every case. The students are exported
through :func:`engines.prepare.add_fine_tuned` into a scratch copy of the model folder (links to
its files), so they run on the same engine as the shipped networks.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.missing_sequences import HELD_OUT_CASES, REGIONS, SELECTION_CASES, mean_metric, rounded_metrics
from benchmarks.reporting import markdown_header, markdown_row, pyplot, save_figure
from engines.model.brats_cases import load_case
from engines.model.cascade import CascadePredictor, PostProcessing, StageSpec, preprocess
from engines.model.cascade.config import STAGES
from engines.model.missing.fills import stage_inputs
from engines.model.missing.strategies import DEFAULT_ASSETS, load_fill_models, load_table, subset_available
from engines.model.missing.train_dropout import DROPOUT_SUBSETS, STUDENTS
from engines.runtimes.registry import create_engine

log = logging.getLogger("benchmarks.dropout_students")

#: The two WT variants compared.
VARIANTS = ("table", "students")


def staged_model_folder(models: Path, students: Path, scratch: Path) -> Path:
    """A model folder in ``scratch``: links to every file of ``models`` (``manifest.json``
    copied) plus the students of ``students`` exported beside them."""
    from engines.prepare import add_fine_tuned

    folder = scratch / "models"
    folder.mkdir(parents=True, exist_ok=True)
    for f in models.iterdir():
        if f.name == "manifest.json":
            shutil.copyfile(f, folder / f.name)
        elif f.is_file():
            (folder / f.name).symlink_to(f.resolve())
    add_fine_tuned(folder, students)
    return folder


def student_stages() -> dict[str, StageSpec]:
    """:data:`engines.model.cascade.config.STAGES` with the WT stage's networks the students."""
    wt = STAGES["wt"]
    return {**STAGES, "wt": StageSpec("wt", dict(STUDENTS), dict(wt.patch_hw))}


def measure(
    case: tuple[str, tuple[np.ndarray, np.ndarray, tuple[float, float, float]]], subset: str, variant: str,
    entry: dict[str, Any], engine: Any, fill_models: tuple[Any, Any],
) -> dict[str, Any]:
    """One cascade run on ``case`` (its name and :func:`engines.model.brats_cases.load_case`):
    ``variant`` ``"table"`` (the strategy table's fills) or ``"students"`` (the WT stage's input
    zero-filled and its networks the students); metrics per region."""
    name, (vols, seg, spacing) = case
    fills = dict(entry["fills"]) if variant == "table" else {"wt": "zero", "core": entry["fills"]["core"]}
    rules = PostProcessing(keep_core_outside_whole=bool(entry.get("keep_core_outside_whole")))
    t0 = time.perf_counter()
    pre = preprocess(vols, subset_available(subset), seed=0)
    inputs = stage_inputs(pre.image, pre.brain_mask, pre.available, fills, pre.seed, *fill_models)
    predictor = CascadePredictor(engine, student_stages() if variant == "students" else None, rules)
    res = predictor.predict_preprocessed(pre, inputs)
    return {"case": name, "subset": subset, "variant": variant, "fills": fills,
            "keep_core_outside_whole": rules.keep_core_outside_whole,
            "metrics": rounded_metrics(res.labels, seg, spacing), "seconds": round(time.perf_counter() - t0, 1)}


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Subset -> variant -> case group (``selection`` / ``held_out``) -> region -> mean Dice."""
    out: dict[str, Any] = {}
    groups = {"selection": SELECTION_CASES, "held_out": HELD_OUT_CASES}
    for subset in dict.fromkeys(r["subset"] for r in rows):
        for variant in VARIANTS:
            for group, cases in groups.items():
                chosen = [r for r in rows if r["subset"] == subset and r["variant"] == variant and r["case"] in cases]
                if len(chosen) == len(cases):
                    out.setdefault(subset, {}).setdefault(variant, {})[group] = {
                        reg: mean_metric(chosen, reg) for reg in REGIONS}
    return out


def markdown_table(summary: dict[str, Any]) -> str:
    lines = markdown_header(["sequences", "WT networks", "selection: Dice WT / TC / ET",
                             "held out: Dice WT / TC / ET"], "llrr")
    for subset, variants in summary.items():
        for variant, groups in variants.items():
            cells = [" / ".join(f"{groups[g][r]:.3f}" for r in REGIONS) if g in groups else "-"
                     for g in ("selection", "held_out")]
            lines.append(markdown_row([subset, "shipped (table's fills)" if variant == "table" else "students", *cells]))
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Per subset, per case: Dice of each region with the shipped WT networks and with the students."""
    plt = pyplot()
    subsets = list(dict.fromkeys(r["subset"] for r in rows))
    cases = [*SELECTION_CASES, *HELD_OUT_CASES]
    fig, axes = plt.subplots(len(subsets), len(REGIONS), figsize=(4.2 * len(REGIONS), 3.4 * len(subsets)), squeeze=False)
    for i, subset in enumerate(subsets):
        for j, region in enumerate(REGIONS):
            ax = axes[i][j]
            for k, variant in enumerate(VARIANTS):
                by_case = {r["case"]: r["metrics"][region]["dice"] for r in rows
                           if r["subset"] == subset and r["variant"] == variant}
                xs = [n + (k - 0.5) * 0.38 for n, c in enumerate(cases) if c in by_case]
                ax.bar(xs, [by_case[c] for c in cases if c in by_case], width=0.38,
                       label="shipped WT networks (table)" if variant == "table" else "students")
            ax.axvline(len(SELECTION_CASES) - 0.5, color="grey", lw=0.8)
            ax.set_xticks(range(len(cases)), [c.replace("Brats18_", "").removesuffix("_1") for c in cases],
                          rotation=60, fontsize=7)
            ax.set_ylim(0, 1)
            ax.set_title(f"{subset}: {region} Dice (left of line: selection)", fontsize=9)
            if i == 0 and j == 0:
                ax.legend(fontsize=7, loc="lower left")
    save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", type=Path, required=True, help="folder of the BraTS case folders")
    p.add_argument("--students", type=Path, required=True, help="engines.model.missing.train_dropout's --out")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--models", type=Path, default=Path("models/brats17-cascade"))
    p.add_argument("--engine", default="openvino-folded")
    p.add_argument("--subsets", default=",".join(DROPOUT_SUBSETS))
    p.add_argument("--cases-only", default=None, help="comma list of case names (default: all eight)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("engines").setLevel(logging.WARNING)
    table = load_table()["subsets"]
    subsets = [s for s in args.subsets.split(",") if s]
    unknown = [s for s in subsets if s not in table]
    if unknown:
        p.error(f"unknown subsets {unknown}")
    cases = args.cases_only.split(",") if args.cases_only else [*SELECTION_CASES, *HELD_OUT_CASES]
    args.out.mkdir(parents=True, exist_ok=True)
    runs_path = args.out / "runs.jsonl"
    rows = [json.loads(line) for line in runs_path.read_text().splitlines() if line.strip()] if runs_path.exists() else []
    done = {(r["case"], r["subset"], r["variant"]) for r in rows}
    fill_models = load_fill_models(DEFAULT_ASSETS)
    with tempfile.TemporaryDirectory(prefix="dropout-students-") as scratch:
        folder = staged_model_folder(args.models, args.students, Path(scratch))
        engine = create_engine(args.engine, model_dir=folder)
        todo = [(c, s, v) for s in subsets for c in cases for v in VARIANTS if (c, s, v) not in done]
        t0 = time.perf_counter()
        loaded: tuple[str, Any] = ("", None)
        for i, (case, subset, variant) in enumerate(todo):
            if loaded[0] != case:  # the runs of one case follow each other: read it once
                loaded = (case, load_case(args.cases / case))
            row = measure(loaded, subset, variant, table[subset], engine, fill_models)
            rows.append(row)
            with runs_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            spent = time.perf_counter() - t0
            log.info("%s %s %s: Dice %s (%d/%d, %.0f s, about %.0f s left)", case, subset, variant,
                     " / ".join(f"{row['metrics'][r]['dice']:.3f}" for r in REGIONS), i + 1, len(todo), spent,
                     spent / (i + 1) * (len(todo) - i - 1))
    summary = summarise(rows)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (args.out / "table.md").write_text(markdown_table(summary))
    plot(rows, args.out / "dropout_students.png")
    print(markdown_table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
