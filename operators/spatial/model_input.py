"""The registration stage's work without Holoscan: the selected series -> all on the model grid, skull
removed, and the reference series (:class:`operators.registration_operator.RegistrationOperator` runs it).
"""
from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from operators.dicom.series_volume import series_to_image
from operators.spatial.brain_masking import brain_mask_on_grid
from operators.spatial.grid import choose_reference, model_grid, resample_to_grid
from operators.spatial.methods import AUTO, BrainExtraction, RegistrationBackend
from operators.spatial.registration import register_rigid
from operators.spatial.registration_result import RegistrationResult
from operators.spatial.registration_torch import register_rigid_torch, torch_registration_device
from operators.study_model import (
    MODALITIES,
    Modality,
    ModalitySelection,
    ModelInput,
    ReferenceSeries,
    RegistrationRecord,
    Stage,
    Timings,
)


@dataclass(frozen=True)
class Registered:
    """What :func:`register_and_resample` gives: one field per output port of
    :class:`operators.registration_operator.RegistrationOperator`, and the transforms (reference
    points -> each series' points)."""

    model_input: ModelInput
    reference: ReferenceSeries
    brain_mask: sitk.Image | None
    record: RegistrationRecord
    timings: Timings
    transforms: dict[Modality, sitk.Transform]


def choose_registration_backend(setting: str = AUTO) -> tuple[RegistrationBackend, str]:
    """``(backend, reason)`` for the setting (``auto`` or a :class:`RegistrationBackend`)."""
    if setting != AUTO:
        return RegistrationBackend(setting), f"set by brats.registration / BRATS_REGISTRATION ({setting})"
    if torch_registration_device() == "cuda":
        return RegistrationBackend.TORCH_CUDA, "auto: a CUDA GPU is present (registration on the GPU, next to the network)"
    return RegistrationBackend.SIMPLEITK, "auto: no CUDA GPU (SimpleITK, one registration per core, is the faster CPU path)"


def register_one(backend: RegistrationBackend, fixed: sitk.Image, moving: sitk.Image, seed: int) -> RegistrationResult:
    """One rigid registration of ``moving`` to ``fixed`` with ``backend``."""
    if backend == RegistrationBackend.SIMPLEITK:
        return register_rigid(fixed, moving, seed=seed, initializer="identity")
    return register_rigid_torch(fixed, moving, device=backend.torch_device, seed=seed)


def register_and_resample(selection: ModalitySelection, seed: int, logger: logging.Logger,
                          brain_extraction: BrainExtraction | str = BrainExtraction.HD_BET,
                          registration_backend: str = AUTO, model_dir: Path | None = None,
                          cache_dir: Path | None = None) -> Registered:
    """The work of :class:`operators.registration_operator.RegistrationOperator`, callable without Holoscan.

    ``model_dir`` holds HD-BET's exported graph (run by the engine layer; PyTorch without it),
    ``cache_dir`` the measured CPU precision (:mod:`engines.runtimes.cpu_precision`).

    Returns
    -------
    Registered
        ``model_input.volumes`` ``(4, Z, Y, X)`` float32 on the model grid (LPS, identity
        direction); ``record`` one registration record per moving series and the brain
        extraction's (the skull-stripped decision with its evidence and, when applied, the
        method, the series it ran on and its record); ``brain_mask`` the applied mask (or
        ``None``); ``timings`` ``register_and_resample`` (its steps as its detail) and its parts.
    """
    steps = Timings()  # this stage's own steps (report.json: registration.timings_s)
    clock = Timings()  # its parts in the run's breakdown
    t0 = time.perf_counter()
    images = {}
    for modality, series in selection.selected.items():
        uid = series.header.series_instance_uid
        images[modality] = selection.images.get(uid) or series_to_image(series.datasets,
                                                                        series.header.series_description)
    dt = time.perf_counter() - t0
    steps.add("series_to_volume", dt)
    clock.add(Stage.SERIES_TO_VOLUME, dt)
    reference_key = Modality(choose_reference({m: s.image for m, s in images.items()}))
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
    moving_records: dict[Modality, dict[str, Any]] = {}
    transforms: dict[Modality, sitk.Transform] = {reference_key: sitk.Euler3DTransform()}
    volumes = np.zeros((4, *sitk.GetArrayViewFromImage(grid).shape), dtype=np.float32)
    # Every moving series is registered to the reference at once, one thread each (SimpleITK
    # releases the GIL; each registration is single-threaded, hence deterministic), at most one
    # per core.
    moving_keys = [m for m in MODALITIES if m in images and m != reference_key]
    t1 = time.perf_counter()
    workers = max(1, min(len(moving_keys), os.cpu_count() or 1)) if backend == RegistrationBackend.SIMPLEITK else 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = dict(zip(moving_keys, pool.map(
            lambda m: register_one(backend, reference.image, images[m].image, seed + 1), moving_keys)))
    if moving_keys:
        dt = time.perf_counter() - t1
        steps.add("register_all", dt)
        clock.add(Stage.REGISTRATION, dt)
    for modality, result in results.items():
        transforms[modality] = result.transform
        moving_records[modality] = result.as_dict()
        steps.add(f"register_{modality}", result.duration_s)
        logger.info(
            "Registered %s -> %s: angles %s deg, translation %s mm, MI %.4f -> %.4f%s (%.1f s)",
            modality,
            reference_key,
            [round(a, 2) for a in moving_records[modality]["angles_deg"]],
            [round(t, 2) for t in moving_records[modality]["translation_mm"]],
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
        dt = time.perf_counter() - t2
        steps.add(f"resample_{modality}", dt)
        clock.add(Stage.RESAMPLING, dt)
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
    dt = time.perf_counter() - t3
    steps.add("brain_extraction", dt)
    clock.add(Stage.BRAIN_EXTRACTION, dt)
    total = time.perf_counter() - t0
    steps.add("total", total)
    clock.add(Stage.REGISTER_AND_RESAMPLE, total, detail=steps)
    available: tuple[bool, bool, bool, bool] = tuple(m in images for m in MODALITIES)  # type: ignore[assignment]
    return Registered(
        model_input=ModelInput(volumes=volumes, available=available, grid=grid),
        reference=ReferenceSeries(modality=reference_key, image=reference),
        brain_mask=brain_mask,
        record=RegistrationRecord(reference_modality=reference_key, backend=backend, backend_reason=backend_reason,
                                  moving=moving_records, brain_extraction=brain_record, grid=grid),
        timings=clock,
        transforms=transforms,
    )
