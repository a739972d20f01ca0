"""ONNX Runtime engine (CPU execution provider) on the ONNX files of :mod:`engines.prepare`."""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engines.runtimes.base import InferenceEngine
from engines.runtimes.cpu_host import ort_session_options

log = logging.getLogger(__name__)


class OnnxRuntimeEngine(InferenceEngine):
    """One ``InferenceSession`` per network, from ``<model_dir>/<net>.onnx``.

    Parameters
    ----------
    model_dir
        Folder written by ``python -m engines.prepare`` (required).
    weights_dir
        Unused (accepted for the common factory signature).
    threads
        Intra-op threads; default: the CPU count. Inter-op threads 1, sequential
        execution, graph optimisation level ALL.
    providers
        ONNX Runtime execution providers; default ``["CPUExecutionProvider"]``.
    cpu_mem_arena
        Keep ORT's CPU memory arena (default off: see the note in ``_session``).
    """

    name = "onnxruntime"

    def __init__(
        self,
        model_dir: Path | None = None,
        weights_dir: Path | None = None,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        cpu_mem_arena: bool = False,
    ) -> None:
        if model_dir is None:
            raise ValueError("the onnxruntime engine needs model_dir (run python -m engines.prepare)")
        self.model_dir = Path(model_dir)
        self.threads = threads or os.cpu_count() or 1
        self.providers = list(providers or ["CPUExecutionProvider"])
        self.cpu_mem_arena = cpu_mem_arena
        self._sessions: dict[str, Any] = {}

    def _session(self, network: str) -> Any:
        import onnxruntime as ort

        path = self.model_dir / f"{network}.onnx"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (run python -m engines.prepare --out {self.model_dir})")
        so = ort_session_options(self.threads)  # denormals flushed (engines.runtimes.cpu_host)
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Memory: each session's CPU arena otherwise keeps its peak for every input shape it
        # has seen (the cascade feeds many: 3 views x 3 stages x box-dependent patches);
        # nine WT/TC/EN sessions then held > 13 GB and were OOM-killed on a 24 GB host.
        # Without the arena (and memory patterns, useless with dynamic shapes) buffers are
        # returned after each run; measured cost on speed: negligible against the convs.
        so.enable_cpu_mem_arena = self.cpu_mem_arena
        so.enable_mem_pattern = self.cpu_mem_arena
        sess = ort.InferenceSession(str(path), sess_options=so, providers=self.providers)
        log.info("onnxruntime engine: loaded %s (%s)", path, sess.get_providers())
        return sess

    def prepare(self, networks: Sequence[str]) -> None:
        for n in networks:
            if n not in self._sessions:
                self._sessions[n] = self._session(n)

    def run(self, network: str, batch: np.ndarray) -> np.ndarray:
        batch = self.check_batch(batch)
        if network not in self._sessions:
            self.prepare([network])
        sess = self._sessions[network]
        (y,) = sess.run(None, {sess.get_inputs()[0].name: batch})
        return np.asarray(y, dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {
            "runtime": "onnxruntime",
            "version": ort.__version__,
            "device": "cpu",
            "providers": self.providers,
            "precision": "fp32",
            "threads": self.threads,
            "graph_optimization": "ORT_ENABLE_ALL",
            "cpu_mem_arena": self.cpu_mem_arena,
        }
