"""The objects that flow between the operators of the graph.

Data flows one way: loader -> modality selector -> registration / normalisation ->
segmentation -> DICOM-SEG writer -> report writer. Each operator emits one of the
dataclasses below; none of them is mutated downstream (each stage adds its own record).

Conventions used everywhere in this project
-------------------------------------------
* Physical space is DICOM / ITK **LPS** millimetres. NIfTI (RAS) never enters the graph.
* ``SimpleITK.Image`` objects carry geometry; NumPy arrays taken from them are in
  ``sitk.GetArrayFromImage`` order **(Z, Y, X) = (slices, rows, columns)**.
* Modality keys are ``"flair"``, ``"t1"``, ``"t1ce"``, ``"t2"``, always in the model's channel
  order :data:`MODALITIES`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.model.modalities import DISPLAY as MODALITY_DISPLAY
from engines.model.modalities import MODALITIES

__all__ = ["MODALITIES", "MODALITY_DISPLAY"]  # the one vocabulary, re-exported for the operators


@dataclass(frozen=True)
class SeriesHeader:
    """The header facts of one series that selection and reporting need.

    Values are taken from the first instance of the series (after sorting); numbers in ms
    (TR, TE, TI) and mm (slice thickness, pixel spacing) as DICOM stores them.
    """

    series_instance_uid: str
    series_number: int | None
    series_description: str
    protocol_name: str
    sop_class_uid: str
    modality: str
    image_type: tuple[str, ...]
    scanning_sequence: tuple[str, ...]
    sequence_variant: tuple[str, ...]
    mr_acquisition_type: str
    repetition_time_ms: float | None
    echo_time_ms: float | None
    inversion_time_ms: float | None
    contrast_bolus_agent: str
    slice_thickness_mm: float | None
    pixel_spacing_mm: tuple[float, float] | None
    image_orientation: tuple[float, ...] | None
    acquisition_time: str
    series_time: str
    number_of_instances: int
    number_of_frames: int
    patient_position: str = ""
    frame_of_reference_uid: str = ""
    scan_options: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class LoadedSeries:
    """One image series of the study: its header summary and its instances.

    ``datasets`` are full pydicom datasets (pixel data included), in the order they were
    found; geometry-aware ordering happens when the series becomes a volume.
    """

    header: SeriesHeader
    datasets: list[Any]
    files: list[Path]


@dataclass
class LoadedStudy:
    """What the loader found in the input folder."""

    study_instance_uid: str
    patient_id: str
    series: list[LoadedSeries]
    ignored: list[dict[str, str]] = field(default_factory=list)
    """Files / instances left out, each ``{"what": ..., "reason": ...}``."""
    duration_s: float = 0.0


@dataclass
class SeriesCandidate:
    """How the selector judged one series."""

    series_instance_uid: str
    series_description: str
    modality: str  # one of MODALITIES or "other"
    scores: dict[str, float]
    reasons: list[str]

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ModalitySelection:
    """One series per modality (or none), with the reasons behind every choice."""

    study: LoadedStudy
    selected: dict[str, LoadedSeries]
    candidates: list[SeriesCandidate]
    reasons: dict[str, str]
    """Per modality: why this series was chosen, or why the modality is missing."""
    duration_s: float = 0.0
    contrast: dict[str, Any] = field(default_factory=dict)
    """The contrast-phase decision (status, statement, per-series phase and evidence)."""
    set_aside: dict[str, str] = field(default_factory=dict)
    """SeriesInstanceUID -> why the series cannot serve as an image (mask, blank, position)."""
    images: dict[str, Any] = field(default_factory=dict)
    """SeriesInstanceUID -> :class:`operators.dicom.series_volume.SeriesImage` of selected series
    already built by the selector (the contrast check); the registration reuses them."""

    @property
    def availability(self) -> dict[str, bool]:
        return {m: m in self.selected for m in MODALITIES}

    @property
    def missing(self) -> list[str]:
        return [m for m in MODALITIES if m not in self.selected]


@dataclass
class ModelInput:
    """All available series on the model grid, ready for the network.

    Attributes
    ----------
    selection
        Upstream selection (availability, reasons).
    volumes
        float32 ``(4, Z, Y, X)``: FLAIR, T1, T1ce, T2 on the model grid (1 mm, identity
        direction in LPS). Absent channels are all zeros here and are *recorded* as absent
        in ``available``; what the network is fed for them is decided (and recorded) by the
        inference protocol.
    available
        4 bools in :data:`MODALITIES` order.
    grid
        The model grid (an image whose geometry defines ``volumes``' voxels).
    reference_modality
        Key of the series that defines the patient space and that the SEG references.
    reference
        The reference series as a :class:`operators.dicom.series_volume.SeriesImage` (its own grid,
        its instances slice by slice).
    registrations
        Per moving modality: the registration record (JSON-able; identity for the reference).
    transforms
        Per modality: the rigid transform mapping reference points to that series' points.
    brain_mask
        The brain mask applied to ``volumes`` (``sitkUInt8`` on ``grid``), or ``None`` when
        the study was already skull-stripped.
    """

    selection: ModalitySelection
    volumes: Any
    available: tuple[bool, bool, bool, bool]
    grid: Any
    reference_modality: str
    reference: Any
    registrations: dict[str, dict[str, Any]]
    transforms: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    brain_mask: Any = None


@dataclass
class SegmentationOutcome:
    """The cascade's labels on the model grid plus how they were obtained."""

    model_input: ModelInput
    labels: Any
    """uint8 ``(Z, Y, X)`` BraTS labels {0, 1, 2, 4} on the model grid."""
    engine: dict[str, Any]
    imputed_channels: list[str]
    notes: list[str]
    timings: dict[str, float]
    missing_sequences: dict[str, Any] | None = None
    """With a sequence missing: the subset, the fills used, the expected Dice per region and the
    warnings (:meth:`engines.model.missing.strategies.SubsetPlan.as_report`); else ``None``."""

    @property
    def selection(self) -> ModalitySelection:
        return self.model_input.selection


@dataclass
class PipelineResult:
    """What the DICOM-SEG writer produced; the report writer's input."""

    outcome: SegmentationOutcome
    seg_file: str
    overlay_file: str
    seg_series_instance_uid: str
    seg_sop_instance_uid: str
    volumes_ml: dict[str, float]
    empty: bool
    timings: dict[str, float]
    sr_file: str = ""
    sr_sop_instance_uid: str = ""
    source_attribute_fixes: list[str] = field(default_factory=list)
    """Copied source attributes changed to fit their VR (one line each)."""

    @property
    def selection(self) -> ModalitySelection:
        return self.outcome.selection
