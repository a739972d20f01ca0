"""Train the sequence-synthesis network and measure the intensity references (CPU, deterministic).

Usage::

    python -m engines.model.missing.train_synthesis --cases <case dir> ... --out engines/model/missing/assets \
        [--iterations 1000] [--patch 24] [--batch 8] [--seed 0] [--threads 2] [--quick]

What it does, per case (BraTS NIfTI folders as in ``../shared/data/brats18``): the cascade's own
preprocessing (:func:`engines.model.cascade.preprocess`, all four sequences, seed 0), then

* ``intensity_references.json``: the typical z-score quantiles per sequence over the brain
  (mean over the cases of :func:`engines.model.missing.fills.brain_quantiles`), used by the
  ``matched`` fill;
* ``synthesis.pt``: :class:`engines.model.missing.synthesis.SynthesisNet` trained with Adam on
  random ``patch``-cubed crops (half centred on a tumour voxel of the expert labels, half on a
  brain voxel), each with a random one of the 14 proper, non-empty subsets of the sequences
  given and the rest withheld; loss: mean absolute error of the withheld sequences' z-scores
  over the brain;
* ``synthesis_manifest.json``: the command, the cases, the seed, the settings, the library
  versions, the loss curve, the time taken and the SHA-256 of both files.

Determinism: every draw comes from ``numpy.random.default_rng(seed)`` and
``torch.manual_seed(seed)``; with the same torch version, thread count and CPU instruction set
the weights are bit-identical (checked by the tests in quick mode). ``--quick``: 8 iterations
of 16-cubed patches on the given cases, for the test suite (seconds, not a usable network).
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engines.atomic_write import write_bytes_atomically
from engines.model.cascade import preprocess
from engines.model.missing.fills import QUANTILE_LEVELS, brain_quantiles, reference_quantiles
from engines.model.missing.synthesis import DILATIONS, FEATURES, SynthesisNet, network_input
from engines.runtimes.engine_cache import file_sha256

log = logging.getLogger("engines.model.missing.train_synthesis")

#: The 14 availability patterns trained on: every subset of the four with at least one given
#: and at least one withheld.
TRAINING_SUBSETS: tuple[tuple[bool, bool, bool, bool], ...] = tuple(
    tuple(c in given for c in range(4))  # type: ignore[misc]
    for k in (1, 2, 3) for given in combinations(range(4), k)
)


def load_training_case(case_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Preprocessed crop ``(4, z, y, x)``, its brain mask and tumour mask ``(z, y, x)`` of one case."""
    from engines.model.brats_cases import load_case  # nibabel reader, (Z, Y, X)

    vols, seg, _ = load_case(case_dir)
    pre = preprocess(vols, (True,) * 4, seed=0)
    (z0, z1), (y0, y1), (x0, x1) = pre.brain_box
    return pre.image, pre.brain_mask, seg[z0:z1, y0:y1, x0:x1] > 0


def draw_batch(
    cases: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], rng: np.random.Generator, batch: int, patch: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs ``(B, 8, P, P, P)``, targets ``(B, 4, P, P, P)`` and loss weights ``(B, 4, P, P, P)``
    (1 on the brain voxels of withheld channels, else 0)."""
    xs, ys, ws = [], [], []
    for _ in range(batch):
        image, brain, tumour = cases[int(rng.integers(len(cases)))]
        pool = tumour if (rng.random() < 0.5 and tumour.any()) else brain
        centres = np.argwhere(pool)
        centre = centres[int(rng.integers(len(centres)))]
        start = [int(np.clip(c - patch // 2, 0, max(n - patch, 0))) for c, n in zip(centre, brain.shape)]
        sl = tuple(slice(s, s + patch) for s in start)
        img, br = image[(slice(None), *sl)], brain[sl]
        pad = [(0, patch - n) for n in br.shape]
        img = np.pad(img, [(0, 0), *pad])
        br = np.pad(br, pad)
        given = TRAINING_SUBSETS[int(rng.integers(len(TRAINING_SUBSETS)))]
        xs.append(network_input(img, br, given))
        ys.append(np.where(br, img, 0.0).astype(np.float32))
        ws.append(np.stack([br & (not g) for g in given]).astype(np.float32))
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys)), torch.from_numpy(np.stack(ws))


def train(
    cases: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    iterations: int,
    patch: int,
    batch: int,
    seed: int,
    lr: float = 3e-3,
    features: int = FEATURES,
    dilations: Sequence[int] = DILATIONS,
) -> tuple[SynthesisNet, list[float]]:
    """Train a :class:`SynthesisNet` (``features``, ``dilations``: its architecture); returns it
    and the loss of every iteration."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = SynthesisNet(features, dilations)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[int(iterations * 0.7)], gamma=0.25)
    losses: list[float] = []
    t0 = time.perf_counter()
    for it in range(iterations):
        x, y, w = draw_batch(cases, rng, batch, patch)
        loss = ((net(x) - y).abs() * w).sum() / w.sum().clamp_min(1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (it + 1) % max(iterations // 20, 1) == 0 or it + 1 == iterations:
            spent = time.perf_counter() - t0
            recent = float(np.mean(losses[-max(iterations // 20, 1):]))
            log.info("iteration %d/%d: loss %.4f, %.0f s, about %.0f s left", it + 1, iterations, recent, spent,
                     spent / (it + 1) * (iterations - it - 1))
    return net, losses


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", nargs="+", type=Path, required=True, help="BraTS case folders to train on")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--iterations", type=int, default=1000)
    p.add_argument("--patch", type=int, default=24)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads (part of what makes the weights reproducible)")
    p.add_argument("--features", type=int, default=FEATURES, help="feature channels (architecture)")
    p.add_argument("--dilations", default=",".join(map(str, DILATIONS)),
                   help="dilations of the 3x3x3 convolutions, comma-separated (architecture; receptive field "
                        "1 + 2 x their sum voxels)")
    p.add_argument("--quick", action="store_true", help="8 iterations of 16-cubed patches (tests only)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.quick:
        args.iterations, args.patch = 8, 16
    torch.set_num_threads(args.threads)
    missing = [str(c) for c in args.cases if not c.is_dir()]
    if missing:
        p.error(f"case folders not found: {missing}")

    t0 = time.perf_counter()
    cases = []
    for c in args.cases:
        cases.append(load_training_case(c))
        log.info("loaded %s: crop %s", c.name, cases[-1][0].shape)
    args.out.mkdir(parents=True, exist_ok=True)
    refs_path = write_references(cases, [c.name for c in args.cases], args.out)  # before training: no wait for them
    dilations = [int(d) for d in args.dilations.split(",")]
    net, losses = train(cases, args.iterations, args.patch, args.batch, args.seed, features=args.features,
                        dilations=dilations)
    seconds = time.perf_counter() - t0

    weights = args.out / "synthesis.pt"
    buffer = _state_dict_bytes(net)
    write_bytes_atomically(weights, buffer)
    every = max(len(losses) // 20, 1)
    manifest: dict[str, Any] = {
        "command": "python -m engines.model.missing.train_synthesis " + " ".join(sys.argv[1:] if argv is None else argv),
        "cases": [c.name for c in args.cases],
        "seed": args.seed, "iterations": args.iterations, "patch": args.patch, "batch": args.batch,
        "threads": args.threads, "quick": args.quick,
        "architecture": {"features": args.features, "dilations": dilations},
        "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
        "machine": platform.machine(),
        "loss_every_%d_iterations" % every: [round(float(np.mean(losses[i:i + every])), 5)
                                             for i in range(0, len(losses), every)],
        "seconds": round(seconds, 1),
        "files": {weights.name: file_sha256(weights), refs_path.name: file_sha256(refs_path)},
    }
    write_bytes_atomically(args.out / "synthesis_manifest.json", (json.dumps(manifest, indent=1) + "\n").encode())
    log.info("wrote %s (%d bytes), %s; %.0f s", weights, len(buffer), refs_path.name, seconds)
    return 0


def write_references(
    cases: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], names: Sequence[str], out: Path
) -> Path:
    """``intensity_references.json`` in ``out``: per sequence the mean over ``cases`` of its brain
    z-score quantiles (:func:`engines.model.missing.fills.reference_quantiles`)."""
    refs = reference_quantiles([[brain_quantiles(img[c], brain) for c in range(4)] for img, brain, _ in cases])
    path = out / "intensity_references.json"
    write_bytes_atomically(path, (json.dumps({
        "what": "typical z-score quantiles over the brain per sequence (FLAIR, T1, T1ce, T2), mean over the cases",
        "levels": [float(v) for v in QUANTILE_LEVELS],
        "quantiles": dict(zip(("FLAIR", "T1", "T1ce", "T2"), refs)),
        "cases": list(names),
    }, indent=1) + "\n").encode())
    return path


def _state_dict_bytes(net: SynthesisNet) -> bytes:
    """The ``state_dict`` serialised by ``torch.save`` (bytes, so that it is written atomically)."""
    import io

    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    return buf.getvalue()


if __name__ == "__main__":
    sys.exit(main())
