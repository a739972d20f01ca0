"""Brain masking on the model grid: is the study stripped? if not, which method, which series.

Called by :func:`operators.registration_operator.register_and_resample` after every series is on
the model grid (1 mm, identity direction in LPS).

* Decision: :func:`operators.spatial.skull_stripped.assess_study` on every series' own grid
  (native voxels, before any interpolation). "stripped": nothing is applied.
* "not stripped", method ``hd-bet`` (default): HD-BET (:mod:`operators.spatial.hd_bet`) on ONE
  series on the model grid (:func:`choose_hd_bet_series`), fast mode (fold 0, one pass; the
  model folder's ``hd_bet.onnx`` on OpenVINO) on a CPU, accurate mode (5 folds x 8
  mirrorings, PyTorch) on a CUDA GPU. Its mask is applied to every
  channel (background exactly 0, as the network was trained). Weights absent: fails with
  :class:`operators.spatial.hd_bet.HdBetWeightsMissing` (never downloaded, never silently
  replaced). Any other HD-BET failure (memory, CUDA): the template method, recorded.
* method ``template``: :func:`operators.spatial.brain_extraction.extract_brain` on the
  reference (MNI152 registration; kept as the fallback and for comparison).

Tumour safety: HD-BET's mask is the brain including the tumour; holes are filled (necrotic
cavities). A dilation would keep a little more tumour at the price of a rim of CSF and a lower
brain Dice; it is not applied (:data:`SAFETY_MARGIN_MM` = 0; the measurements behind that choice
are in README.md, "Brain extraction"). A mask under :data:`MIN_BRAIN_ML` is no brain found:
the study is refused (:class:`operators.errors.NoBrainFoundError`).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import SimpleITK as sitk

from operators.errors import NoBrainFoundError
from operators.spatial.methods import BrainExtraction
from operators.spatial.skull_stripped import assess_study

__all__ = ["HD_BET_SERIES_ORDER", "MIN_BRAIN_ML", "SAFETY_MARGIN_MM", "brain_mask_on_grid", "choose_hd_bet_series",
           "hd_bet_brain_mask"]

#: Tie-break among series of equal native resolution (see :func:`choose_hd_bet_series`).
HD_BET_SERIES_ORDER: tuple[str, ...] = ("t1ce", "t1", "flair", "t2")
#: A brain mask smaller than this (ml) is no brain found: the study is refused.
MIN_BRAIN_ML = 1.0
#: Dilation of the HD-BET mask on the model grid, mm (0: none; see the module doc).
SAFETY_MARGIN_MM = 0.0


def choose_hd_bet_series(native: Mapping[str, sitk.Image]) -> tuple[str, str]:
    """The series HD-BET runs on, and why.

    HD-BET accepts T1, T1ce, T2 and FLAIR alike; what differs between series here is how
    much of the model-grid image is interpolation: the series with the smallest native voxel
    (within 10 %) is taken; ties go to T1ce (the reference when present: no registration
    error between the mask and the grid's defining series), then T1, FLAIR, T2.
    """
    vox = {m: float(np.prod(img.GetSpacing())) for m, img in native.items()}
    finest = min(vox.values())
    ties = [m for m in HD_BET_SERIES_ORDER if m in vox and vox[m] <= 1.1 * finest]
    key = ties[0]
    others = ", ".join(f"{m} {vox[m]:.2f}" for m in HD_BET_SERIES_ORDER if m in vox and m != key)
    return key, (f"{key}: finest native voxel ({vox[key]:.2f} mm^3; {others or 'no other series'})"
                 + (f", first of {'/'.join(ties)} in the order {'/'.join(HD_BET_SERIES_ORDER)}"
                    if len(ties) > 1 else ""))


def hd_bet_brain_mask(image: sitk.Image, *, mode: str = "fast", device: str = "cpu", model_dir: Path | None = None,
                      cache_dir: Path | None = None) -> tuple[sitk.Image, dict]:
    """HD-BET's mask of ``image`` as the app applies it (dilated by :data:`SAFETY_MARGIN_MM`
    when that is > 0). ``model_dir``: the model folder holding ``hd_bet.onnx`` (the engine
    layer runs it; PyTorch without it); ``cache_dir``: where the measured CPU precision is
    cached. Returns the mask and HD-BET's record."""
    from operators.spatial.hd_bet import hd_bet_mask

    res = hd_bet_mask(image, mode=mode, device=device, model_dir=model_dir, cache_dir=cache_dir)
    mask = res.mask
    if SAFETY_MARGIN_MM > 0:
        mask = sitk.BinaryDilate(mask, [max(1, int(round(SAFETY_MARGIN_MM / s))) for s in image.GetSpacing()],
                                 sitk.sitkBall)
        mask.CopyInformation(image)
    return sitk.Cast(mask, sitk.sitkUInt8), res.record


def brain_mask_on_grid(
    native: Mapping[str, sitk.Image],
    on_grid: Callable[[str], sitk.Image],
    reference_key: str,
    grid: sitk.Image,
    *,
    method: BrainExtraction | str = BrainExtraction.HD_BET,
    seed: int = 1,
    logger: logging.Logger | None = None,
    model_dir: Path | None = None,
    cache_dir: Path | None = None,
) -> tuple[sitk.Image | None, dict[str, Any]]:
    """The brain mask on the model grid (``None`` when the study is already stripped).

    Parameters
    ----------
    native
        Each series on its own grid (the decision is taken there).
    on_grid
        A series on the model grid, by modality (HD-BET runs there; called when needed).
    reference_key
        The reference series (the template method runs on it).
    grid
        The model grid.
    method
        ``"hd-bet"`` or ``"template"``.
    model_dir, cache_dir
        The model folder (HD-BET's exported graph) and the engine cache (see
        :func:`hd_bet_brain_mask`).

    Returns
    -------
    mask, record
        ``sitkUInt8`` on ``grid`` or ``None``; ``record`` for ``report.json``: ``decision``,
        ``evidence``, ``applied``, ``method``, ``series`` and why, timings, HD-BET's record.
    """
    log = logger or logging.getLogger(__name__)
    t0 = time.perf_counter()
    stripped, evidence = assess_study(native)
    record: dict[str, Any] = {
        "decision": evidence["decision"],
        "reference_skull_stripped": stripped,
        "evidence": evidence,
        "applied": False,
        "duration_decision_s": time.perf_counter() - t0,
    }
    if stripped:
        record["method"] = "none (already skull-stripped)"
        return None, record
    mask = None
    if method == BrainExtraction.HD_BET:
        from operators.spatial.hd_bet import HdBetWeightsMissing

        key, why = choose_hd_bet_series(native)
        device, mode = _device_and_mode()
        try:
            mask, hd_record = hd_bet_brain_mask(on_grid(key), mode=mode, device=device, model_dir=model_dir,
                                                  cache_dir=cache_dir)
            record.update(method="hd-bet", series=key, series_reason=why,
                          hd_bet=hd_record, safety_margin_mm=SAFETY_MARGIN_MM,
                          mode_reason=("CUDA GPU present: accurate mode (5 folds x 8 mirrorings)"
                                       if device != "cpu" else
                                       "no CUDA GPU: fast mode (fold 0, no mirroring) on the CPU"))
        except HdBetWeightsMissing:
            raise
        except Exception as exc:  # noqa: BLE001 -- any run-time failure: the template method
            log.warning("HD-BET failed (%s); falling back to the template method", exc)
            record["hd_bet_failure"] = f"{type(exc).__name__}: {exc}"
    if mask is None:
        from operators.spatial.brain_extraction import extract_brain
        from operators.spatial.grid import resample_to_grid

        brain = extract_brain(native[reference_key], seed=seed)
        mask = resample_to_grid(brain.mask, grid, None, sitk.sitkNearestNeighbor, 0.0)
        record.update(method="template" + (" (fallback: HD-BET failed)" if "hd_bet_failure" in record else ""),
                      series=reference_key, template=brain.record)
    mask = sitk.Cast(mask, sitk.sitkUInt8)
    mask.CopyInformation(grid)
    record["applied"] = True
    record["mask_ml"] = float(np.count_nonzero(sitk.GetArrayViewFromImage(mask)) * np.prod(grid.GetSpacing()) / 1000.0)
    record["duration_s"] = time.perf_counter() - t0
    if record["mask_ml"] < MIN_BRAIN_ML:
        depth_mm = grid.GetSize()[2] * grid.GetSpacing()[2]
        raise NoBrainFoundError(f"the study is not skull-stripped ({evidence['reason']}) and brain extraction "
                                f"({record['method']} on {record['series']}) found {record['mask_ml']:.1f} ml of brain "
                                f"in {depth_mm:.0f} mm of head-feet coverage; nothing to segment")
    log.info("Not skull-stripped (%s): %s on %s, brain mask %.0f ml (%.1f s)", evidence["reason"],
             record["method"], record["series"], record["mask_ml"], record["duration_s"])
    return mask, record


def _device_and_mode() -> tuple[str, str]:
    try:
        import torch

        if torch.cuda.is_available():
            return "cuda", "accurate"
    except Exception:  # noqa: BLE001 -- a torch without CUDA support: the CPU
        pass
    return "cpu", "fast"
