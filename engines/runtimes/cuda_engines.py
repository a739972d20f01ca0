"""CUDA variants of the existing engines: ``torch-cuda`` and ``onnxruntime-cuda``.

Both refuse to be constructed (:class:`engines.runtimes.base.EngineUnavailable`) where they could not
actually run on a GPU (so that
:func:`engines.runtimes.registry.choose_engine` falls back with a note instead of
silently running on the CPU).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engines.runtimes.base import GPU_INPLANE_BUCKET, EngineUnavailable
from engines.runtimes.onnx_engine import OnnxRuntimeEngine
from engines.runtimes.torch_engine import TorchEngine


class TorchCudaEngine(TorchEngine):
    """PyTorch eager FP32 on the first CUDA device."""

    name = "torch-cuda"

    def __init__(self, model_dir: Path | None = None, weights_dir: Path | None = None,
                 threads: int | None = None, device: str = "cuda") -> None:
        import torch

        if not torch.cuda.is_available():
            raise EngineUnavailable(f"torch-cuda: no CUDA device (torch {torch.__version__}, "
                               f"built with CUDA {torch.version.cuda})")
        super().__init__(model_dir=model_dir, weights_dir=weights_dir, threads=threads, device=device)

    def describe(self) -> dict[str, Any]:
        import torch

        d = super().describe()
        d.update({"runtime": "torch-cuda", "gpu": torch.cuda.get_device_name(self.device),
                  "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()})
        return d


class OnnxRuntimeCudaEngine(OnnxRuntimeEngine):
    """ONNX Runtime with the CUDA execution provider (CPU provider kept for unsupported ops)."""

    name = "onnxruntime-cuda"
    inplane_bucket = GPU_INPLANE_BUCKET

    def __init__(self, model_dir: Path | None = None, weights_dir: Path | None = None,
                 threads: int | None = None, providers: Sequence[str] | None = None) -> None:
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise EngineUnavailable(f"onnxruntime-cuda: CUDAExecutionProvider not in this onnxruntime build "
                               f"({ort.__version__}: {ort.get_available_providers()})")
        super().__init__(model_dir=model_dir, weights_dir=weights_dir, threads=threads,
                         providers=providers or ["CUDAExecutionProvider", "CPUExecutionProvider"])

    def _session(self, network: str) -> Any:
        sess = super()._session(network)
        if "CUDAExecutionProvider" not in sess.get_providers():
            raise RuntimeError(f"onnxruntime-cuda: session for {network} did not get the CUDA provider "
                               f"({sess.get_providers()})")
        return sess

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update({"runtime": "onnxruntime-cuda", "device": "cuda"})
        return d
