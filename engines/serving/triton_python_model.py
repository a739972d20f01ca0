"""Triton Python-backend model serving one network of the cascade with ONNX Runtime (CPU).

This file is a *template*: :mod:`engines.serving.triton_repository` copies it as
``<repository>/<network>/<version>/model.py``, next to ``<network>.onnx`` and a copy of the
project's ``engines/runtimes/base.py`` and ``engines/runtimes/onnx_engine.py`` (package ``engines/`` in the same
folder), so the repository is self-contained. It is only importable inside Triton's Python
backend stub (``triton_python_backend_utils``).

Batch statistics
----------------
The networks normalise with the statistics of the **whole batch** (see :mod:`engines.runtimes.base`).
Triton's dynamic batcher may hand :meth:`TritonPythonModel.execute` several requests at once
(from different studies); each request's tensor is run **as its own batch**, never
concatenated with another, so a study's logits do not depend on what else the server is
doing. The runtime is the project's own :class:`engines.runtimes.onnx_engine.OnnxRuntimeEngine` with
the same settings as local inference, so remote and local logits are bit-identical on the
same host type and thread count.

Config parameters read (``parameters`` in ``config.pbtxt``): ``network`` (one of the nine
names), ``threads`` (intra-op threads, ``0`` = the server's CPU count, as the local engine's
default).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any


class TritonPythonModel:
    """One cascade network; ``slabs`` float32 ``(N, 4, D, H, W)`` -> ``logits`` ``(N, 2, D - 8, H, W)``."""

    def initialize(self, args: dict[str, str]) -> None:
        """Load the ONNX session of this model's network (Triton calls this once per instance)."""
        version_dir = Path(args["model_repository"]) / args["model_version"]
        # The copied ``engines`` package first (before the stub's '' = the server's cwd).
        while str(version_dir) in sys.path:
            sys.path.remove(str(version_dir))
        sys.path.insert(0, str(version_dir))
        # The Python-backend stub initialises Python ignoring PYTHONPATH; honour it here, in
        # front of the interpreter's own site-packages, so that a deployer can point the stub
        # at the packages model.py needs (numpy < 2 for the stub, onnxruntime), e.g. a
        # virtual environment's site-packages. Must happen before numpy is imported.
        entries = [e for e in os.environ.get("PYTHONPATH", "").split(os.pathsep) if e]
        for entry in reversed(entries):
            while entry in sys.path:
                sys.path.remove(entry)
            sys.path.insert(1, entry)
        import numpy

        if int(numpy.__version__.split(".")[0]) >= 2:
            raise RuntimeError(
                f"numpy {numpy.__version__} ({numpy.__file__}) in the Python-backend stub: the stub "
                "exchanges tensors through the numpy 1.x ABI (outputs arrive empty with numpy 2); "
                "put a numpy < 2 first (PYTHONPATH of the server)"
            )
        import triton_python_backend_utils as pb_utils

        from engines.runtimes.onnx_engine import OnnxRuntimeEngine

        self.pb_utils = pb_utils
        self.logger = pb_utils.Logger
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in (config.get("parameters") or {}).items()}
        self.network = params["network"]
        threads = int(params.get("threads") or 0) or os.cpu_count() or 1
        t0 = time.perf_counter()
        self.engine = OnnxRuntimeEngine(model_dir=version_dir, threads=threads)
        self.engine.prepare([self.network])
        self.logger.log_info(
            f"brats model {self.network}: onnxruntime {self.engine.describe()['version']}, numpy {numpy.__version__}, "
            f"{threads} threads, loaded in {time.perf_counter() - t0:.2f} s"
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        """One response per request; each request's tensor is its own batch (batch statistics)."""
        pb = self.pb_utils
        responses = []
        for request in requests:
            try:
                batch = pb.get_input_tensor_by_name(request, "slabs").as_numpy()
                logits = self.engine.run(self.network, batch)
                responses.append(pb.InferenceResponse(output_tensors=[pb.Tensor("logits", logits)]))
            except Exception as exc:  # noqa: BLE001 - reported to the client, server stays up
                responses.append(pb.InferenceResponse(error=pb.TritonError(f"{self.network}: {type(exc).__name__}: {exc}")))
        if len(requests) > 1:
            self.logger.log_verbose(f"brats model {self.network}: {len(requests)} requests in one execute, run one by one")
        return responses

    def finalize(self) -> None:
        """Drop the session."""
        self.engine = None
