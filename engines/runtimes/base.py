"""The one inference-engine interface every runtime implements (the registry that creates them
by name and the ``auto`` choice: :mod:`engines.runtimes.registry`).

An engine turns a batch of slabs into logits for one of the nine networks of the cascade
(:data:`engines.model.weights.NETWORKS`). Engines know nothing about volumes, views or the
cascade; that is :mod:`engines.model.cascade`.

Array contract (all engines)
----------------------------
``run(network, batch)``: ``batch`` float32 ``(N, 4, D, H, W)`` (NCDHW), channels FLAIR, T1,
T1ce, T2, ``D >= 9``; returns float32 logits ``(N, 2, D - 8, H, W)``. The networks
normalise with the statistics of the **whole batch**, so the result for one slab depends
on the other slabs in the same call: callers must batch exactly as the protocol says.
"""
from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import numpy as np

#: Tensor names of every exported graph (plain and folded ONNX, Triton models):
#: input ``(N, 4, D, H, W)`` slabs, output ``(N, 2, D - 8, H, W)`` logits.
INPUT_NAME = "slabs"
OUTPUT_NAME = "logits"
#: In-plane patch bucket (voxels) of the engines that build something per batch shape on a GPU
#: (CUDA graphs, cuDNN autotuning, compiled kernels, TensorRT profiles): see
#: :func:`engines.model.cascade.tiling.inplane_patch`. ``None``, off: a bucket of 16 moved a
#: region's Dice by up to 0.002 on 2 of the 8 BraTS cases (more than the 0.001 allowed) for 19 ->
#: 15 shapes over them (``benchmarks/results/shape_buckets``); the GPU engines compile H and W
#: symbolic, so a new shape costs them a CUDA graph capture, not a compilation.
GPU_INPLANE_BUCKET: int | None = None


class EngineUnavailable(RuntimeError):
    """This runtime cannot run here: its library, device or CPU feature is missing.

    Raised by an engine's constructor only for that reason (a bug raises anything else), so
    that the app's ``auto`` choice and the tests can tell "not on this machine" from "broken".
    """


class InferenceEngine(abc.ABC):
    """A runtime that runs MSNet networks on batches of slabs."""

    #: Short runtime name, e.g. ``"torch"``, ``"onnxruntime"``.
    name: str = "abstract"
    #: The registry name it was created under (:func:`create_engine`), e.g.
    #: ``"openvino-folded-bf16"``: enough to create the same engine again.
    registry_name: str = ""
    #: Why the app runs this engine (set by ``engines.runtimes.registry.choose_engine``).
    choice_reason: str = ""
    #: The measured FP32 / BF16 choice behind it, when the CPU precision was chosen by
    #: measurement (:meth:`engines.runtimes.cpu_precision.PrecisionChoice.as_report`).
    precision_choice: dict[str, Any] | None = None
    #: In-plane patch bucket (voxels) this engine asks the cascade for: :data:`GPU_INPLANE_BUCKET`
    #: on the GPU engines, ``None`` (exact patches) on the CPU ones, whose cost grows with the
    #: patch.
    inplane_bucket: int | None = None

    @abc.abstractmethod
    def prepare(self, networks: Sequence[str]) -> None:
        """Load / build whatever is needed to run ``networks`` (idempotent)."""

    @abc.abstractmethod
    def run(self, network: str, batch: np.ndarray) -> np.ndarray:
        """Logits for one batch.

        Parameters
        ----------
        network
            One of :data:`engines.model.weights.NETWORKS`.
        batch
            float32 ``(N, 4, D, H, W)``, channels FLAIR, T1, T1ce, T2.

        Returns
        -------
        numpy.ndarray
            float32 logits ``(N, 2, D - 8, H, W)``.
        """

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """Runtime facts for logs and reports: runtime, version, device, precision, threads."""

    @staticmethod
    def check_batch(batch: np.ndarray) -> np.ndarray:
        """Validate the batch contract and return a C-contiguous float32 array."""
        if batch.ndim != 5 or batch.shape[1] != 4:
            raise ValueError(f"batch must be (N, 4, D, H, W), got {batch.shape}")
        if batch.shape[2] < 9:
            raise ValueError(f"slab depth must be >= 9, got {batch.shape[2]}")
        return np.ascontiguousarray(batch, dtype=np.float32)
