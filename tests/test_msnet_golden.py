"""Golden check of the PyTorch MSNet port against the original TensorFlow logits.

For each of the nine networks the README's probe input (built in TF layout N, D, H, W, C,
then transposed to NCDHW) is run through the port; the logits (transposed back to
N, D, H, W, classes) must match ``reference/golden_logits.npz`` (float16) within 0.05.
The max error of each network is printed (run with ``-s``) for the record.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.model.weights import NETWORKS, load_network

TOLERANCE = 0.05


def probe_input(shape: tuple[int, int, int, int, int]) -> np.ndarray:
    """The README's probe, layout ``(N, D, H, W, C)`` (channels last), float32."""
    n, d, h, w, c = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    x = np.sin(0.37 * d + 0.11 * h * (c + 1) + 0.9 * n) * np.cos(0.07 * w - 0.5 * c) + 0.25 * np.sin(
        0.013 * h * w + n
    )
    return x.astype(np.float32)


def golden_shapes(reference: Path) -> dict[str, tuple[list[int], list[int]]]:
    """``golden_shapes.txt`` -> ``{name: (input NDHWC, output NDHW classes)}``."""
    out: dict[str, tuple[list[int], list[int]]] = {}
    for line in (reference / "golden_shapes.txt").read_text().splitlines():
        if not line.strip():
            continue
        key = line.split("\t")[0]
        lists = re.findall(r"\[([0-9, ]+)\]", line)
        out[key] = ([int(v) for v in lists[0].split(",")], [int(v) for v in lists[1].split(",")])
    return out


def port_logits(name: str, weights_dir: Path, shape: list[int]) -> np.ndarray:
    """Port logits for the probe, returned in TF layout ``(N, D-8, H, W, 2)``."""
    x = probe_input(tuple(shape))  # type: ignore[arg-type]
    # !! NDHWC (TF) -> NCDHW (PyTorch) for the input, and back for the logits.
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 4, 1, 2, 3)))
    net = load_network(name, weights_dir)
    with torch.inference_mode():
        y = net(xt).numpy()
    return y.transpose(0, 2, 3, 4, 1)


@pytest.mark.parametrize("name", NETWORKS)
def test_golden_logits(name: str, cascade_weights_dir: Path) -> None:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    reference = cascade_weights_dir / "reference"
    key = f"msnet_{name}_20000"
    in_shape, out_shape = golden_shapes(reference)[key]
    with np.load(reference / "golden_logits.npz") as z:
        golden = z[key].astype(np.float32)
    assert list(golden.shape) == out_shape

    got = port_logits(name, cascade_weights_dir, in_shape)
    assert got.shape == golden.shape
    err = float(np.abs(got - golden).max())
    print(f"\n[golden] {name}: max|delta| = {err:.4f} (golden max|logit| {np.abs(golden).max():.1f})")
    assert err < TOLERANCE, f"{name}: max |delta| {err:.4f} >= {TOLERANCE}"
