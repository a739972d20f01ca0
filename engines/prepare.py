"""Write the model folder the app's ``-m`` takes: state dicts, ONNX files and a manifest.

Usage::

    python -m engines.prepare --out models [--weights ../shared/models/brats17-cascade] \
        [--networks wt32 tc32 ...]

With ``--brain-extraction`` (default) HD-BET's fold-0 network is exported to
``<out>/hd_bet.onnx`` (:mod:`engines.brain.hd_bet_network`); then FP32 and BF16 are timed on
this CPU for each role and the choice written to ``<out>/cpu-precision.json``
(:mod:`engines.runtimes.cpu_precision`; ``--no-measure-cpu`` skips it).

For each network ``<name>`` this writes ``<out>/<name>.pt`` (PyTorch ``state_dict``),
``<out>/<name>.onnx`` (opset 17, dynamic ``N, D, H, W`` axes), ``<out>/<name>.folded.onnx``
(the same network in the folded layout of :mod:`engines.model.msnet_folded`, for batches of 5 slabs,
dynamic ``D, H, W``; used by the ``openvino-folded*`` engines) and finally
``<out>/manifest.json``. Each ONNX file is checked with ``onnx.checker`` and its ONNX
Runtime logits are compared with the PyTorch logits on a small input (tolerance 1e-3).
The exported graph computes the batch statistics itself (``ReduceMean`` etc.); there are
no ``BatchNormalization`` nodes and no running statistics.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engines.model.modalities import CHANNEL_NAMES
from engines.model.msnet import MSNet
from engines.model.msnet_folded import FOLDED_BATCH, FOLDED_SUFFIX, export_folded_onnx
from engines.model.weights import NETWORKS, default_weights_dir, load_network, npz_path
from engines.runtimes.base import INPUT_NAME, OUTPUT_NAME
from engines.runtimes.engine_cache import file_sha256

log = logging.getLogger(__name__)

OPSET = 17
INPUT_AXES = ["N", "C", "D", "H", "W"]
OUTPUT_AXES = ["N", "classes", "D_out", "H", "W"]
VERIFY_TOLERANCE = 1e-3


sha256 = file_sha256  # one implementation (engines.runtimes.engine_cache), streamed


def verification_input(net: MSNet, seed: int = 0) -> np.ndarray:
    """Small deterministic input ``(2, 4, 13, H, W)`` (H, W = 32, 40) for the ORT check.

    Deliberately a different shape from the export example so that the dynamic axes are
    exercised.
    """
    rng = np.random.default_rng(seed)
    return rng.standard_normal((2, 4, 13, 32, 40), dtype=np.float32)


def export_onnx(net: MSNet, path: Path) -> str:
    """Export ``net`` to ONNX (opset 17, dynamic N/D/H/W); return the exporter used.

    The TorchScript exporter (``dynamo=False``) is tried first; the dynamo exporter is the
    fallback.
    """
    example = torch.zeros((1, 4, 11, 16, 16), dtype=torch.float32)
    dyn = {
        INPUT_NAME: {0: "N", 2: "D", 3: "H", 4: "W"},
        OUTPUT_NAME: {0: "N", 2: "D_out", 3: "H", 4: "W"},
    }
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes=dyn, opset_version=OPSET, do_constant_folding=True, dynamo=False,
            )
        return "torchscript"
    except Exception as exc:  # pragma: no cover - depends on the torch version
        log.warning("TorchScript ONNX export failed (%s); trying dynamo", str(exc))
        n, d, h, w = (torch.export.Dim(k) for k in ("N", "D", "H", "W"))
        torch.onnx.export(
            net, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes={"x": {0: n, 2: d, 3: h, 4: w}}, opset_version=OPSET, dynamo=True,
            external_data=False,
        )
        return "dynamo"


def verify_onnx(net: MSNet, path: Path, batch: int | None = None) -> dict[str, Any]:
    """``onnx.checker`` + ORT-vs-torch comparison; raises on failure, returns the facts.

    ``batch``: the graph's fixed batch size (folded export); default: the verification input's.
    """
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    ops = sorted({node.op_type for node in model.graph.node})
    if "BatchNormalization" in ops:
        raise RuntimeError(f"{path}: BatchNormalization node found; batch statistics must be explicit")
    x = verification_input(net)
    if batch is not None:
        x = np.random.default_rng(1).standard_normal((batch, *x.shape[1:]), dtype=np.float32)
    with torch.inference_mode():
        ref = net(torch.from_numpy(x)).numpy()
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {INPUT_NAME: x})
    err = float(np.abs(got - ref).max())
    if got.shape != ref.shape or not err < VERIFY_TOLERANCE:
        raise RuntimeError(f"{path}: ORT vs torch mismatch, shape {got.shape} vs {ref.shape}, max|d| {err}")
    return {"ops": ops, "verify_input_shape": list(x.shape), "ort_vs_torch_max_abs": err}



def export_network(net: MSNet, name: str, out: Path, source: dict[str, Any]) -> dict[str, Any]:
    """Write ``<name>.pt``, ``<name>.onnx`` and ``<name>.folded.onnx`` of ``net`` into ``out``,
    each ONNX file checked against PyTorch; returns the network's manifest entry (``source``:
    where its weights came from, merged in)."""
    t0 = time.perf_counter()
    pt = out / f"{name}.pt"
    onnx_path = out / f"{name}.onnx"
    torch.save(net.state_dict(), pt)
    exporter = export_onnx(net, onnx_path)
    facts = verify_onnx(net, onnx_path)
    folded_path = out / f"{name}{FOLDED_SUFFIX}"
    export_folded_onnx(net, folded_path, FOLDED_BATCH, OPSET)
    folded_facts = verify_onnx(net, folded_path, batch=FOLDED_BATCH)
    entry = {
        "kind": net.kind,
        "files": {"pt": pt.name, "onnx": onnx_path.name, "onnx_folded": folded_path.name},
        "sha256": {pt.name: sha256(pt), onnx_path.name: sha256(onnx_path), folded_path.name: sha256(folded_path)},
        "onnx_folded": {"batch": FOLDED_BATCH, "shape": [FOLDED_BATCH, 4, "D", "H", "W"],
                        "layout": "slabs folded end to end in depth (engines.model.msnet_folded)",
                        "ort_vs_torch_max_abs": folded_facts["ort_vs_torch_max_abs"]},
        **source,
        "exporter": exporter,
        "opset": OPSET,
        "input": {"name": INPUT_NAME, "dtype": "float32", "axes": INPUT_AXES,
                  "shape": ["N", 4, "D", "H", "W"],
                  "channels": list(CHANNEL_NAMES)},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "axes": OUTPUT_AXES,
                   "shape": ["N", 2, "D-8", "H", "W"], "classes": ["background", "foreground"]},
        "constraints": {"D_min": 9, "H_W_multiple_of": net.spatial_multiple,
                        "normalisation": "batch statistics over (N, D, H, W)"},
        **facts,
    }
    log.info("%s: exported (%s), ORT vs torch max|d| %.2e, %.1f s",
             name, exporter, facts["ort_vs_torch_max_abs"], time.perf_counter() - t0)
    return entry


def add_fine_tuned(out: Path, source: Path) -> list[str]:
    """Export the fine-tuned networks of ``source`` (``<name>.pt`` per network its
    ``dropout_manifest.json`` lists, :mod:`engines.model.missing.train_dropout`) into the model
    folder ``out`` beside the shipped ones, and record them in ``out/manifest.json`` with the
    training manifest. Returns their names. Raises ``FileNotFoundError`` / ``ValueError`` when
    ``source`` lacks the manifest or a listed file, or a file's SHA-256 differs from it."""
    from engines.model.missing.train_dropout import MANIFEST
    from engines.model.weights import network_kind

    training = json.loads((source / MANIFEST).read_text())
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    names = list(training["students"].values())
    for name in names:
        pt = source / f"{name}.pt"
        if sha256(pt) != training["files"][pt.name]:
            raise ValueError(f"{pt}: SHA-256 differs from {source / MANIFEST}")
        net = MSNet(network_kind(name))
        net.load_state_dict(torch.load(pt, map_location="cpu", weights_only=True))
        net.float().eval()
        manifest["networks"][name] = export_network(net, name, out, {"fine_tuned": training})
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return names

def prepare(out: Path, weights_dir: Path, networks: Sequence[str] = NETWORKS, brain_extraction: bool = True,
            measure_cpu: bool = True) -> dict[str, Any]:
    """Write ``.pt``, ``.onnx`` and ``manifest.json`` for ``networks`` into ``out``.

    ``brain_extraction``: also export HD-BET (``hd_bet.onnx``, the manifest's
    ``brain_extraction`` entry; :mod:`engines.brain.hd_bet_network`). ``measure_cpu``: measure
    FP32 against BF16 on this CPU (``cpu-precision.json``; :mod:`engines.runtimes.cpu_precision`).

    Returns
    -------
    dict
        The manifest (also written to ``out/manifest.json``).
    """
    import onnx
    import onnxruntime as ort

    out.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {
        "format": "brats17-cascade-models/1",
        "torch_version": torch.__version__,
        "onnx_version": onnx.__version__,
        "onnxruntime_version": ort.__version__,
        "opset": OPSET,
        "weights_dir": str(weights_dir),
        "networks": {},
    }
    for name in networks:
        src = npz_path(name, weights_dir)
        manifest["networks"][name] = export_network(
            load_network(name, weights_dir), name, out, {"source_npz": {"file": src.name, "sha256": sha256(src)}})
    if brain_extraction:
        from engines.brain.hd_bet_network import export_hd_bet_onnx

        manifest["brain_extraction"] = export_hd_bet_onnx(out, OPSET)
    if measure_cpu:
        manifest["cpu_precision"] = _measure_cpu_precision(out)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _measure_cpu_precision(out: Path) -> list[dict[str, Any]]:
    """FP32 or BF16 for each role on this CPU, stored in ``out/cpu-precision.json`` (read first
    by the app when it runs on a CPU of the same signature; :mod:`engines.runtimes.cpu_precision`)."""
    import os

    from engines.runtimes.cpu_precision import CACHE_FILE, PROBES, choose_cpu_precision, store

    choices = []
    for role, (file, _) in PROBES.items():
        if not (out / file).is_file():
            continue
        try:
            choice = choose_cpu_precision(role, out, None, os.cpu_count() or 1)
        except ImportError as exc:  # no OpenVINO here: the app measures where it runs
            log.warning("CPU precision not measured (%s)", exc)
            return choices
        if choice.source == "measured":
            store(out / CACHE_FILE, choice)
        choices.append(choice.as_report())
    return choices


def build_gpu_packages(model_dir: Path, networks: Sequence[str], cache_dir: Path | None = None,
                       device: str = "cuda") -> dict[str, dict[str, Any]]:
    """Build (or find) the ahead-of-time package of each network for this device
    (:mod:`engines.runtimes.aot_packages`), the engine the app's ``torch-cuda-fp16-aot`` loads;
    returns per network ``{"package": "built" | "loaded", "seconds", "key"}``. ``device="cpu"``
    (tests) builds FP32 packages for the CPU."""
    from engines.runtimes.registry import create_engine

    options = {} if device == "cuda" else {"device": device, "precision": "fp32"}
    engine = create_engine("torch-cuda-fp16-aot", model_dir=model_dir, cache_dir=cache_dir, **options)
    return engine.load_packages(networks)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="model folder to write")
    p.add_argument("--weights", type=Path, default=None,
                   help="folder of msnet_*_20000.npz (default $BRATS_SHARED/models/brats17-cascade "
                        "or <repo>/../shared/models/brats17-cascade)")
    p.add_argument("--networks", nargs="+", default=NETWORKS, choices=NETWORKS)
    p.add_argument("--brain-extraction", action=argparse.BooleanOptionalAction, default=True,
                   help="export HD-BET's network too (hd_bet.onnx; default: yes)")
    p.add_argument("--measure-cpu", action=argparse.BooleanOptionalAction, default=True,
                   help="time FP32 against BF16 on this CPU into cpu-precision.json (default: yes)")
    p.add_argument("--fine-tuned", type=Path, default=None,
                   help="only add the fine-tuned networks of this folder (engines.model.missing.train_dropout's "
                        "--out) to the existing model folder --out")
    p.add_argument("--gpu", action="store_true",
                   help="only build the GPU engine's ahead-of-time packages (torch-cuda-fp16-aot) of the existing "
                        "model folder --out into the engine cache, for this GPU, driver, CUDA and torch")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="engine cache for --gpu (default: the app's, engines.runtimes.engine_cache.default_cache_dir)")
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # --gpu on the CPU: tests only
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.gpu:
        build_gpu_packages(args.out, args.networks, args.cache_dir, args.device)
        return 0
    if args.fine_tuned:
        torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
        add_fine_tuned(args.out, args.fine_tuned)
        return 0
    weights = args.weights or default_weights_dir()
    if not weights.is_dir():
        p.error(f"weights folder not found: {weights}")
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    prepare(args.out, weights, args.networks, args.brain_extraction, args.measure_cpu)
    return 0


if __name__ == "__main__":
    sys.exit(main())
