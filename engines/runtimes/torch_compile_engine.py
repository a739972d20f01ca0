"""PyTorch engine with ``torch.compile`` (Inductor): CPU here, CUDA where present.

The port (:class:`engines.model.msnet.MSNet`) is compiled per network, by default with static shapes
(``dynamic=False``; ``dynamic_hw=True``: ``H`` and ``W`` symbolic, see :func:`compile_network`):
Inductor fuses the batch-statistics reductions, the per-channel affine
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
import torch

from engines.runtimes.base import EngineUnavailable
from engines.runtimes.torch_engine import TorchEngine

log = logging.getLogger(__name__)

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: Dynamo recompiles per code object: 9 networks share MSNet.forward, each seen at a few shapes.
RECOMPILE_LIMIT = 256


def raise_recompile_limits(limit: int = RECOMPILE_LIMIT) -> None:
    """Let Dynamo keep one compiled graph per (network, shape) instead of silently falling back to
    eager after its default 8 recompiles of one code object (all nine networks share
    ``MSNet.forward``), and make hitting the limit an error rather than a silent slowdown."""
    import torch._dynamo.config as dc

    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(dc, name):
            setattr(dc, name, max(int(getattr(dc, name)), limit))
    if hasattr(dc, "fail_on_recompile_limit_hit"):
        dc.fail_on_recompile_limit_hit = True


def mark_hw_dynamic(x: torch.Tensor) -> None:
    """Mark ``H`` and ``W`` of an ``(N, C, D, H, W)`` input as symbolic for ``torch.compile``."""
    torch._dynamo.mark_dynamic(x, 3)
    torch._dynamo.mark_dynamic(x, 4)


def compile_network(model: torch.nn.Module, dynamic_hw: bool, mode: str | None = None) -> Any:
    """``torch.compile`` (Inductor, full graph) of one network.

    ``dynamic_hw``: the caller marks ``H``, ``W`` of each input with :func:`mark_hw_dynamic`,
    and sizes are never unified by equality (no "duck" shapes: a first 144 x 144 call must not
    tie ``H`` to ``W``); otherwise shapes are static, one compile per shape.
    """
    import torch.fx.experimental._config as fx_config

    raise_recompile_limits()
    if dynamic_hw:
        fx_config.use_duck_shape = False
    return torch.compile(model, mode=mode, dynamic=None if dynamic_hw else False, fullgraph=True)


class TorchCompileEngine(TorchEngine):
    """``torch.compile`` of the MSNet port.

    Parameters
    ----------
    model_dir, weights_dir, threads
        As :class:`engines.runtimes.torch_engine.TorchEngine`.
    device
        ``"auto"`` (default: CUDA when available, else CPU), ``"cpu"`` or ``"cuda"``.
    mode
        ``torch.compile`` mode: ``"default"`` or ``"max-autotune-no-cudagraphs"`` (others
        accepted).
    dynamic_hw
        Compile ``H`` and ``W`` as symbolic sizes (one compile per architecture instead of one
        per shape; :func:`compile_network`).
    """

    name = "torch-compile"

    def __init__(
        self,
        model_dir: Path | None = None,
        weights_dir: Path | None = None,
        threads: int | None = None,
        device: str = "auto",
        mode: str = "default",
        dynamic_hw: bool = False,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise EngineUnavailable("torch-compile on cuda requested but torch.cuda.is_available() is False")
        if not hasattr(torch, "compile"):
            raise EngineUnavailable(f"torch {torch.__version__} has no torch.compile")
        super().__init__(model_dir=model_dir, weights_dir=weights_dir, threads=threads, device=device)
        self.mode = mode
        self.dynamic_hw = dynamic_hw
        self._compiled: dict[str, Any] = {}
        self._seen: set[tuple[str, tuple[int, ...]]] = set()
        self.compile_seconds: dict[str, float] = {}

    def prepare(self, networks: Sequence[str]) -> None:
        super().prepare(networks)
        for n in networks:
            if n not in self._compiled:
                mode = None if self.mode == "default" else self.mode
                self._compiled[n] = compile_network(self._nets[n], self.dynamic_hw, mode)

    def run(self, network: str, batch: np.ndarray) -> np.ndarray:
        batch = self.check_batch(batch)
        if network not in self._compiled:
            self.prepare([network])
        key = (network, tuple(int(s) for s in batch.shape))
        t0 = time.perf_counter()
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device)
            if self.dynamic_hw:
                mark_hw_dynamic(x)
            y = self._compiled[network](x)
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
            "mode": f"torch.compile(mode={self.mode}, {'H, W symbolic' if self.dynamic_hw else 'dynamic=False'}), inference_mode",
            "compile_seconds": dict(self.compile_seconds),
        })
        return d
