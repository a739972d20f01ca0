"""Holoscan operator: selected series -> all of them on the model grid."""
from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from monai.deploy.core import Fragment, Operator, OperatorSpec

from operators.dicom.series_volume import series_to_image
from operators.spatial.brain_masking import brain_mask_on_grid
from operators.spatial.grid import choose_reference, model_grid, resample_to_grid
from operators.spatial.registration import register_rigid
from operators.spatial.registration_result import RegistrationResult
from operators.spatial.registration_torch import register_rigid_torch, torch_registration_device
from operators.study_model import MODALITIES, ModalitySelection, ModelInput


class RegistrationOperator(Operator):
    """Puts every selected series onto one grid, as the model was trained.

    Named input:
        selection: :class:`operators.study_model.ModalitySelection`.

    Parameters: ``model_dir`` (the model folder: HD-BET's exported graph), ``cache_dir`` (the
    engine cache: the CPU precision measured here), ``seed``, ``brain_extraction``,
    ``registration_backend``.

    Named output:
        model_input: :class:`operators.study_model.ModelInput` (``(4, Z, Y, X)`` volumes on
        the 1 mm model grid, availability, the reference series, the transforms and the
        registration records).

    The reference is T1ce when present, else T1, T2, FLAIR (``registration.REFERENCE_ORDER``).
    Every other series is rigidly registered to it (SimpleITK, Mattes mutual information,
    multi-resolution, fixed seed, identity start = the scanner's patient coordinates, the
    thicker-sliced image as the metric domain; see :func:`operators.spatial.registration.register_rigid`),
    then all are resampled (linear) onto the model grid: 1 mm isotropic, identity direction
    in LPS, covering the reference's field of view. Series are registered even when their
    headers claim the same frame of reference: patients move between sequences.

    When the study is not skull-stripped (decided from every series,
    :func:`operators.spatial.skull_stripped.assess_study`), a brain mask is computed on the
    model grid (HD-BET by default; :func:`operators.spatial.brain_masking.brain_mask_on_grid`)
    and applied to every channel (background exactly 0, as the model expects); recorded
    under ``registrations[<reference>]["brain_extraction"]``, the mask kept in
    ``ModelInput.brain_mask`` (the QA image draws its outline).
    """

    def __init__(self, fragment: Fragment, *args, seed: int = 0, brain_extraction: str = "hd-bet",
                 registration_backend: str = "auto", model_dir: Path | None = None, cache_dir: Path | None = None,
                 **kwargs) -> None:
        self._logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self.seed = seed
        self.model_dir = model_dir
        self.cache_dir = cache_dir
        self.brain_extraction = brain_extraction
        self.registration_backend = registration_backend
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("selection")
        spec.output("model_input")

    def compute(self, op_input, op_output, context) -> None:
        selection: ModalitySelection = op_input.receive("selection")
        op_output.emit(build_model_input(selection, self.seed, self._logger, self.brain_extraction,
                                         self.registration_backend, self.model_dir, self.cache_dir), "model_input")


def choose_registration_backend(setting: str = "auto") -> tuple[str, str]:
    """``(backend, reason)``: ``simpleitk``, ``torch-cuda`` or ``torch-cpu`` for the setting."""
    if setting != "auto":
        return setting, f"set by brats.registration / BRATS_REGISTRATION ({setting})"
    if torch_registration_device() == "cuda":
        return "torch-cuda", "auto: a CUDA GPU is present (registration on the GPU, next to the network)"
    return "simpleitk", "auto: no CUDA GPU (SimpleITK, one registration per core, is the faster CPU path)"


def _register(backend: str, fixed: sitk.Image, moving: sitk.Image, seed: int) -> RegistrationResult:
    if backend == "simpleitk":
        return register_rigid(fixed, moving, seed=seed, initializer="identity")
    return register_rigid_torch(fixed, moving, device=backend.removeprefix("torch-"), seed=seed)


def build_model_input(selection: ModalitySelection, seed: int, logger: logging.Logger,
                      brain_extraction: str = "hd-bet", registration_backend: str = "auto",
                      model_dir: Path | None = None, cache_dir: Path | None = None) -> ModelInput:
    """The work of :class:`RegistrationOperator`, callable without Holoscan.

    ``model_dir`` holds HD-BET's exported graph (run by the engine layer; PyTorch without it),
    ``cache_dir`` the measured CPU precision (:mod:`engines.runtimes.cpu_precision`).

    Returns
    -------
    ModelInput
        ``volumes`` ``(4, Z, Y, X)`` float32 on the model grid (LPS, identity direction);
        ``registrations`` holds one record per moving series and, for the reference,
        ``{"reference": True, "brain_extraction": {"decision", "evidence", "applied", ...}}``
        (the skull-stripped decision with its evidence and, when applied, the method, the
        series it ran on and its record); ``brain_mask`` the applied mask (or ``None``).
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    images = {}
    for modality, series in selection.selected.items():
        uid = series.header.series_instance_uid
        images[modality] = selection.images.get(uid) or series_to_image(series.datasets,
                                                                        series.header.series_description)
    timings["series_to_volume"] = time.perf_counter() - t0
    reference_key = choose_reference({m: s.image for m, s in images.items()})
    reference = images[reference_key]
    grid = model_grid(reference.image)
    logger.info(
        "Reference %s: size %s spacing %s; model grid %s",
        reference_key,
        reference.image.GetSize(),
        tuple(round(s, 3) for s in reference.image.GetSpacing()),
        grid.GetSize(),
    )
    backend, backend_reason = choose_registration_backend(registration_backend)
    registrations: dict[str, dict] = {reference_key: {
        "reference": True, "registration_backend": {"name": backend, "reason": backend_reason}}}
    transforms: dict[str, sitk.Transform] = {reference_key: sitk.Euler3DTransform()}
    volumes = np.zeros((4, *sitk.GetArrayViewFromImage(grid).shape), dtype=np.float32)
    # Every moving series is registered to the reference at once, one thread each (SimpleITK
    # releases the GIL; each registration is single-threaded, hence deterministic), at most one
    # per core.
    moving_keys = [m for m in MODALITIES if m in images and m != reference_key]
    t1 = time.perf_counter()
    workers = max(1, min(len(moving_keys), os.cpu_count() or 1)) if backend == "simpleitk" else 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = dict(zip(moving_keys, pool.map(
            lambda m: _register(backend, reference.image, images[m].image, seed + 1), moving_keys)))  # fmt: skip
    if moving_keys:
        timings["register_all"] = time.perf_counter() - t1
    for modality, result in results.items():
        transforms[modality] = result.transform
        registrations[modality] = result.as_dict()
        timings[f"register_{modality}"] = result.duration_s
        logger.info(
            "Registered %s -> %s: angles %s deg, translation %s mm, MI %.4f -> %.4f%s (%.1f s)",
            modality,
            reference_key,
            [round(a, 2) for a in registrations[modality]["angles_deg"]],
            [round(t, 2) for t in registrations[modality]["translation_mm"]],
            result.metric_before,
            result.metric_after,
            " (kept identity)" if result.kept_identity else "",
            result.duration_s,
        )
    for modality in MODALITIES:
        if modality not in images:
            continue
        moving = images[modality].image
        t2 = time.perf_counter()
        on_grid = resample_to_grid(moving, grid, transforms[modality], sitk.sitkLinear, 0.0)
        volumes[MODALITIES.index(modality)] = sitk.GetArrayFromImage(on_grid).astype(np.float32)
        timings[f"resample_{modality}"] = time.perf_counter() - t2
    t3 = time.perf_counter()

    def on_grid(modality: str) -> sitk.Image:  # a series on the model grid, built when needed
        img = sitk.GetImageFromArray(volumes[MODALITIES.index(modality)])
        img.CopyInformation(grid)
        return img

    brain_mask, brain_record = brain_mask_on_grid(
        {m: s.image for m, s in images.items()}, on_grid, reference_key, grid,
        method=brain_extraction, seed=seed + 1, logger=logger, model_dir=model_dir, cache_dir=cache_dir)
    if brain_mask is not None:
        volumes[:, sitk.GetArrayViewFromImage(brain_mask) == 0] = 0.0
    timings["brain_extraction"] = time.perf_counter() - t3
    registrations[reference_key]["brain_extraction"] = brain_record
    timings["total"] = time.perf_counter() - t0
    available = tuple(m in images for m in MODALITIES)
    return ModelInput(
        selection=selection,
        volumes=volumes,
        available=available,  # type: ignore[arg-type]
        grid=grid,
        reference_modality=reference_key,
        reference=reference,
        registrations=registrations,
        transforms=transforms,
        timings=timings,
        brain_mask=brain_mask,
    )
