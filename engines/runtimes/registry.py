"""Engines by name, and which one the app runs: the registry and the ``auto`` choice.

:func:`create_engine` makes an engine from its registry name (runtimes imported lazily, so an
absent runtime breaks only itself: :class:`~engines.runtimes.base.EngineUnavailable`).
:func:`choose_engine` is the app's policy: remote inference on Triton when a server is given,
else the engine the settings name, else (``auto``) the first of :data:`ENGINE_PREFERENCE` that
runs here; it says why (the engine's ``choice_reason``) and which were passed over (notes).
A BF16 engine is taken only where BF16 measured faster than FP32 on this CPU
(:mod:`engines.runtimes.cpu_precision`); the measurement goes into the engine's
``precision_choice``.
"""
from __future__ import annotations

import importlib
import inspect
import json
import logging
from pathlib import Path
from typing import Any

from engines.runtimes.base import EngineUnavailable, InferenceEngine
from engines.runtimes.cpu_host import flush_denormals

log = logging.getLogger(__name__)


class EngineChoiceError(Exception):
    """No engine can run the model folder as asked (one-line message)."""


class ModelFolderInvalid(EngineChoiceError):
    """The model folder is not one ``python -m engines.prepare`` wrote."""


class NoEngineAvailable(EngineChoiceError):
    """Not one engine of the preference order could be created here."""


class RemoteAddressInvalid(EngineChoiceError):
    """The Triton server address (``-t`` / ``TRITON_SERVER_NETLOC``) is malformed."""


#: name -> ("module:Class", default options); imported lazily so that an absent runtime
#: breaks only itself. A variant of an engine is an entry with other defaults, not a subclass.
_REGISTRY: dict[str, tuple[str, dict[str, Any]]] = {
    "torch": ("engines.runtimes.torch_engine:TorchEngine", {}),
    "onnxruntime": ("engines.runtimes.onnx_engine:OnnxRuntimeEngine", {}),
    "openvino": ("engines.runtimes.openvino_engine:OpenVinoEngine", {}),
    # Folded-layout graph (engines.model.msnet_folded): FP32, and BF16 on CPUs with AVX512-BF16/AMX.
    "openvino-folded": ("engines.runtimes.openvino_engine:OpenVinoEngine", {"graph": "folded"}),
    "openvino-folded-bf16": ("engines.runtimes.openvino_engine:OpenVinoEngine", {"graph": "folded", "precision": "bf16"}),
    "torch-compile": ("engines.runtimes.torch_compile_engine:TorchCompileEngine", {}),
    "tensorrt": ("engines.runtimes.tensorrt_engine:TensorRTEngine", {}),
    "torch-cuda": ("engines.runtimes.cuda_engines:TorchCudaEngine", {}),
    # FP16 on CUDA without TensorRT: compiled, channels-last, one CUDA graph per (network, shape).
    "torch-cuda-fp16": ("engines.runtimes.torch_fp16_engine:TorchHalfEngine", {}),
    # The same, each network an AOTInductor package built once per GPU / driver / CUDA / torch
    # into the engine cache and only loaded by later processes (not in ``auto`` until measured).
    "torch-cuda-fp16-aot": ("engines.runtimes.torch_fp16_engine:TorchHalfEngine", {"aot": True}),
    "onnxruntime-cuda": ("engines.runtimes.cuda_engines:OnnxRuntimeCudaEngine", {}),
    "triton": ("engines.runtimes.triton_engine:TritonEngine", {}),  # remote: needs url= (the app's -t)
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
    cache_dir: Path | None = None,
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
    cache_dir
        Where engines that build or compile for the GPU at hand keep the result (TensorRT
        plans, Inductor kernels); given only to engines whose constructor takes ``cache_dir``,
        ignored by the others.
    **options
        Engine specific (e.g. ``threads``).
    """
    aliases = {"ort": "onnxruntime", "onnx": "onnxruntime", "pytorch": "torch"}
    key = aliases.get(name, name)
    if key not in _REGISTRY:
        raise ValueError(f"unknown engine {name!r}; available: {available_engines()}")
    target, defaults = _REGISTRY[key]
    module_name, _, cls_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:  # the runtime's library (openvino, tensorrt, ...) is absent
        if (exc.name or "").split(".")[0] in ("engines", "operators", "app"):
            raise  # our own code: a bug, not a missing runtime
        raise EngineUnavailable(f"engine {key}: {exc}") from exc
    cls = getattr(module, cls_name)
    flush_denormals()  # before any engine computes (engines.runtimes.cpu_host)
    if cache_dir is not None and "cache_dir" in inspect.signature(cls).parameters:
        options = {"cache_dir": cache_dir, **options}
    engine = cls(model_dir=model_dir, weights_dir=weights_dir, **{**defaults, **options})
    engine.registry_name = key
    return engine


ENGINE_PREFERENCE = (
    # GPU: TensorRT FP16 when importable, else the compiled FP16 torch engine.
    "tensorrt", "torch-cuda-fp16", "onnxruntime-cuda", "torch-cuda",
    # CPU: BF16 needs native bfloat16 (AVX512-BF16 / AMX; refused elsewhere, then FP32).
    "openvino-folded-bf16", "openvino-folded", "openvino", "onnxruntime", "torch",
)
"""``auto`` picks the first of these that can run here (see :func:`choose_engine`)."""


#: The CPU engines that run in bfloat16: taken only when BF16 measures faster on this CPU.
BF16_ENGINES = ("openvino-folded-bf16",)


def _cascade_precision(model_dir: Path, cache_dir: Path | None) -> dict[str, Any]:
    """The cascade's measured CPU precision (:mod:`engines.runtimes.cpu_precision`), as a report
    record; FP32 when it cannot be measured (BF16 costs accuracy: never taken unmeasured)."""
    import os

    from engines.runtimes.cpu_precision import choose_cpu_precision

    try:
        return choose_cpu_precision("cascade", model_dir, cache_dir, os.cpu_count() or 1).as_report()
    except Exception as exc:  # noqa: BLE001 - no OpenVINO, no folded graph: FP32, said why
        return {"role": "cascade", "precision": "fp32", "source": "not measured",
                "reason": f"FP32 / BF16 not measured ({type(exc).__name__}: {' '.join(str(exc).split())[:120]})"}


def check_model_folder(model_dir: Path) -> dict:
    """Read and check the model folder written by ``python -m engines.prepare``."""
    manifest_path = Path(model_dir) / "manifest.json"
    if not manifest_path.is_file():
        raise ModelFolderInvalid(
            f"{model_dir} is not a model folder (no manifest.json); build it with "
            "'python -m engines.prepare --out <models dir>'"
        )
    try:
        return json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelFolderInvalid(f"{manifest_path} is not valid JSON ({exc})") from exc


def choose_engine(requested: str, model_dir: Path, triton_server: str = "", triton_timeout_s: float = 300.0,
                  cache_dir: Path | None = None) -> tuple[InferenceEngine, list[str]]:
    """Create the engine the settings ask for; ``auto`` = the best that runs here, logged.

    With ``triton_server`` the engine is the remote one
    (:class:`engines.runtimes.triton_engine.TritonEngine`), whatever ``requested`` says; there is
    no fallback to local inference. An explicitly requested engine that cannot run here (no GPU,
    library missing, unknown name) falls back to ``auto``, with a note.

    Returns the engine and a list of notes (fallbacks taken, with reasons). The engine's
    ``choice_reason`` says in one line why it was chosen (``report.json``: segmentation ->
    engine -> ``choice_reason``).
    """
    notes: list[str] = []
    if triton_server:
        try:
            engine = create_engine("triton", model_dir=model_dir, url=triton_server, timeout_s=triton_timeout_s)
        except ValueError as exc:  # malformed address
            raise RemoteAddressInvalid(f"-t {triton_server}: {exc}") from exc
        if requested != "auto":
            notes.append(f"engine setting {requested!r} not used: remote inference on Triton at {engine.url}")
        log.info("Engine: triton (remote inference at %s, request timeout %.0f s)", engine.url, triton_timeout_s)
        engine.choice_reason = f"remote inference requested (Triton server {engine.url})"
        return engine, notes
    if requested != "auto":
        try:
            engine = create_engine(requested, model_dir=model_dir, cache_dir=cache_dir)
            engine.choice_reason = f"requested by the settings (engine: {requested})"
            return engine, notes
        except Exception as exc:  # noqa: BLE001 - any failure: fall back, say so
            note = (
                f"requested engine {requested} unavailable ({type(exc).__name__}: {str(exc)[:160]}); "
                "fell back to auto"
            )
            notes.append(" ".join(note.split()))
            log.warning("%s", notes[-1])
    passed_over: list[str] = []
    precision: dict[str, Any] | None = None
    for name in ENGINE_PREFERENCE:
        if name not in available_engines():
            continue
        if name in BF16_ENGINES:
            precision = _cascade_precision(model_dir, cache_dir)
            if precision["precision"] != "bf16":
                passed_over.append(f"{name} ({precision['reason']})")
                continue
        try:
            engine = create_engine(name, model_dir=model_dir, cache_dir=cache_dir)
            log.info("Engine: %s (auto)", name)
            engine.choice_reason = ("auto: first engine of the preference order that runs here"
                                    + (f"; passed over {', '.join(passed_over)}" if passed_over else ""))
            if precision is not None:  # a CPU engine (the GPU engines come before the BF16 one)
                engine.precision_choice = precision
                if name in BF16_ENGINES:
                    engine.choice_reason += f"; BF16 because {precision['reason']}"
            return engine, notes
        except Exception as exc:  # noqa: BLE001 - any failure means: try the next one
            notes.append(f"engine {name} unavailable: {type(exc).__name__}: {str(exc)[:160]}")
            passed_over.append(f"{name} ({type(exc).__name__}: {' '.join(str(exc).split())[:80]})")
            log.warning("Engine %s unavailable (%s); falling back", name, str(exc))
    raise NoEngineAvailable(f"no inference engine could be created from {model_dir}: {notes}")
