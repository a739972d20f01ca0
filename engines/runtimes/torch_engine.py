"""PyTorch eager engine: FP32 on CPU, ``torch.inference_mode()``."""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engines.model.msnet import MSNet
from engines.model.weights import load_network, network_kind
from engines.runtimes.base import GPU_INPLANE_BUCKET, InferenceEngine

log = logging.getLogger(__name__)


class TorchEngine(InferenceEngine):
    """Runs :class:`engines.model.msnet.MSNet` eagerly.

    Weights come from ``<model_dir>/<net>.pt`` (state dict written by
    :mod:`engines.prepare`) when present, otherwise from the original ``.npz`` in
    ``weights_dir`` (default :func:`engines.model.weights.default_weights_dir`).

    Parameters
    ----------
    model_dir, weights_dir
        See :func:`engines.runtimes.registry.create_engine`.
    threads
        ``torch.set_num_threads`` value; default: the CPU count.
    """

    name = "torch"

    def __init__(
        self,
        model_dir: Path | None = None,
        weights_dir: Path | None = None,
        threads: int | None = None,
        device: str = "cpu",
    ) -> None:
        self.model_dir = Path(model_dir) if model_dir else None
        self.weights_dir = Path(weights_dir) if weights_dir else None
        self.threads = threads or os.cpu_count() or 1
        self.device = torch.device(device)
        self.inplane_bucket = GPU_INPLANE_BUCKET if self.device.type == "cuda" else None
        self._nets: dict[str, MSNet] = {}

    def _load(self, network: str) -> MSNet:
        pt = self.model_dir / f"{network}.pt" if self.model_dir else None
        if pt is not None and pt.is_file():
            net = MSNet(network_kind(network))
            net.load_state_dict(torch.load(pt, map_location="cpu", weights_only=True))
            net.eval()
            source = str(pt)
        else:
            net = load_network(network, self.weights_dir)
            source = "npz"
        log.info("torch engine: loaded %s from %s", network, source)
        return net.to(self.device)

    def prepare(self, networks: Sequence[str]) -> None:
        torch.set_num_threads(self.threads)
        for n in networks:
            if n not in self._nets:
                self._nets[n] = self._load(n)

    def run(self, network: str, batch: np.ndarray) -> np.ndarray:
        batch = self.check_batch(batch)
        if network not in self._nets:
            self.prepare([network])
        with torch.inference_mode():
            y = self._nets[network](torch.from_numpy(batch).to(self.device))
        return y.float().cpu().numpy()

    def describe(self) -> dict[str, Any]:
        return {
            "runtime": "torch",
            "version": torch.__version__,
            "device": str(self.device),
            "precision": "fp32",
            "threads": self.threads,
            "mode": "eager, inference_mode",
        }
