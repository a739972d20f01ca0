"""HD-BET through the engine layer against HD-BET in PyTorch FP32: masks and time per pass.

``python -m benchmarks.hd_bet_engines --models <model folder> --shared ../shared --out DIR
[--cases N] [--engines torch,openvino-fp32,openvino-bf16]``

For every volume (the 8 BraTS T1ce volumes, stripped, run as if skull-on, as
``tests/test_brain_masking.py`` does; and the native TCGA exam's T1ce, skull on), each
engine's mask as the app computes it (:func:`operators.spatial.hd_bet.hd_bet_mask`) is
compared with PyTorch FP32's (the reference): Dice, and for BraTS the share of the expert
tumour labels kept. The network pass's seconds and GFLOP/s (HD-BET's FLOP counted once by
``torch.utils.flop_counter`` on the meta device at the padded input shape) are reported
beside the CPU's FP32 peak (:func:`engines.runtimes.cpu_host.fp32_peak_gflops`).

Writes ``DIR/hd_bet_engines.json`` and ``DIR/hd_bet_engines.md``.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from benchmarks.evaluation import dice
from benchmarks.reporting import markdown_header, markdown_row, write_result
from engines.brain.hd_bet_engines import HdBetEngine, OpenVinoHdBet, TorchHdBet
from engines.brain.hd_bet_network import HD_BET_ONNX, hd_bet_weight_files, load_hd_bet_network
from engines.runtimes.cpu_host import cpu_identity, flush_denormals, fp32_peak_gflops
from operators.spatial.hd_bet import hd_bet_mask

BRATS_CASES = ("Brats18_CBICA_ABM_1", "Brats18_TCIA01_201_1", "Brats18_TCIA01_378_1", "Brats18_TCIA02_135_1",
               "Brats18_TCIA02_370_1", "Brats18_TCIA03_265_1", "Brats18_TCIA10_628_1", "Brats18_TCIA13_623_1")
ENGINES = ("torch", "openvino-fp32", "openvino-bf16")


def make_engine(name: str, models: Path) -> HdBetEngine:
    """``torch`` (fold 0, FP32: the reference), ``openvino-fp32`` or ``openvino-bf16``."""
    if name == "torch":
        return TorchHdBet((0,), "cpu")
    return OpenVinoHdBet(models / HD_BET_ONNX, name.removeprefix("openvino-"))


@lru_cache(maxsize=4)
def network_gflop(shape: tuple[int, ...]) -> float:
    """HD-BET's forward FLOP at ``(Z, Y, X)``, in GFLOP (``torch.utils.flop_counter``, meta device)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    (weights,) = hd_bet_weight_files((0,))
    net = load_hd_bet_network(str(weights), "cpu")
    import copy

    meta = copy.deepcopy(net).to("meta")
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        meta(torch.zeros((1, 1, *shape), device="meta"))
    return counter.get_total_flops() / 1e9


def volumes(shared: Path, n_cases: int) -> list[tuple[str, sitk.Image, np.ndarray | None]]:
    """``(name, T1ce image, expert tumour labels (Z, Y, X) bool or None)``."""
    out = []
    for case in BRATS_CASES[:n_cases]:
        d = shared / "data" / "brats18" / case
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(d / f"{case}_seg.nii.gz"))) > 0
        out.append((case, sitk.ReadImage(str(d / f"{case}_t1ce.nii.gz")), labels))
    native = shared / "data" / "native-space" / "TCGA-FG-6692" / "t1c.nii.gz"
    if native.is_file():
        out.append(("TCGA-FG-6692 (native, skull on)", sitk.ReadImage(str(native)), None))
    return out


def run(models: Path, shared: Path, engines: Sequence[str], n_cases: int) -> dict[str, Any]:
    flush_denormals()
    made = {name: make_engine(name, models) for name in engines}
    rows = []
    vols = volumes(shared, n_cases)
    for i, (name, image, labels) in enumerate(vols, 1):
        masks: dict[str, np.ndarray] = {}
        row: dict[str, Any] = {"volume": name, "engines": {}}
        for ename, engine in made.items():
            t0 = time.perf_counter()
            res = hd_bet_mask(image, engine=engine)
            m = sitk.GetArrayFromImage(res.mask) > 0
            masks[ename] = m
            shape = tuple(res.record["network_input_shape"])
            gflop = network_gflop(shape)
            net_s = res.record["duration_network_s"]
            entry = {"network_s": round(net_s, 2), "total_s": round(time.perf_counter() - t0, 2),
                     "gflop": round(gflop, 1), "gflops_per_s": round(gflop / net_s, 1),
                     "mask_ml": round(res.record["mask_ml"], 1)}
            if labels is not None:
                entry["tumour_kept"] = round(float(np.count_nonzero(m & labels) / np.count_nonzero(labels)), 5)
            row["engines"][ename] = entry
            row["input_shape"] = list(shape)
        ref = masks.get("torch")
        for ename, m in masks.items():
            if ref is not None and ename != "torch":
                row["engines"][ename]["dice_vs_torch_fp32"] = round(dice(m, ref), 5)
        rows.append(row)
        print(f"[{i}/{len(vols)}] {name}: " + "; ".join(
            f"{e} {v['network_s']:.1f} s" + (f" Dice {v['dice_vs_torch_fp32']:.4f}" if "dice_vs_torch_fp32" in v else "")
            + (f" kept {v['tumour_kept']:.4f}" if "tumour_kept" in v else "") for e, v in row["engines"].items()),
            flush=True)
    return {"cpu": cpu_identity(), "fp32_peak": fp32_peak_gflops(), "engines": list(engines),
            "engine_descriptions": {e: m.describe() for e, m in made.items()}, "rows": rows,
            "command": "python -m benchmarks.hd_bet_engines " + " ".join(sys.argv[1:])}


def markdown(result: dict[str, Any]) -> str:
    engines = result["engines"]
    peak = result["fp32_peak"]
    columns = ["volume", *(f"{e} s (GFLOP/s)" for e in engines), *(f"{e} Dice vs torch" for e in engines if e != "torch"),
               "tumour kept"]
    lines = [f"# HD-BET engines on {result['cpu']['model']} ({', '.join(result['cpu']['flags'])})", "",
             f"FP32 peak assumed: {peak['gflops']} GFLOP/s = {peak['how']}.", "",
             f"Command: `{result['command']}`", "",
             *markdown_header(columns, "l" * len(columns))]
    for row in result["rows"]:
        ev = row["engines"]
        kept = " / ".join(f"{ev[e]['tumour_kept']:.4f}" for e in engines if "tumour_kept" in ev[e]) or "-"
        lines.append(markdown_row([row["volume"], *(f"{ev[e]['network_s']:.1f} ({ev[e]['gflops_per_s']:.0f})" for e in engines),
                                   *(f"{ev[e]['dice_vs_torch_fp32']:.4f}" for e in engines if e != "torch"), kept]))
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", type=Path, required=True, help="model folder (python -m engines.prepare)")
    p.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--cases", type=int, default=len(BRATS_CASES), help="how many of the 8 BraTS cases")
    p.add_argument("--engines", default=",".join(ENGINES))
    args = p.parse_args(argv)
    result = run(args.models, args.shared, [e for e in args.engines.split(",") if e], args.cases)
    write_result(args.out, "hd_bet_engines", result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
