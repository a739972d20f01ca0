"""Fine-tune the WT networks for an absent FLAIR: modality dropout, distilled from the four-sequence cascade.

Usage::

    python -m engines.model.missing.train_dropout --cases <case dir> ... --out <dir> \
        [--steps 900] [--batch 2] [--patch 96 | --batches cascade] [--subsets T1ce+T2,...] \
        [--lr 2e-4] [--label-weight 0.5] [--seed 0] [--threads 2] [--device cpu|cuda] \
        [--teacher-cache DIR] [--max-seconds S] [--quick]

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
    holds one subset, as at inference), drawn from ``--subsets`` (default
    :data:`DROPOUT_SUBSETS`, the subsets without FLAIR; the first half of the time, the others
    sharing the rest): the withheld channels are zero everywhere, patch padding included -- the
    zero fill the app gives the WT stage.
    ``--batches cascade``: instead, the batches the cascade itself feeds the WT network of the
    view (:meth:`engines.model.cascade.tiling.SlabTiling.batches`): 5 consecutive slabs of one
    case's tiling, the in-plane patch covering the whole brain box (the stage's base patch or
    larger), noise outside the volume in the available channels; half of the time a batch that
    holds tumour. The networks normalise with batch statistics, so this is what they meet at
    inference.
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
    its settings differ. On CUDA (``--device cuda``) PyTorch's deterministic algorithms are
    asked for (``CUBLAS_WORKSPACE_CONFIG`` set; an op without one warns in the log): the weights
    repeat on the same GPU, driver and torch, not across devices.
Outputs (``--out``)
    ``wt32md.pt``, ``wt32sgmd.pt``, ``wt32crmd.pt`` (MSNet state dicts, the format of
    :mod:`engines.prepare`'s ``<network>.pt``) and ``dropout_manifest.json``: the command, cases,
    settings, steps, seed, library versions, loss curve, time taken, the SHA-256 of every file
    and of the shipped weights it started from. ``teacher/<case>.npz`` caches the teacher
    (``--teacher-cache``: another folder, e.g. one computed on a CPU and carried to a GPU; the
    teacher's engine is only created for a case whose teacher is not there; ``--teacher-u8``:
    stored as uint8, within 0.002 and ~40x smaller).

``--quick``: 6 steps of batch 1 on 32 x 32 patches of the given cases, teacher on a 48-voxel
crop (tests only; not a usable network).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from engines.atomic_write import write_bytes_atomically
from engines.model.cascade import CascadePredictor, preprocess
from engines.model.cascade.config import BATCH_SIZE, STAGES, VIEWS, StageSpec, smoke_stages
from engines.model.cascade.tiling import to_view
from engines.model.missing.dropout_batches import (
    DROPOUT_SUBSETS,
    TrainingView,
    draw_batch,
    draw_cascade_batch,
)
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
MANIFEST = "dropout_manifest.json"
CHECKPOINT = "checkpoint.pt"


def teacher_probability(
    image: np.ndarray, teacher_engine: InferenceEngine, stages: Mapping[str, StageSpec] | None = None
) -> np.ndarray:
    """float32 ``(z, y, x)``: the shipped WT stage on the four-sequence crop ``image`` (4, z, y, x),
    seed 0 (``stages``: the protocol's unless a smoke run says otherwise)."""
    return CascadePredictor(teacher_engine, stages).predict_stage("wt", image, seed=0).probability


def load_training_case(
    case_dir: Path,
    teacher_engine: Callable[[], InferenceEngine],
    cache: Path,
    crop: int | None = None,
    stages: Mapping[str, StageSpec] | None = None,
    teacher_u8: bool = False,
) -> dict[str, TrainingView]:
    """View name -> :class:`TrainingView` of one BraTS case folder; the teacher is read from
    ``cache/<case>.npz`` when there, else computed (:func:`teacher_probability`, with the engine
    ``teacher_engine()`` gives) and stored: float32, or with ``teacher_u8`` as uint8
    ``round(255 p)`` (within 0.002 of it, ~40x smaller: what travels to a GPU), used as
    ``q / 255`` whichever run computed it.
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
        teacher = teacher_probability(image, teacher_engine(), stages)
        if teacher_u8:
            teacher = np.round(teacher * 255).astype(np.uint8)
        buf = io.BytesIO()
        np.savez_compressed(buf, teacher=teacher)
        write_bytes_atomically(path, buf.getvalue())
        log.info("teacher of %s: %.0f s", case_dir.name, time.perf_counter() - t0)
    if teacher.dtype == np.uint8:
        teacher = teacher.astype(np.float32) / 255
    if teacher.shape != brain.shape:
        raise ValueError(f"{path}: teacher {teacher.shape} is not the crop's {brain.shape}; delete the cache")
    targets = np.stack([teacher, label, np.ones_like(label)]).astype(np.float32)
    return {view: TrainingView(to_view(image, view), to_view(targets, view), to_view(brain[None], view)[0])
            for view in VIEWS}


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
    def start(cls, lr: float, weights_dir: Path | None, device: str = "cpu") -> TrainingState:
        nets = {view: load_network(name, weights_dir).to(device) for view, name in TEACHERS.items()}
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
        saved = torch.load(path, map_location=next(self.nets[VIEWS[0]].parameters()).device, weights_only=True)
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
    stages: Mapping[str, StageSpec] = STAGES,
) -> bool:
    """Run steps from ``state.step`` to ``settings["steps"]``; returns whether all were done
    (``False``: ``max_seconds`` ran out; the checkpoint holds where it stopped). ``stages``:
    whose WT base patches the cascade's batches have (``settings["batches"] == "cascade"``)."""
    steps, t0 = settings["steps"], time.perf_counter()
    first = state.step
    per_view = {view: [c[view] for c in cases] for view in VIEWS}
    subsets = settings["subsets"]
    device = next(state.nets[VIEWS[0]].parameters()).device
    while state.step < steps:
        view = VIEWS[state.step % len(VIEWS)]
        rng = np.random.default_rng([settings["seed"], state.step])
        if settings.get("batches") == "cascade":
            drawn = draw_cascade_batch(per_view[view], rng, stages["wt"].patch_hw[view], subsets)
        else:
            drawn = draw_batch(per_view[view], rng, settings["batch"], settings["patch"], subsets)
        x, teacher, label, weight = (t.to(device) for t in drawn[:4])
        subset = drawn[4]
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
    torch.save({k: v.detach().cpu().clone() for k, v in net.state_dict().items()}, buf)
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
    p.add_argument("--batches", choices=("random", "cascade"), default="random",
                   help="random: --batch slabs of --patch around tumour / brain voxels; cascade: the cascade's own "
                        "batches (5 slabs of a case's tiling, --batch and --patch unused)")
    p.add_argument("--subsets", default=",".join(DROPOUT_SUBSETS),
                   help="comma-separated subsets to train for, without FLAIR; the first is drawn half of the time")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--teacher-cache", type=Path, default=None, help="where the teachers are (default <out>/teacher)")
    p.add_argument("--teacher-u8", action="store_true",
                   help="store teachers computed now as uint8 (within 0.002; what stage_gpu_dropout.sh carries)")
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
    subsets = [x.strip() for x in args.subsets.split(",") if x.strip()]
    try:
        if not subsets or any(subset_available(x)[0] for x in subsets):
            p.error(f"--subsets: subsets without FLAIR (the students replace the WT stage without it): {args.subsets}")
    except ValueError as exc:
        p.error(f"--subsets: {exc}")
    if args.batches == "cascade":
        args.batch, args.patch = BATCH_SIZE, 0  # the tiling's
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            p.error("--device cuda: no CUDA device here")
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # warn_only: an op without a deterministic CUDA kernel warns (in the log) rather than
        # ending a device run that cannot be repeated cheaply
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    missing = [str(c) for c in args.cases if not c.is_dir()]
    if missing:
        p.error(f"case folders not found: {missing}")
    flush_denormals()  # before any arithmetic: Intel cores slow 80-100x on denormal numbers
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {"cases": [c.name for c in args.cases], "steps": args.steps, "batch": args.batch, "patch": args.patch,
                "lr": args.lr, "label_weight": args.label_weight, "seed": args.seed, "threads": args.threads,
                "quick": args.quick, "subsets": subsets, "teacher_engine": args.teacher_engine}
    if args.batches != "random" or args.device != "cpu":  # recorded when not the first runs' defaults
        settings |= {"batches": args.batches, "device": args.device}

    t0 = time.perf_counter()
    engines: list[InferenceEngine] = []

    def teacher_engine() -> InferenceEngine:  # created only when a teacher is not in the cache
        if not engines:
            engines.append(create_engine(args.teacher_engine, args.models, args.weights, threads=args.threads))
        return engines[0]

    teachers = args.teacher_cache or args.out / "teacher"
    cases = [load_training_case(c, teacher_engine, teachers, crop, stages, args.teacher_u8) for c in args.cases]
    log.info("%d cases ready, %.0f s", len(cases), time.perf_counter() - t0)
    state = TrainingState.start(args.lr, args.weights, args.device)
    checkpoint = args.out / CHECKPOINT
    if checkpoint.is_file():
        state.restore(checkpoint, settings)
        log.info("resumed at step %d", state.step)
    done = train(cases, state, settings, checkpoint, args.checkpoint_every, args.max_seconds, stages or STAGES)
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
