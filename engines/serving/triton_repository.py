"""Generate a Triton Inference Server model repository holding the cascade's nine networks.

Usage::

    python -m engines.serving.triton_repository --models models/brats17-cascade --out triton-repo \
        [--flavour python|onnxruntime|tensorrt] [--no-dynamic-batching] [--instances 1] \
        [--threads 0] [--version 1]

One model per network (``wt32``, ``wt32sg``, ... ``en32cr``), each ``<out>/<net>/config.pbtxt``
and ``<out>/<net>/<version>/...``:

``python`` (default; what runs on this repository's CPU machines and in its tests)
    Triton's Python backend hosting the project's own ONNX Runtime engine
    (:mod:`engines.serving.triton_python_model` as ``model.py``, the ONNX file, and a copy of
    ``engines/runtimes/base.py`` + ``cpu_host.py`` + ``onnx_engine.py``: the repository is self-contained).
    ``max_batch_size`` 20 (four studies' batches of 5) so that the dynamic batcher, when on,
    can queue several requests into one ``execute`` call; the model still runs **each request
    as its own batch** (the networks normalise with batch statistics), so dynamic batching
    never merges studies. Dims exclude the batch dimension: ``slabs`` ``[4, 19, -1, -1]``,
    ``logits`` ``[2, 11, -1, -1]``.

``onnxruntime`` / ``tensorrt`` (a full Triton, e.g. the NGC container, on a GPU server)
    ``platform: "onnxruntime_onnx"`` with ``model.onnx``, or ``platform: "tensorrt_plan"`` with
    a ``model.plan`` that must be built on the serving GPU (``build_plans.sh`` is written
    next to the configs; a plan is specific to GPU, driver and TensorRT version).
    ``max_batch_size: 0``: the batch dimension is part of the request shape (``[5, 4, 19,
    -1, -1]``) and Triton never concatenates requests: server-side batching would change the
    batch statistics and hence the result. No ``dynamic_batching`` block for these.

Shapes: the protocol fixes N = 5 slabs, C = 4 channels, D = 19 input / 11 output slices and 2
classes; the in-plane size is ``max(round_up(size, 4), base patch)`` of the box being
segmented (:func:`engines.model.cascade.tiling.inplane_patch`), so H and W are ``-1`` (variable, at least
the base patch: WT 180 x 160 / 160 x 180 / 160 x 160, TC and EN 96 x 96; at most 240 on the
BraTS grid).

Each config carries ``parameters`` the client checks before use (:mod:`engines.runtimes.triton_engine`):
``network``, ``onnx_sha256`` (must equal the app's ``manifest.json``), ``runtime``,
``generator``.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engines.model.cascade.config import BATCH_SIZE as BATCH
from engines.model.cascade.config import IN_SLICES, OUT_SLICES, protocol_shape
from engines.model.weights import NETWORKS
from engines.runtimes.base import INPUT_NAME, OUTPUT_NAME
from engines.runtimes.engine_cache import file_sha256

log = logging.getLogger(__name__)

FLAVOURS = ("python", "onnxruntime", "tensorrt")
PYTHON_MAX_BATCH = 20
#: The largest in-plane patch on the BraTS grid (the smallest: each network's base patch,
#: :func:`engines.model.cascade.config.protocol_shape`).
MAX_HW = 240
#: Files of the project copied into each Python-backend model version (self-contained), relative
#: to the ``engines`` package: the ONNX Runtime engine, its interface and their package files.
ENGINE_FILES = ("__init__.py", "runtimes/__init__.py", "runtimes/base.py", "runtimes/cpu_host.py", "runtimes/onnx_engine.py")
GENERATOR = "engines.serving.triton_repository/1"


def _params(values: dict[str, str]) -> str:
    return "".join(
        f'parameters {{\n  key: "{k}"\n  value {{ string_value: "{v}" }}\n}}\n' for k, v in values.items()
    )


def config_pbtxt(
    network: str,
    flavour: str,
    onnx_sha256: str,
    dynamic_batching: bool = True,
    instances: int = 1,
    threads: int = 0,
    queue_delay_us: int = 2000,
) -> str:
    """The ``config.pbtxt`` text of one network.

    Parameters
    ----------
    network
        One of :data:`engines.model.weights.NETWORKS`.
    flavour
        ``"python"``, ``"onnxruntime"`` or ``"tensorrt"`` (see the module docstring).
    onnx_sha256
        SHA-256 of the ONNX file served (from the model folder's ``manifest.json``).
    dynamic_batching
        Python flavour only: add a ``dynamic_batching`` block (requests queued together into
        one ``execute`` call, still run one by one).
    instances
        Model instances (``instance_group.count``): parallel executions of this network.
    threads
        ONNX Runtime intra-op threads per instance (``0`` = the server's CPU count).
    queue_delay_us
        ``max_queue_delay_microseconds`` of the dynamic batcher.
    """
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {FLAVOURS}, got {flavour!r}")
    params = {"network": network, "onnx_sha256": onnx_sha256, "generator": GENERATOR}
    lines = [f'name: "{network}"']
    if flavour == "python":
        lines += ['backend: "python"', f"max_batch_size: {PYTHON_MAX_BATCH}"]
        in_dims, out_dims = [4, IN_SLICES, -1, -1], [2, OUT_SLICES, -1, -1]
        kind = "KIND_CPU"
        params.update(runtime="onnxruntime-cpu (project engine, one request = one batch)", threads=str(threads))
    else:
        platform = "onnxruntime_onnx" if flavour == "onnxruntime" else "tensorrt_plan"
        lines += [f'platform: "{platform}"', "max_batch_size: 0"]
        in_dims, out_dims = [BATCH, 4, IN_SLICES, -1, -1], [BATCH, 2, OUT_SLICES, -1, -1]
        kind = "KIND_GPU"
        params.update(runtime=platform)
    lines += [
        "input [",
        f'  {{ name: "{INPUT_NAME}" data_type: TYPE_FP32 dims: {in_dims} }}',
        "]",
        "output [",
        f'  {{ name: "{OUTPUT_NAME}" data_type: TYPE_FP32 dims: {out_dims} }}',
        "]",
        f"instance_group [ {{ count: {int(instances)} kind: {kind} }} ]",
        "version_policy: { latest: { num_versions: 1 } }",
    ]
    if flavour == "python" and dynamic_batching:
        lines += [f"dynamic_batching {{ max_queue_delay_microseconds: {int(queue_delay_us)} }}"]
    return "\n".join(lines) + "\n" + _params(params)


def _build_plans_script(networks: Sequence[str], version: int) -> str:
    rows = []
    for n in networks:
        h, w = protocol_shape(n)[3:]
        rows.append(
            f"trtexec --onnx={n}/{n}.onnx --saveEngine={n}/{version}/model.plan "
            f"--minShapes={INPUT_NAME}:{BATCH}x4x{IN_SLICES}x{h}x{w} "
            f"--optShapes={INPUT_NAME}:{BATCH}x4x{IN_SLICES}x{h}x{w} "
            f"--maxShapes={INPUT_NAME}:{BATCH}x4x{IN_SLICES}x{MAX_HW}x{MAX_HW}"
        )
    return (
        "#!/usr/bin/env bash\n"
        "# Build the TensorRT plans ON THE SERVING GPU (a plan is specific to the GPU model, driver and\n"
        "# TensorRT version), e.g. inside the NGC Triton container that will serve them:\n"
        "#   docker run --gpus all --rm -v $PWD:/models -w /models \\\n"
        "#       nvcr.io/nvidia/tritonserver:<yy.mm>-py3 bash build_plans.sh\n"
        "# FP32 (no --fp16): the cascade was validated in FP32.\n"
        "set -euo pipefail\ncd \"$(dirname \"$0\")\"\n" + "\n".join(rows) + "\n"
    )


def generate(
    models: Path,
    out: Path,
    flavour: str = "python",
    networks: Sequence[str] = NETWORKS,
    dynamic_batching: bool = True,
    instances: int = 1,
    threads: int = 0,
    version: int = 1,
) -> dict[str, Any]:
    """Write a Triton model repository for ``networks`` from the model folder ``models``.

    Parameters
    ----------
    models
        Folder written by ``python -m engines.prepare`` (``<net>.onnx``, ``manifest.json``).
    out
        Repository folder to (re)create.
    flavour, dynamic_batching, instances, threads
        See :func:`config_pbtxt`.
    version
        Model version folder name (a positive integer).

    Returns
    -------
    dict
        What was written (also saved as ``<out>/repository.json``, not a model).
    """
    t0 = time.perf_counter()
    models = Path(models)
    manifest = json.loads((models / "manifest.json").read_text())
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {FLAVOURS}, got {flavour!r}")
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    engines_src = Path(__file__).resolve().parents[1]  # the engines package
    summary: dict[str, Any] = {
        "flavour": flavour, "version": version, "dynamic_batching": dynamic_batching and flavour == "python",
        "instances": instances, "generator": GENERATOR, "source_models": str(models), "networks": {},
    }
    for net in networks:
        onnx = models / f"{net}.onnx"
        digest = manifest["networks"][net]["sha256"][f"{net}.onnx"]
        if file_sha256(onnx) != digest:
            raise ValueError(f"{onnx} does not match its manifest hash: rebuild the model folder")
        vdir = out / net / str(version)
        vdir.mkdir(parents=True)
        if flavour == "python":
            shutil.copy2(onnx, vdir / f"{net}.onnx")
            shutil.copy2(engines_src / "serving" / "triton_python_model.py", vdir / "model.py")
            for name in ENGINE_FILES:
                (vdir / "engines" / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(engines_src / name, vdir / "engines" / name)
        elif flavour == "onnxruntime":
            shutil.copy2(onnx, vdir / "model.onnx")
        else:  # tensorrt: the ONNX waits next to config.pbtxt; the plan is built on the GPU
            shutil.copy2(onnx, out / net / f"{net}.onnx")
        (out / net / "config.pbtxt").write_text(
            config_pbtxt(net, flavour, digest, dynamic_batching, instances, threads)
        )
        summary["networks"][net] = {"onnx_sha256": digest, "version": version}
    if flavour == "tensorrt":
        # A file, not a folder, at the root: Triton loads every sub-folder as a model.
        (out / "build_plans.sh").write_text(_build_plans_script(networks, version))
    summary["seconds"] = time.perf_counter() - t0
    (out / "repository.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info("Triton repository (%s) for %d networks written to %s in %.1f s",
             flavour, len(networks), out, summary["seconds"])
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", type=Path, required=True, help="model folder (python -m engines.prepare)")
    p.add_argument("--out", type=Path, required=True, help="repository folder to (re)create")
    p.add_argument("--flavour", choices=FLAVOURS, default="python")
    p.add_argument("--no-dynamic-batching", action="store_true", help="python flavour: no dynamic_batching block")
    p.add_argument("--instances", type=int, default=1, help="instance_group count per network")
    p.add_argument("--threads", type=int, default=0, help="python flavour: ORT threads per instance (0 = CPU count)")
    p.add_argument("--version", type=int, default=1)
    p.add_argument("--networks", nargs="*", default=list(NETWORKS))
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    generate(a.models, a.out, a.flavour, a.networks, not a.no_dynamic_batching, a.instances, a.threads, a.version)
    print(f"Triton model repository written to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
