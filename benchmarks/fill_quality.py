"""How close a filled channel is to the real sequence, and where it goes wrong (no network run).

Usage::

    python -m benchmarks.fill_quality --cases ../shared/data/brats18 --out benchmarks/results/fill_quality \
        [--channel FLAIR] [--figure-case Brats18_TCIA02_135_1] [--figure-subset T1ce+T2]

For every case and every subset of the sequences that lacks ``--channel``, the channel is filled
as the app would fill it (:func:`engines.model.missing.fills.fill_image`, each fill but zero) and
compared, inside the brain mask of the cascade's preprocessing, with the real channel (both
z-scored the same way). Per (subset, fill), means over the cases of each split:

* ``mae``: mean absolute z-score error over the brain;
* ``tumour_z``: mean z-score inside the expert whole tumour (the real FLAIR's edema is bright);
* ``bright_outside_tumour``: share of brain voxels outside the expert whole tumour with z > 2,
  i.e. bright like edema where there is none (CSF that a FLAIR suppresses, left bright, shows
  here); the real channel's share is given beside it.

Outputs: ``fill_quality.json`` and ``fill_quality.png`` (one axial slice through the tumour of
``--figure-case``: the real channel, each fill, and the expert label). The numbers describe the
fills; the strategy table's choice does not use them (that is :mod:`benchmarks.missing_sequences`).
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.missing_sequences import HELD_OUT_CASES, SELECTION_CASES
from benchmarks.reporting import pyplot, save_figure
from engines.model.brats_cases import load_case
from engines.model.cascade import Preprocessed, box_slices, preprocess
from engines.model.missing.fills import fill_image
from engines.model.missing.strategies import DEFAULT_ASSETS, SUBSETS, load_fill_models, subset_available
from engines.model.modalities import CHANNEL_NAMES

log = logging.getLogger("benchmarks.fill_quality")

#: The intensity references and the synthesiser, as :func:`load_fill_models` returns them.
FillModels = tuple[Any, Any]
#: z-score above which a voxel counts as bright (the real FLAIR's edema is mostly above it).
BRIGHT_Z = 2.0
COMPARED_FILLS = ("copy", "matched", "synthesis")


def fill_errors(filled: np.ndarray, real: np.ndarray, brain: np.ndarray, tumour: np.ndarray) -> dict[str, float]:
    """Error measures of one filled channel.

    Parameters
    ----------
    filled, real
        float32 ``(z, y, x)`` z-scores of the filled and of the real channel on one crop.
    brain, tumour
        bool ``(z, y, x)``: the brain mask and the expert whole tumour (labels > 0).

    Returns
    -------
    dict
        ``mae``, ``tumour_z``, ``bright_outside_tumour`` (see the module docstring) of ``filled``,
        and ``real_tumour_z`` / ``real_bright_outside_tumour`` of ``real``.
    """
    outside = brain & ~tumour
    has_tumour = bool((brain & tumour).any())
    return {
        "mae": float(np.abs(filled[brain] - real[brain]).mean()),
        "tumour_z": float(filled[brain & tumour].mean()) if has_tumour else float("nan"),
        "bright_outside_tumour": float((filled[outside] > BRIGHT_Z).mean()),
        "real_tumour_z": float(real[brain & tumour].mean()) if has_tumour else float("nan"),
        "real_bright_outside_tumour": float((real[outside] > BRIGHT_Z).mean()),
    }


def on_full_grid(pre: Preprocessed, crop: np.ndarray, fill_value: float = 0.0) -> np.ndarray:
    """``crop`` ``(z, y, x)`` of ``pre``'s brain box pasted into the whole ``(Z, Y, X)`` grid."""
    out = np.full(pre.full_shape, fill_value, dtype=crop.dtype)
    out[box_slices(pre.brain_box)] = crop
    return out


def measure(cases_dir: Path, channel: int, models: FillModels) -> list[dict[str, Any]]:
    """One row per (case, subset lacking ``channel``, fill) with :func:`fill_errors`, over the
    voxels that are brain both with all four sequences and with the subset (the brain mask is the
    union of the sequences present, so its edge moves by a voxel or so between subsets).
    ``models``: the intensity references and the synthesiser (:func:`load_fill_models`)."""
    references, synthesiser = models
    subsets = [s for s in SUBSETS if not subset_available(s)[channel]]
    rows: list[dict[str, Any]] = []
    for case in (*SELECTION_CASES, *HELD_OUT_CASES):
        t0 = time.perf_counter()
        vols, seg, _ = load_case(cases_dir / case)
        full = preprocess(vols, (True,) * 4, seed=0)
        real = on_full_grid(full, full.image[channel])
        full_brain = on_full_grid(full, full.brain_mask)
        for subset in subsets:
            available = subset_available(subset)
            pre = preprocess(vols, available, seed=0)
            brain = full_brain & on_full_grid(pre, pre.brain_mask)
            for fill in COMPARED_FILLS:
                filled = fill_image(pre.image, pre.brain_mask, available, fill, pre.seed, references, synthesiser)
                rows.append({"case": case, "split": "selection" if case in SELECTION_CASES else "held_out",
                             "subset": subset, "fill": fill,
                             **fill_errors(on_full_grid(pre, filled.image[channel]), real, brain, seg > 0)})
        log.info("%s: %d subsets x %d fills (%.0f s)", case, len(subsets), len(COMPARED_FILLS), time.perf_counter() - t0)
    return rows


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``{split: {subset: {fill: {measure: mean over cases}}}}``."""
    out: dict[str, Any] = {}
    for row in rows:
        out.setdefault(row["split"], {}).setdefault(row["subset"], {}).setdefault(row["fill"], []).append(row)
    keys = ("mae", "tumour_z", "bright_outside_tumour", "real_tumour_z", "real_bright_outside_tumour")
    return {split: {subset: {fill: {k: round(float(np.nanmean([r[k] for r in rs])), 4) for k in keys}
                             for fill, rs in by_fill.items()} for subset, by_fill in by_subset.items()}
            for split, by_subset in out.items()}


def figure(cases_dir: Path, case: str, subset: str, channel: int, models: FillModels, path: Path) -> None:
    """One axial slice through the tumour's centre: the real channel, each fill, the label, all
    on the case's whole grid (the subset's brain box may differ from the all-four one)."""
    plt = pyplot()
    references, synthesiser = models
    vols, seg, _ = load_case(cases_dir / case)
    full = preprocess(vols, (True,) * 4, seed=0)
    available = subset_available(subset)
    pre = preprocess(vols, available, seed=0)
    brain = on_full_grid(full, full.brain_mask)
    z = int(np.argwhere(seg > 0)[:, 0].mean())  # axis 0 is Z (axial slices)
    (_, _), (y0, y1), (x0, x1) = full.brain_box  # shown: the all-four brain box in-plane
    panels = [(f"real {CHANNEL_NAMES[channel]}", on_full_grid(full, full.image[channel]))]
    for fill in COMPARED_FILLS:
        img = fill_image(pre.image, pre.brain_mask, available, fill, pre.seed, references, synthesiser).image
        panels.append((f"{fill} from {subset}", on_full_grid(pre, img[channel])))
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(4 * (len(panels) + 1), 4.4))
    for ax, (title, img) in zip(axes, panels):
        ax.imshow(np.where(brain[z], img[z], np.nan)[y0:y1, x0:x1], cmap="gray", vmin=-2, vmax=4)
        ax.set_title(title, fontsize=10)
    axes[-1].imshow(seg[z, y0:y1, x0:x1], cmap="viridis", vmin=0, vmax=4, interpolation="nearest")
    axes[-1].set_title("expert label (1 NCR, 2 edema, 4 ET)", fontsize=10)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(f"{case}, axial slice {z} of the brain box: z-scores, display -2..4", fontsize=11)
    save_figure(fig, path, dpi=80)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", type=Path, required=True, help="folder of the BraTS case folders")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--channel", choices=CHANNEL_NAMES, default="FLAIR")
    p.add_argument("--assets", type=Path, default=DEFAULT_ASSETS)
    p.add_argument("--figure-case", default=SELECTION_CASES[1])
    p.add_argument("--figure-subset", default="T1ce+T2")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    channel = CHANNEL_NAMES.index(args.channel)
    if subset_available(args.figure_subset)[channel]:
        p.error(f"--figure-subset {args.figure_subset} has {args.channel}: nothing to fill")
    args.out.mkdir(parents=True, exist_ok=True)
    models: FillModels = load_fill_models(args.assets)  # once, for the measure and the figure
    rows = measure(args.cases, channel, models)
    doc = {"channel": args.channel, "bright_z": BRIGHT_Z, "summary": summarise(rows), "rows": rows}
    (args.out / "fill_quality.json").write_text(json.dumps(doc, indent=1) + "\n")
    figure(args.cases, args.figure_case, args.figure_subset, channel, models, args.out / "fill_quality.png")
    for split, by_subset in doc["summary"].items():
        for subset, by_fill in by_subset.items():
            log.info("%s %s: %s", split, subset, "; ".join(
                f"{f} MAE {m['mae']:.2f}, tumour z {m['tumour_z']:.2f} (real {m['real_tumour_z']:.2f}), bright outside "
                f"{100 * m['bright_outside_tumour']:.1f}% (real {100 * m['real_bright_outside_tumour']:.1f}%)"
                for f, m in by_fill.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
