"""Fine-tune the WT networks for an absent FLAIR: modality dropout, distilled from the four-sequence cascade.

Usage::

    python -m engines.model.missing.train_dropout --cases <case dir> ... --out <dir> \
        [--steps 900] [--batch 2] [--patch 96] [--lr 2e-4] [--label-weight 0.5] [--seed 0] \
        [--threads 2] [--max-seconds S] [--quick]

Student and teacher
    The students start as copies of the shipped WT networks (``wt32``, ``wt32sg``, ``wt32cr``)
    and are written as :data:`STUDENTS` (``wt32md``, ...: same architecture, other weights,
    :func:`engines.model.weights.base_network`). The teacher is the shipped WT stage on all four
    sequences (the mean of its three views' foreground softmax, as the cascade computes it),
    frozen and computed once per case; it gives a target for every voxel of every case.
Batches
    Step ``s`` trains the view ``VIEWS[s % 3]``: ``batch`` slabs of 19 x ``patch`` x ``patch``
    voxels in that view's order (11 output slices, 4 context slices each side), half centred on
    a tumour voxel (teacher or expert label), half on a brain voxel, all from the cascade's own
    preprocessing of the full case (:func:`engines.model.cascade.preprocess`, seed 0). One
    subset of sequences per batch (the networks normalise with batch statistics, so a batch
    holds one subset, as at inference), drawn from :data:`DROPOUT_SUBSETS` (the subsets without
    FLAIR; ``T1ce+T2`` half of the time): the withheld channels are zero everywhere, patch
    padding included -- the zero fill the app gives the WT stage.
Loss
    Binary cross-entropy of the student's foreground logit (``l1 - l0``) against the teacher's
    probability, plus ``label_weight`` times that against the expert whole-tumour label, over
    the output voxels inside the volume; Adam, constant ``lr``.
Determinism and resuming
    Step ``s`` draws everything from ``numpy.random.default_rng([seed, s])``; there is no other
    randomness. With the same torch version, thread count and CPU instruction set the weights
    are bit-identical (the tests check it in quick mode). A checkpoint (``checkpoint.pt`` in
    ``--out``: weights, optimiser states, losses) is written every ``--checkpoint-every`` steps
    and when ``--max-seconds`` runs out; the same command resumes from it, and refuses to when
    its settings differ.
Outputs (``--out``)
    ``wt32md.pt``, ``wt32sgmd.pt``, ``wt32crmd.pt`` (MSNet state dicts, the format of
    :mod:`engines.prepare`'s ``<network>.pt``) and ``dropout_manifest.json``: the command, cases,
    settings, steps, seed, library versions, loss curve, time taken, the SHA-256 of every file
    and of the shipped weights it started from. ``teacher/<case>.npz`` caches the teacher.

``--quick``: 6 steps of batch 1 on 32 x 32 patches of the given cases, teacher on a 48-voxel
crop (tests only; not a usable network).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from engines.atomic_write import write_bytes_atomically
from engines.model.cascade import OUT_SLICES, CascadePredictor, extract_patch, preprocess
from engines.model.cascade.config import CONTEXT, STAGES, VIEWS, StageSpec, smoke_stages
from engines.model.cascade.tiling import to_view
from engines.model.missing.strategies import subset_available
from engines.model.msnet import MSNet
from engines.model.weights import DROPOUT_SUFFIX, default_weights_dir, load_network, npz_path
from engines.runtimes.base import InferenceEngine
from engines.runtimes.cpu_host import flush_denormals
from engines.runtimes.engine_cache import file_sha256
from engines.runtimes.registry import create_engine

log = logging.getLogger("engines.model.missing.train_dropout")

#: The shipped WT networks by view, and the students fine-tuned from them.
TEACHERS: dict[str, str] = dict(STAGES["wt"].networks)
STUDENTS: dict[str, str] = {view: name + DROPOUT_SUFFIX for view, name in TEACHERS.items()}
#: The subsets the students are trained for: every subset without FLAIR. The first is drawn half
#: of the time, the others share the other half.
DROPOUT_SUBSETS: tuple[str, ...] = ("T1ce+T2", "T1+T1ce+T2", "T1+T2", "T1+T1ce", "T2", "T1ce", "T1")
MANIFEST = "dropout_manifest.json"
CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class TrainingView:
    """One case in one view's order: what the batches of that view are cut from.

    Attributes
    ----------
    image
        float32 ``(4, D, H, W)``: the preprocessed crop (all four sequences), view order.
    targets
        float32 ``(3, D, H, W)``: the four-sequence WT stage's foreground probability (the
        teacher), the expert whole tumour (labels > 0) as 0 / 1, and 1 (inside the volume).
    brain
        bool ``(D, H, W)``.
    """

    image: np.ndarray
    targets: np.ndarray
    brain: np.ndarray

    @cached_property
    def tumour_voxels(self) -> np.ndarray:
        """``(n, 3)`` indices of the voxels the teacher or the expert calls tumour (computed once)."""
        return np.argwhere((self.targets[0] > 0.5) | (self.targets[1] > 0.5))

    @cached_property
    def brain_voxels(self) -> np.ndarray:
        """``(n, 3)`` indices of the brain's voxels (computed once)."""
        return np.argwhere(self.brain)


def teacher_probability(
    image: np.ndarray, teacher_engine: InferenceEngine, stages: Mapping[str, StageSpec] | None = None
) -> np.ndarray:
    """float32 ``(z, y, x)``: the shipped WT stage on the four-sequence crop ``image`` (4, z, y, x),
    seed 0 (``stages``: the protocol's unless a smoke run says otherwise)."""
    return CascadePredictor(teacher_engine, stages).predict_stage("wt", image, seed=0).probability


def load_training_case(
    case_dir: Path,
    teacher_engine: InferenceEngine,
    cache: Path,
    crop: int | None = None,
    stages: Mapping[str, StageSpec] | None = None,
) -> dict[str, TrainingView]:
    """View name -> :class:`TrainingView` of one BraTS case folder; the teacher is read from
    ``cache/<case>.npz`` when there, else computed (:func:`teacher_probability`) and stored.
    ``crop``: keep only the central ``crop`` voxels of every axis (quick mode)."""
    from engines.model.brats_cases import load_case  # nibabel reader, (Z, Y, X)

    vols, seg, _ = load_case(case_dir)
    pre = preprocess(vols, (True,) * 4, seed=0)
    sl = tuple(slice(a, b) for a, b in pre.brain_box)
    image, brain, label = pre.image, pre.brain_mask, (seg[sl] > 0).astype(np.float32)
    if crop:
        centre = tuple(slice(max(n // 2 - crop // 2, 0), max(n // 2 - crop // 2, 0) + crop) for n in brain.shape)
        image, brain, label = np.ascontiguousarray(image[(slice(None), *centre)]), brain[centre], label[centre]
    path = cache / f"{case_dir.name}{f'.crop{crop}' if crop else ''}.npz"
    if path.is_file():
        with np.load(path) as npz:
            teacher = npz["teacher"]
    else:
        t0 = time.perf_counter()
        teacher = teacher_probability(image, teacher_engine, stages)
        buf = io.BytesIO()
        np.savez_compressed(buf, teacher=teacher)
        write_bytes_atomically(path, buf.getvalue())
        log.info("teacher of %s: %.0f s", case_dir.name, time.perf_counter() - t0)
    if teacher.shape != brain.shape:
        raise ValueError(f"{path}: teacher {teacher.shape} is not the crop's {brain.shape}; delete the cache")
    targets = np.stack([teacher, label, np.ones_like(label)]).astype(np.float32)
    return {view: TrainingView(to_view(image, view), to_view(targets, view), to_view(brain[None], view)[0])
            for view in VIEWS}


def draw_batch(
    cases: Sequence[TrainingView], rng: np.random.Generator, batch: int, patch: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """One training batch of a view.

    Returns
    -------
    tuple
        Input ``(B, 4, 19, P, P)`` (withheld channels zero), teacher and label targets
        ``(B, 11, P, P)``, a weight ``(B, 11, P, P)`` (1 inside the volume, else 0), and the
        subset's name.
    """
    subset = DROPOUT_SUBSETS[0] if rng.random() < 0.5 else DROPOUT_SUBSETS[1 + int(rng.integers(len(DROPOUT_SUBSETS) - 1))]
    available = subset_available(subset)
    xs, teachers, labels, weights = [], [], [], []
    for _ in range(batch):
        case = cases[int(rng.integers(len(cases)))]
        tumour = case.tumour_voxels
        pool = tumour if (rng.random() < 0.5 and len(tumour)) else case.brain_voxels
        d, h, w = (int(v) for v in pool[int(rng.integers(len(pool)))])
        out_start = (d - OUT_SLICES // 2, h - patch // 2, w - patch // 2)
        in_start = (out_start[0] - CONTEXT, *out_start[1:])
        x = extract_patch(case.image, in_start, (OUT_SLICES + 2 * CONTEXT, patch, patch), rng, available)
        x[[not a for a in available]] = 0.0  # withheld: zero inside the volume too (the zero fill)
        xs.append(x)
        t, y, inside = extract_patch(case.targets, out_start, (OUT_SLICES, patch, patch), rng, (False,) * 3)
        teachers.append(t)
        labels.append(y)
        weights.append(inside)
    return (torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(teachers)), torch.from_numpy(np.stack(labels)),
            torch.from_numpy(np.stack(weights)), subset)


def distillation_loss(
    logits: torch.Tensor, teacher: torch.Tensor, label: torch.Tensor, weight: torch.Tensor, label_weight: float
) -> torch.Tensor:
    """Mean over weighted voxels of BCE(foreground logit, teacher) + ``label_weight`` BCE(.., label),
    divided by ``1 + label_weight``. ``logits`` ``(B, 2, 11, P, P)``; the rest ``(B, 11, P, P)``."""
    foreground = logits[:, 1] - logits[:, 0]  # softmax([l0, l1])[1] == sigmoid(l1 - l0)
    per_voxel = (F.binary_cross_entropy_with_logits(foreground, teacher, reduction="none")
                 + label_weight * F.binary_cross_entropy_with_logits(foreground, label, reduction="none"))
    return (per_voxel * weight).sum() / weight.sum().clamp_min(1.0) / (1.0 + label_weight)


@dataclass
class TrainingState:
    """Students, their optimisers, the step reached and the loss of every step done."""

    nets: dict[str, MSNet]
    optimisers: dict[str, torch.optim.Optimizer]
    step: int
    losses: list[float]

    @classmethod
    def start(cls, lr: float, weights_dir: Path | None) -> TrainingState:
        nets = {view: load_network(name, weights_dir) for view, name in TEACHERS.items()}
        for net in nets.values():
            for p in net.parameters():
                p.requires_grad_(True)
            net.train()
        return cls(nets, {v: torch.optim.Adam(n.parameters(), lr=lr) for v, n in nets.items()}, 0, [])

    def save(self, path: Path, settings: dict[str, Any]) -> None:
        buf = io.BytesIO()
        torch.save({"settings": settings, "step": self.step, "losses": self.losses,
                    "nets": {v: n.state_dict() for v, n in self.nets.items()},
                    "optimisers": {v: o.state_dict() for v, o in self.optimisers.items()}}, buf)
        write_bytes_atomically(path, buf.getvalue())

    def restore(self, path: Path, settings: dict[str, Any]) -> None:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved["settings"] != settings:
            raise ValueError(f"{path} was written with other settings ({saved['settings']}); use another --out")
        for view in VIEWS:
            self.nets[view].load_state_dict(saved["nets"][view])
            self.optimisers[view].load_state_dict(saved["optimisers"][view])
        self.step, self.losses = int(saved["step"]), list(saved["losses"])


def train(
    cases: Sequence[dict[str, TrainingView]],
    state: TrainingState,
    settings: dict[str, Any],
    checkpoint: Path,
    checkpoint_every: int,
    max_seconds: float | None = None,
) -> bool:
    """Run steps from ``state.step`` to ``settings["steps"]``; returns whether all were done
    (``False``: ``max_seconds`` ran out; the checkpoint holds where it stopped)."""
    steps, t0 = settings["steps"], time.perf_counter()
    first = state.step
    per_view = {view: [c[view] for c in cases] for view in VIEWS}
    while state.step < steps:
        view = VIEWS[state.step % len(VIEWS)]
        rng = np.random.default_rng([settings["seed"], state.step])
        x, teacher, label, weight, subset = draw_batch(per_view[view], rng, settings["batch"], settings["patch"])
        loss = distillation_loss(state.nets[view](x), teacher, label, weight, settings["label_weight"])
        state.optimisers[view].zero_grad()
        loss.backward()
        state.optimisers[view].step()
        state.losses.append(round(float(loss.item()), 6))
        state.step += 1
        spent = time.perf_counter() - t0
        if state.step % checkpoint_every == 0 or state.step == steps:
            state.save(checkpoint, settings)
            recent = float(np.mean(state.losses[-checkpoint_every:]))
            log.info("step %d/%d (%s, %s): loss %.4f over the last %d, %.0f s, about %.0f s left", state.step, steps,
                     view, subset, recent, checkpoint_every, spent,
                     spent / (state.step - first) * (steps - state.step))
        if max_seconds is not None and spent > max_seconds and state.step < steps:
            state.save(checkpoint, settings)
            log.info("stopped at step %d after %.0f s (--max-seconds); the same command resumes", state.step, spent)
            return False
    return True


def state_dict_bytes(net: MSNet) -> bytes:
    """``net``'s ``state_dict`` serialised by ``torch.save`` (the format of ``<network>.pt``)."""
    buf = io.BytesIO()
    torch.save({k: v.detach().clone() for k, v in net.state_dict().items()}, buf)
    return buf.getvalue()


def write_students(state: TrainingState, out: Path, manifest: dict[str, Any]) -> dict[str, str]:
    """``<student>.pt`` per view and the manifest in ``out``; returns file name -> SHA-256."""
    hashes: dict[str, str] = {}
    for view, name in STUDENTS.items():
        data = state_dict_bytes(state.nets[view])
        write_bytes_atomically(out / f"{name}.pt", data)
        hashes[f"{name}.pt"] = hashlib.sha256(data).hexdigest()
    manifest = {**manifest, "files": hashes}
    write_bytes_atomically(out / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
    return hashes


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", nargs="+", type=Path, required=True, help="BraTS case folders to train on")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--weights", type=Path, default=None, help="the shipped .npz weights (default: ../shared)")
    p.add_argument("--models", type=Path, default=Path("models/brats17-cascade"),
                   help="model folder of the teacher's engine (python -m engines.prepare)")
    p.add_argument("--teacher-engine", default="openvino-folded", help="engine that runs the teacher once per case")
    p.add_argument("--steps", type=int, default=900, help="steps in all (the three views in turn)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--patch", type=int, default=96, help="in-plane patch (multiple of 4)")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--label-weight", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads (part of what makes the weights reproducible)")
    p.add_argument("--checkpoint-every", type=int, default=30)
    p.add_argument("--max-seconds", type=float, default=None, help="stop at a checkpoint after this long")
    p.add_argument("--quick", action="store_true", help="6 steps, batch 1, 32 x 32 patches, 48-voxel crops (tests)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    crop, stages = None, None
    if args.quick:
        args.steps, args.batch, args.patch, args.checkpoint_every, crop = 6, 1, 32, 3, 48
        args.teacher_engine, stages = "torch", smoke_stages(48)
    if args.patch % 4:
        p.error("--patch must be a multiple of 4")
    missing = [str(c) for c in args.cases if not c.is_dir()]
    if missing:
        p.error(f"case folders not found: {missing}")
    flush_denormals()  # before any arithmetic: Intel cores slow 80-100x on denormal numbers
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {"cases": [c.name for c in args.cases], "steps": args.steps, "batch": args.batch, "patch": args.patch,
                "lr": args.lr, "label_weight": args.label_weight, "seed": args.seed, "threads": args.threads,
                "quick": args.quick, "subsets": list(DROPOUT_SUBSETS), "teacher_engine": args.teacher_engine}

    t0 = time.perf_counter()
    teacher_engine = create_engine(args.teacher_engine, args.models, args.weights, threads=args.threads)
    cases = [load_training_case(c, teacher_engine, args.out / "teacher", crop, stages) for c in args.cases]
    log.info("%d cases ready, %.0f s", len(cases), time.perf_counter() - t0)
    state = TrainingState.start(args.lr, args.weights)
    checkpoint = args.out / CHECKPOINT
    if checkpoint.is_file():
        state.restore(checkpoint, settings)
        log.info("resumed at step %d", state.step)
    done = train(cases, state, settings, checkpoint, args.checkpoint_every, args.max_seconds)
    if not done:
        return 3
    every = max(len(state.losses) // 30, 1)
    weights_dir = args.weights or default_weights_dir()
    manifest: dict[str, Any] = {
        "what": "WT networks fine-tuned by modality dropout (subsets without FLAIR), distilled from the "
                "four-sequence WT stage; engines.model.missing.train_dropout",
        "command": "python -m engines.model.missing.train_dropout " + " ".join(sys.argv[1:] if argv is None else argv),
        **settings, "students": STUDENTS, "teachers": TEACHERS,
        "started_from": {TEACHERS[v] + ".npz": file_sha256(npz_path(TEACHERS[v], weights_dir)) for v in VIEWS},
        "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
        "machine": platform.machine(),
        f"loss_mean_every_{every}_steps": [round(float(np.mean(state.losses[i:i + every])), 5)
                                           for i in range(0, len(state.losses), every)],
        "seconds_this_run": round(time.perf_counter() - t0, 1),
    }
    write_students(state, args.out, manifest)
    log.info("wrote %s in %s", ", ".join(STUDENTS.values()), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
