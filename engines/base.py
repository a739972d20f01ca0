"""The one inference-engine interface every runtime implements.

An engine turns a batch of slabs into logits for one of the nine networks of the cascade
(:data:`engines.weights.NETWORKS`). Engines know nothing about volumes, views or the
cascade; that is :mod:`engines.cascade`.

Array contract (all engines)
----------------------------
``run(network, batch)``: ``batch`` float32 ``(N, 4, D, H, W)`` (NCDHW), channels FLAIR, T1,
T1ce, T2, ``D >= 9``; returns float32 logits ``(N, 2, D - 8, H, W)``. The networks
normalise with the statistics of the **whole batch**, so the result for one slab depends
on the other slabs in the same call: callers must batch exactly as the protocol says.
"""
from __future__ import annotations

import abc
import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: Tensor names of every exported graph (plain and folded ONNX, Triton models):
#: input ``(N, 4, D, H, W)`` slabs, output ``(N, 2, D - 8, H, W)`` logits.
INPUT_NAME = "slabs"
OUTPUT_NAME = "logits"


class InferenceEngine(abc.ABC):
    """A runtime that runs MSNet networks on batches of slabs."""

    #: Short runtime name, e.g. ``"torch"``, ``"onnxruntime"``.
    name: str = "abstract"
    #: The registry name it was created under (:func:`create_engine`), e.g.
    #: ``"openvino-folded-bf16"``: enough to create the same engine again.
    registry_name: str = ""
    #: Why the app runs this engine (set by ``operators.segmentation_operator.resolve_engine``).
    choice_reason: str = ""

    @abc.abstractmethod
    def prepare(self, networks: Sequence[str]) -> None:
        """Load / build whatever is needed to run ``networks`` (idempotent)."""

    @abc.abstractmethod
    def run(self, network: str, batch: np.ndarray) -> np.ndarray:
        """Logits for one batch.

        Parameters
        ----------
        network
            One of :data:`engines.weights.NETWORKS`.
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


#: name -> ("module:Class", default options); imported lazily so that an absent runtime
#: breaks only itself. A variant of an engine is an entry with other defaults, not a subclass.
_REGISTRY: dict[str, tuple[str, dict[str, Any]]] = {
    "torch": ("engines.torch_engine:TorchEngine", {}),
    "onnxruntime": ("engines.onnx_engine:OnnxRuntimeEngine", {}),
    "openvino": ("engines.openvino_engine:OpenVinoEngine", {}),
    # Folded-layout graph (engines.msnet_folded): FP32, and BF16 on CPUs with AVX512-BF16/AMX.
    "openvino-folded": ("engines.openvino_engine:OpenVinoEngine", {"graph": "folded"}),
    "openvino-folded-bf16": ("engines.openvino_engine:OpenVinoEngine", {"graph": "folded", "precision": "bf16"}),
    "torch-compile": ("engines.torch_compile_engine:TorchCompileEngine", {}),
    "tensorrt": ("engines.tensorrt_engine:TensorRTEngine", {}),
    "torch-cuda": ("engines.cuda_engines:TorchCudaEngine", {}),
    # FP16 on CUDA without TensorRT: compiled, channels-last, one CUDA graph per (network, shape).
    "torch-cuda-fp16": ("engines.torch_fp16_engine:TorchHalfEngine", {}),
    "onnxruntime-cuda": ("engines.cuda_engines:OnnxRuntimeCudaEngine", {}),
    "triton": ("engines.triton_engine:TritonEngine", {}),  # remote: needs url= (the app's -t)
}


def register_engine(name: str, target: str, **defaults: Any) -> None:
    """Register another runtime (``target`` = ``"package.module:ClassName"``; ``defaults``:
    constructor options that :func:`create_engine`'s own options override)."""
    _REGISTRY[name] = (target, dict(defaults))


def available_engines() -> list[str]:
    """Names accepted by :func:`create_engine`."""
    return sorted(_REGISTRY)


def create_engine(
    name: str,
    model_dir: Path | None = None,
    weights_dir: Path | None = None,
    **options: Any,
) -> InferenceEngine:
    """Instantiate an engine by name.

    Parameters
    ----------
    name
        ``"torch"`` or ``"onnxruntime"`` (or a registered name); ``"ort"`` / ``"onnx"``
        are aliases of ``"onnxruntime"``.
    model_dir
        Folder written by ``python -m engines.prepare`` (``<net>.pt``, ``<net>.onnx``,
        ``manifest.json``).
    weights_dir
        Folder of the original ``.npz`` weights (the torch engine can build from these).
    **options
        Engine specific (e.g. ``threads``).
    """
    aliases = {"ort": "onnxruntime", "onnx": "onnxruntime", "pytorch": "torch"}
    key = aliases.get(name, name)
    if key not in _REGISTRY:
        raise ValueError(f"unknown engine {name!r}; available: {available_engines()}")
    target, defaults = _REGISTRY[key]
    module_name, _, cls_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    engine = cls(model_dir=model_dir, weights_dir=weights_dir, **{**defaults, **options})
    engine.registry_name = key
    return engine
