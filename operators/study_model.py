"""The values that flow between the operators of the graph.

Data flows one way: loader -> modality selector -> registration / normalisation ->
segmentation -> DICOM-SEG writer -> report writer. Each operator emits the values below on
named ports (see each operator's docstring); a value is never changed downstream. One
:class:`Timings` travels the whole graph, each operator emitting the one it received with its
own stages added.

Conventions used everywhere in this project
-------------------------------------------
* Physical space is DICOM / ITK **LPS** millimetres. NIfTI (RAS) never enters the graph.
* ``SimpleITK.Image`` objects carry geometry; NumPy arrays taken from them are in
  ``sitk.GetArrayFromImage`` order **(Z, Y, X) = (slices, rows, columns)**.
* Modality keys are :class:`~engines.model.vocabulary.Modality` members (``"flair"``, ``"t1"``,
  ``"t1ce"``, ``"t2"``), always in the model's channel order :data:`MODALITIES`.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.model.modalities import DISPLAY as MODALITY_DISPLAY
from engines.model.modalities import MODALITIES
from engines.model.vocabulary import Modality, Term
from operators.spatial.methods import RegistrationBackend

__all__ = ["MODALITIES", "MODALITY_DISPLAY", "Modality"]  # the one vocabulary, re-exported for the operators


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
    selected: dict[Modality, LoadedSeries]
    candidates: list[SeriesCandidate]
    reasons: dict[Modality, str]
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
    def availability(self) -> dict[Modality, bool]:
        return {m: m in self.selected for m in MODALITIES}

    @property
    def missing(self) -> list[Modality]:
        return [m for m in MODALITIES if m not in self.selected]


@dataclass
class ModelInput:
    """All available series on the model grid, ready for the network.

    Attributes
    ----------
    volumes
        float32 ``(4, Z, Y, X)``: FLAIR, T1, T1ce, T2 on the model grid (1 mm, identity
        direction in LPS), the brain mask applied when the study was not skull-stripped. Absent
        channels are all zeros here and are *recorded* as absent in ``available``; what the
        network is fed for them is decided (and recorded) by the inference protocol.
    available
        4 bools in :data:`MODALITIES` order.
    grid
        The model grid (an image whose geometry defines ``volumes``' voxels).
    """

    volumes: Any
    available: tuple[bool, bool, bool, bool]
    grid: Any


@dataclass(frozen=True)
class ReferenceSeries:
    """The series that defines the patient space and that the SEG references.

    ``image``: a :class:`operators.dicom.series_volume.SeriesImage` (its own grid, its instances
    slice by slice)."""

    modality: Modality
    image: Any


@dataclass(frozen=True)
class RegistrationRecord:
    """How the series were put on the model grid (report.json's ``registration`` section).

    Attributes
    ----------
    reference_modality
        The reference series' modality.
    backend, backend_reason
        Who ran the registrations and why.
    moving
        Per moving modality (channel order): its registration record (JSON-able).
    brain_extraction
        The skull-stripped decision with its evidence and, when applied, the method, the series it
        ran on and its record (JSON-able).
    grid
        The model grid (an image: its geometry only).
    """

    reference_modality: Modality
    backend: RegistrationBackend
    backend_reason: str
    moving: dict[Modality, dict[str, Any]]
    brain_extraction: dict[str, Any]
    grid: Any


@dataclass(frozen=True)
class SegmentationRecord:
    """How the labels were obtained (report.json's ``segmentation`` section, with the plan)."""

    engine: dict[str, Any]
    """The engine's description: local or remote, which engine and why, what it ran."""
    imputed_channels: list[str]
    notes: list[str]


@dataclass(frozen=True)
class WrittenOutputs:
    """What the DICOM-SEG writer staged (report.json's ``result`` section)."""

    seg_file: str
    overlay_file: str
    seg_series_instance_uid: str
    seg_sop_instance_uid: str
    volumes_ml: dict[str, float]
    empty: bool
    sr_file: str = ""
    sr_sop_instance_uid: str = ""
    source_attribute_fixes: list[str] = field(default_factory=list)
    """Copied source attributes changed to fit their VR (one line each)."""


class Stage(Term):
    """Where a run spends its time. The operators' stages (:data:`OPERATOR_STAGES`, report.json's
    ``timings_s``) and the finer parts they are split into (:data:`BREAKDOWN`,
    ``stage_breakdown_s``; load and select are both)."""

    LOAD = "load"
    SELECT = "select"
    REGISTER_AND_RESAMPLE = "register_and_resample"
    SERIES_TO_VOLUME = "series_to_volume"
    REGISTRATION = "registration"
    RESAMPLING = "resampling"
    BRAIN_EXTRACTION = "brain_extraction"
    SEGMENT = "segment"
    NETWORK = "network"
    CASCADE_OTHER = "cascade_other"
    WRITE_SEG = "write_seg"
    BACK_TO_REFERENCE = "back_to_reference"
    SEG = "seg"
    SR = "sr"
    OVERLAY = "overlay"


#: One stage per operator that does the work, in graph order (the report writer's own is not timed).
OPERATOR_STAGES: tuple[Stage, ...] = (Stage.LOAD, Stage.SELECT, Stage.REGISTER_AND_RESAMPLE, Stage.SEGMENT,
                                      Stage.WRITE_SEG)
#: The same run, finer: ``network`` is inside the engine's run only.
BREAKDOWN: tuple[Stage, ...] = (
    Stage.LOAD, Stage.SELECT, Stage.SERIES_TO_VOLUME, Stage.REGISTRATION, Stage.RESAMPLING, Stage.BRAIN_EXTRACTION,
    Stage.NETWORK, Stage.CASCADE_OTHER, Stage.BACK_TO_REFERENCE, Stage.SEG, Stage.SR, Stage.OVERLAY,
)


class Timings(Mapping[str, float]):
    """An ordered stage -> seconds mapping that only grows.

    :meth:`add` appends a stage (or adds to one already there: e.g. resampling, series by
    series); :meth:`merged` gives a new value with another's stages after these. An operator
    times its own stages into a fresh ``Timings`` and emits ``received.merged(own)``: the value
    it received is never changed. A stage may carry the steps its operator timed, as that
    operator names them (:meth:`detail`; report.json's per-section ``timings_s``).
    """

    def __init__(self, seconds: Mapping[str, float] | None = None) -> None:
        self._seconds: dict[str, float] = {}
        self._details: dict[str, Timings] = {}
        for stage, value in (seconds or {}).items():
            self.add(stage, value)

    def add(self, stage: str, seconds: float, detail: Timings | None = None) -> None:
        """Append ``stage`` with ``seconds`` (added to it when already there); ``detail``: its steps."""
        self._seconds[stage] = self._seconds[stage] + float(seconds) if stage in self._seconds else float(seconds)
        if detail is not None:
            self._details[stage] = detail

    def merged(self, other: Timings) -> Timings:
        """These stages, then ``other``'s (a stage in both: the seconds summed, ``other``'s steps)."""
        out = Timings()
        for timings in (self, other):
            for stage, seconds in timings.items():
                out.add(stage, seconds, timings.detail(stage) if stage in timings._details else None)
        return out

    def detail(self, stage: str) -> Timings:
        """The steps of ``stage`` as its operator timed them (empty when it gave none)."""
        return self._details.get(stage, Timings())

    def rounded(self, ndigits: int = 3) -> dict[str, float]:
        """A plain ``{stage: seconds}`` dict, rounded (as report.json writes it)."""
        return {str(stage): round(seconds, ndigits) for stage, seconds in self._seconds.items()}

    def __getitem__(self, stage: str) -> float:
        return self._seconds[stage]

    def __iter__(self) -> Iterator[str]:
        return iter(self._seconds)

    def __len__(self) -> int:
        return len(self._seconds)

    def __repr__(self) -> str:
        return f"Timings({self._seconds!r})"
