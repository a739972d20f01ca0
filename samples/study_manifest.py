"""What ``samples.make_study`` built, as written next to the study: one series
(:class:`SeriesManifest`), the study (:class:`StudyManifest`, the content of ``study.json``) and
the known transforms of a ``--misalign`` study (:func:`misalignment_document`, the content of
``misalignment.json``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.model.modalities import MODALITIES
from samples.dicom_writer import SeriesPlan
from samples.scanner_protocols import ACQUISITION_ORDER
from samples.volumes import RigidTransform, Volume

__all__ = ["GENERATOR", "SeriesManifest", "StudyManifest", "misalignment_document"]

#: ``generator`` of ``study.json`` and ``misalignment.json``.
GENERATOR = "samples.make_study 1.0"


@dataclass(frozen=True)
class SeriesManifest:
    """One written series (geometry in SimpleITK order: along i, j, k; LPS mm)."""

    modality: str
    series_instance_uid: str
    series_number: int
    series_description: str
    protocol_name: str
    folder: Path
    num_instances: int
    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    frame_of_reference_uid: str
    misaligned: bool

    @classmethod
    def from_plan(cls, plan: SeriesPlan, vol: Volume, folder: Path) -> SeriesManifest:
        """The manifest of the series written from ``plan`` and ``vol`` into ``folder``."""
        return cls(
            modality=plan.modality,
            series_instance_uid=plan.series_uid,
            series_number=plan.series_number,
            series_description=plan.protocol.series_description,
            protocol_name=plan.protocol.protocol_name,
            folder=folder,
            num_instances=int(vol.data.shape[2]),
            size=tuple(int(n) for n in vol.data.shape),
            spacing=tuple(round(s, 6) for s in vol.spacing),
            origin=tuple(round(o, 6) + 0.0 for o in vol.origin),
            direction=tuple(round(float(v), 9) + 0.0 for v in vol.direction.ravel()),
            frame_of_reference_uid=plan.frame_of_reference_uid,
            misaligned=plan.misaligned,
        )

    def as_dict(self, out_dir: Path) -> dict[str, Any]:
        """JSON-ready dict (``folder`` relative to the output folder, POSIX style)."""
        return {
            "modality": self.modality,
            "series_instance_uid": self.series_instance_uid,
            "series_number": self.series_number,
            "series_description": self.series_description,
            "protocol_name": self.protocol_name,
            "folder": self.folder.relative_to(out_dir).as_posix(),
            "num_instances": self.num_instances,
            "size": list(self.size),
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": list(self.direction),
            "frame_of_reference_uid": self.frame_of_reference_uid,
            "misaligned": self.misaligned,
        }


@dataclass
class StudyManifest:
    """What :func:`samples.make_study.make_study` built (mirrors ``study.json``)."""

    case_id: str
    seed: int
    misalign_seed: int | None
    out_dir: Path
    dicom_dir: Path
    ground_truth: Path
    study_json: Path
    misalignment_json: Path | None
    study_instance_uid: str
    patient_id: str
    patient_name: str
    accession_number: str
    manufacturer: str
    reference_modality: str
    dropped: tuple[str, ...]
    series: dict[str, SeriesManifest]
    transforms: dict[str, RigidTransform] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    slices: tuple[int, int] | None = None

    def as_dict(self) -> dict[str, Any]:
        """Content of ``study.json`` (no timings, so the file is reproducible)."""
        slab = {} if self.slices is None else {"slices": list(self.slices)}
        return {
            **slab,
            "generator": GENERATOR,
            "case_id": self.case_id,
            "seed": self.seed,
            "misalign_seed": self.misalign_seed,
            "study_instance_uid": self.study_instance_uid,
            "patient_id": self.patient_id,
            "patient_name": self.patient_name,
            "accession_number": self.accession_number,
            "manufacturer": self.manufacturer,
            "coordinate_system": "LPS (mm); size/spacing/origin along i, j, k as SimpleITK; "
                                 "direction row-major 3x3, columns = axis directions",
            "reference_modality": self.reference_modality,
            "present": [m for m in MODALITIES if m in self.series],
            "dropped": list(self.dropped),
            "ground_truth": self.ground_truth.relative_to(self.out_dir).as_posix(),
            "dicom_dir": self.dicom_dir.relative_to(self.out_dir).as_posix(),
            "series": [self.series[m].as_dict(self.out_dir) for m in ACQUISITION_ORDER
                       if m in self.series],
        }


def misalignment_document(manifest: StudyManifest) -> dict[str, Any]:
    """Content of ``misalignment.json``."""
    return {
        "generator": GENERATOR,
        "convention": (
            "T maps points of the reference series' physical space (LPS mm) to the moving "
            "series' physical space: x_moving = T(x_ref) = R (x_ref - center) + center + "
            "translation; moving(T(x)) = reference-grid original(x). This is what a SimpleITK "
            "registration with fixed=reference, moving=series returns; "
            "sitk.Resample(moving, reference, T) brings the series back onto the reference grid."
        ),
        "transform_type": "Euler3DTransform (ITK, ComputeZYX=false: R = Rz @ Rx @ Ry)",
        "coordinate_system": "LPS",
        "units": {"angles": "rad", "translation": "mm", "center": "mm"},
        "misalign_seed": manifest.misalign_seed,
        "reference_modality": manifest.reference_modality,
        "reference_series_instance_uid": manifest.series[manifest.reference_modality]
        .series_instance_uid,
        "series": {
            m: {
                "series_instance_uid": manifest.series[m].series_instance_uid,
                "folder": manifest.series[m].folder.relative_to(manifest.out_dir).as_posix(),
                **t.as_dict(),
            }
            for m, t in manifest.transforms.items()
        },
    }
