"""Holoscan operator: model-grid volumes -> BraTS label map, through an inference engine."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from monai.deploy.core import Fragment, Operator, OperatorSpec

from operators.errors import DegenerateIntensityError, InferenceServerError, ModelFolderError
from operators.study_model import MODALITY_DISPLAY, MODALITIES, ModelInput, SegmentationOutcome

ENGINE_PREFERENCE = (
    # GPU: TensorRT FP16 when importable, else the compiled FP16 torch engine.
    "tensorrt", "torch-cuda-fp16", "onnxruntime-cuda", "torch-cuda",
    # CPU: BF16 needs native bfloat16 (AVX512-BF16 / AMX; refused elsewhere, then FP32).
    "openvino-folded-bf16", "openvino-folded", "openvino", "onnxruntime", "torch",
)  # fmt: skip
"""``auto`` picks the first of these that can run here (see :func:`resolve_engine`)."""


def check_model_folder(model_dir: Path) -> dict:
    """Read and check the model folder written by ``python -m engines.prepare``."""
    manifest_path = Path(model_dir) / "manifest.json"
    if not manifest_path.is_file():
        raise ModelFolderError(
            f"{model_dir} is not a model folder (no manifest.json); build it with "
            "'python -m engines.prepare --out <models dir>'"
        )
    try:
        return json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelFolderError(f"{manifest_path} is not valid JSON ({exc})") from exc


def resolve_engine(requested: str, model_dir: Path, triton_server: str = "", triton_timeout_s: float = 300.0):
    """Create the engine the settings ask for; ``auto`` = best available, logged.

    With ``triton_server`` (the SDK's ``-t`` / ``TRITON_SERVER_NETLOC``) the engine is the
    remote one (:class:`engines.triton_engine.TritonEngine`), whatever ``requested`` says;
    there is no fallback to local inference (a server problem fails the run, see
    :func:`segment`).

    Returns the engine and a list of notes (fallbacks taken, with reasons). The engine's
    ``choice_reason`` says in one line why it was chosen (``report.json``: segmentation ->
    engine -> ``choice_reason``).
    """
    from engines.base import available_engines, create_engine

    logger = logging.getLogger(__name__)
    notes: list[str] = []
    if triton_server:
        try:
            engine = create_engine("triton", model_dir=model_dir, url=triton_server, timeout_s=triton_timeout_s)
        except ValueError as exc:  # malformed address
            raise InferenceServerError(f"-t {triton_server}: {exc}") from exc
        if requested != "auto":
            notes.append(f"engine setting {requested!r} not used: remote inference on Triton at {engine.url}")
        logger.info("Engine: triton (remote inference at %s, request timeout %.0f s)", engine.url, triton_timeout_s)
        engine.choice_reason = f"remote inference requested (Triton server {engine.url})"
        return engine, notes
    if requested != "auto":
        # An explicitly requested engine that cannot run here (no GPU, library missing,
        # unknown name) falls back to ``auto``; the warning goes into the report's notes.
        try:
            engine = create_engine(requested, model_dir=model_dir)
            engine.choice_reason = f"requested by the settings (engine: {requested})"
            return engine, notes
        except Exception as exc:  # noqa: BLE001 - any failure: fall back, say so
            note = (
                f"requested engine {requested} unavailable ({type(exc).__name__}: {str(exc)[:160]}); "
                "fell back to auto"
            )
            notes.append(" ".join(note.split()))
            logger.warning("%s", notes[-1])
    passed_over: list[str] = []
    for name in ENGINE_PREFERENCE:
        if name not in available_engines():
            continue
        try:
            engine = create_engine(name, model_dir=model_dir)
            logger.info("Engine: %s (auto)", name)
            engine.choice_reason = (f"auto: first engine of the preference order that runs here"
                                    + (f"; passed over {', '.join(passed_over)}" if passed_over else ""))  # fmt: skip
            return engine, notes
        except Exception as exc:  # noqa: BLE001 - any failure means: try the next one
            notes.append(f"engine {name} unavailable: {type(exc).__name__}: {str(exc)[:160]}")
            passed_over.append(f"{name} ({type(exc).__name__}: {' '.join(str(exc).split())[:80]})")
            logger.warning("Engine %s unavailable (%s); falling back", name, str(exc))
    raise ModelFolderError(f"no inference engine could be created from {model_dir}: {notes}")


class SegmentationOperator(Operator):
    """Runs the BraTS 2017 cascade (WT -> TC -> EN, three views each) on the model grid.

    Named input:
        model_input: :class:`operators.study_model.ModelInput`.

    Named output:
        segmentation: :class:`operators.study_model.SegmentationOutcome` (labels on the
        model grid, the engine's description, which channels were imputed and how).

    The engine comes from the settings (``auto``: the first of :data:`ENGINE_PREFERENCE`
    that works here: TensorRT FP16 > PyTorch CUDA FP16 (compiled) > ONNX Runtime CUDA > PyTorch
    CUDA FP32 > OpenVINO folded BF16 >
    OpenVINO folded FP32 > OpenVINO > ONNX Runtime CPU > PyTorch CPU). Absent modalities
    are fed as documented by :mod:`engines.cascade` and listed in the outcome.
    """

    def __init__(self, fragment: Fragment, *args, model_dir: Path, engine: str = "auto", seed: int = 0,
                 triton_server: str = "", triton_timeout_s: float = 300.0, **kwargs):
        self._logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self.model_dir = Path(model_dir)
        self.manifest = check_model_folder(self.model_dir)
        self.engine_name = engine
        self.seed = seed
        self.triton_server = triton_server
        self.triton_timeout_s = triton_timeout_s
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("model_input")
        spec.output("segmentation")

    def compute(self, op_input, op_output, context) -> None:
        model_input: ModelInput = op_input.receive("model_input")
        outcome = segment(model_input, self.model_dir, self.engine_name, self.seed, self._logger,
                          triton_server=self.triton_server, triton_timeout_s=self.triton_timeout_s)  # fmt: skip
        op_output.emit(outcome, "segmentation")


def segment(model_input: ModelInput, model_dir: Path, engine_name: str, seed: int, logger: logging.Logger,
            triton_server: str = "", triton_timeout_s: float = 300.0) -> SegmentationOutcome:
    """The work of :class:`SegmentationOperator`, callable without Holoscan.

    ``triton_server`` set: the cascade's networks run on that Triton server (checked first:
    live, ready, same weights as ``model_dir``); any server problem raises
    :class:`operators.errors.InferenceServerError` (one line, exit code 5). The outcome's
    engine description says ``"inference": "remote"`` or ``"local"``.
    """
    from engines.cascade import segment_brats_full
    from engines.triton_engine import TritonError

    t0 = time.perf_counter()
    engine, notes = resolve_engine(engine_name, model_dir, triton_server, triton_timeout_s)
    remote = bool(triton_server)

    def progress(stage: str, fraction: float) -> None:
        logger.info("Segmentation: stage %s done (%d%%, %.0f s)", stage.upper(), round(100 * fraction), time.perf_counter() - t0)

    missing = [MODALITY_DISPLAY[m] for m, a in zip(MODALITIES, model_input.available) if not a]
    if missing:
        logger.warning("Missing modalities %s: the network gets the documented substitute for them", missing)
    try:
        result = segment_brats_full(model_input.volumes, model_input.available, engine, seed=seed, progress=progress)
    except TritonError as exc:  # the cascade's prepare() checks the server first; or it failed mid-run
        raise InferenceServerError(str(exc)) from exc
    except ValueError as exc:  # the cascade's normalisation refuses degenerate channels
        if "intensity spread" in str(exc) or "no voxel > 0" in str(exc):
            raise DegenerateIntensityError(f"on the model grid: {exc}") from exc
        raise
    if remote:
        desc = result.engine
        versions = ", ".join(f"{n} v{'/'.join(m['versions'])}" for n, m in desc["models"].items())
        notes.append(f"remote inference: Triton {desc['server_version']} at {desc['server']} ({versions})")
        logger.info("Segmentation: %s", notes[-1])
    timings = {k: float(v) for k, v in result.timings.items()}
    timings["operator_total"] = time.perf_counter() - t0
    return SegmentationOutcome(
        model_input=model_input,
        labels=result.labels,
        engine={"inference": "remote" if remote else "local", "engine": engine.registry_name,
                "choice_reason": engine.choice_reason, **result.engine},
        imputed_channels=[MODALITY_DISPLAY[m.lower()] for m in result.imputed_channels],
        notes=notes + list(result.notes),
        timings=timings,
    )
