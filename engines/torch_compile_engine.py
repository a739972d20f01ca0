"""PyTorch engine with ``torch.compile`` (Inductor): CPU here, CUDA where present.

The port (:class:`engines.msnet.MSNet`) is compiled per network with static shapes
(``dynamic=False``): Inductor fuses the batch-statistics reductions, the per-channel affine
and PReLU into few passes. The **first call per (network, shape) is the compile warm-up**
(minutes on a small CPU); later calls reuse the compiled graph. Compile times are
recorded in :meth:`describe` (``compile_seconds``).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engines.torch_engine import TorchEngine

log = logging.getLogger(__name__)

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class TorchCompileEngine(TorchEngine):
    """``torch.compile`` of the MSNet port.

    Parameters
    ----------
    model_dir, weights_dir, threads
        As :class:`engines.torch_engine.TorchEngine`.
    device
        ``"auto"`` (default: CUDA when available, else CPU), ``"cpu"`` or ``"cuda"``.
    mode
        ``torch.compile`` mode: ``"default"`` or ``"max-autotune-no-cudagraphs"`` (others
        accepted).
    """

    name = "torch-compile"

    def __init__(
        self,
        model_dir: Path | None = None,
        weights_dir: Path | None = None,
        threads: int | None = None,
        device: str = "auto",
        mode: str = "default",
    ) -> None:
        import torch

        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError("torch-compile on cuda requested but torch.cuda.is_available() is False")
        if not hasattr(torch, "compile"):
            raise RuntimeError(f"torch {torch.__version__} has no torch.compile")
        super().__init__(model_dir=model_dir, weights_dir=weights_dir, threads=threads, device=device)
        self.mode = mode
        self._compiled: dict[str, Any] = {}
        self._seen: set[tuple[str, tuple[int, ...]]] = set()
        self.compile_seconds: dict[str, float] = {}

    def prepare(self, networks: Sequence[str]) -> None:
        import torch

        super().prepare(networks)
        for n in networks:
            if n not in self._compiled:
                mode = None if self.mode == "default" else self.mode
                self._compiled[n] = torch.compile(self._nets[n], mode=mode, dynamic=False, fullgraph=True)

    def run(self, network: str, batch: np.ndarray) -> np.ndarray:
        import torch

        batch = self.check_batch(batch)
        if network not in self._compiled:
            self.prepare([network])
        key = (network, tuple(int(s) for s in batch.shape))
        t0 = time.perf_counter()
        with torch.inference_mode():
            y = self._compiled[network](torch.from_numpy(batch).to(self.device))
            out = y.float().cpu().numpy()
        if key not in self._seen:
            self._seen.add(key)
            dt = time.perf_counter() - t0
            self.compile_seconds[f"{network}{list(key[1])}"] = dt
            log.info("torch-compile engine: first call %s %s (compile warm-up) %.1f s", network, key[1], dt)
        return out

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update({
            "runtime": "torch-compile",
            "mode": f"torch.compile(mode={self.mode}, dynamic=False), inference_mode",
            "compile_seconds": dict(self.compile_seconds),
        })  # fmt: skip
        return d
