"""Writing a sample series as classic MR Image Storage files, deterministically.

The study-level values every series of a study shares (:class:`StudyContext`, drawn from the
seed by :func:`study_context`), what one series needs (:class:`SeriesPlan`), one slice's dataset
(:func:`slice_dataset`: pixel data and image plane as ``samples.make_study``'s docstring, GEOMETRY,
states) and one series on disk (:func:`write_series`); UIDs from a hash of their parts
(:func:`deterministic_uid`), Decimal String text (:func:`decimal_string`), and the staging folder
a study is written into before it is renamed to ``<out>/dicom`` (:func:`prepare_study_folder`).

Same arguments -> byte-identical files: every UID, date and name comes from the seed and the
parts named, never from the clock.
"""
from __future__ import annotations

import re
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

from samples.scanner_protocols import VENDORS, SequenceProtocol, VendorProfile
from samples.volumes import StudyBuildError, Volume, seeded_rng

__all__ = [
    "SeriesPlan",
    "StudyContext",
    "decimal_string",
    "decimal_strings",
    "deterministic_uid",
    "prepare_study_folder",
    "refuse_existing_study",
    "sanitise",
    "slice_dataset",
    "study_context",
    "window_of",
    "write_series",
]


def _entropy(*parts: object) -> list[str]:
    """Entropy sources for ``generate_uid`` (strings, so the hash is platform independent). The
    prefix is the module these UIDs were first made in: changing it would change every UID."""
    return ["samples.make_study", *(str(p) for p in parts)]


def deterministic_uid(*parts: object) -> str:
    """Deterministic UID (pydicom root + SHA-512 of the parts): same parts, same UID."""
    return generate_uid(entropy_srcs=_entropy(*parts))


def decimal_string(x: float) -> str:
    """Decimal String text: at most 6 decimals, no trailing zeros, no ``-0``."""
    v = round(float(x), 6) + 0.0
    if v == int(v):
        return str(int(v))
    return f"{v:.6f}".rstrip("0").rstrip(".")


def decimal_strings(xs: Iterable[float]) -> list[str]:
    """:func:`decimal_string` of each value (a multi-valued DS attribute)."""
    return [decimal_string(x) for x in xs]


def sanitise(text: str) -> str:
    """Folder-safe text: runs of characters other than ``[A-Za-z0-9]`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_") or "SERIES"


def window_of(data: np.ndarray) -> tuple[int, int]:
    """(WindowCenter, WindowWidth) from the 0.5-99.5 percentiles of the non-zero voxels."""
    nz = data[data != 0]
    if nz.size == 0:
        return 0, 1
    lo, hi = np.percentile(nz, [0.5, 99.5])
    return int(round((lo + hi) / 2.0)), max(1, int(round(hi - lo)))


@dataclass(frozen=True)
class StudyContext:
    """Study / patient level attributes shared by all series."""

    case_id: str
    study_uid: str
    study_date: date
    study_start: datetime
    accession: str
    patient_name: str
    referring: str
    institution: str
    patient_weight_kg: int
    vendor: VendorProfile
    uid_case: str = ""
    """Case key for UIDs: the case id, plus the slab when ``--slices`` keeps a part only."""


def study_context(case_id: str, seed: int, misalign_seed: int | None,
                  slab: tuple[int, int] | None = None) -> StudyContext:
    """Deterministic study-level values from ``seed`` (and case / misalignment)."""
    rng = seeded_rng("study", seed, case_id)
    day = date(2018, 1, 2) + timedelta(days=int(rng.integers(0, 700)))
    start = datetime(day.year, day.month, day.day, int(rng.integers(7, 17)),
                     int(rng.integers(0, 60)), int(rng.integers(0, 60)))
    short = re.sub(r"^Brats\d*_", "", case_id)
    short = re.sub(r"_\d+$", "", short)
    return StudyContext(
        case_id=case_id,
        study_uid=deterministic_uid(seed, _uid_case(case_id, slab), misalign_seed, "study"),
        study_date=day,
        study_start=start,
        accession=f"A{int(rng.integers(10**7, 10**8))}",
        patient_name=f"BRATS^{short}",
        referring=("DOE^JANE", "ROE^RICHARD", "DOE^JOHN")[int(rng.integers(3))],
        institution="DEMO UNIVERSITY HOSPITAL",
        patient_weight_kg=int(rng.integers(55, 95)),
        vendor=VENDORS[seed % len(VENDORS)](),
        uid_case=_uid_case(case_id, slab),
    )


def _uid_case(case_id: str, slab: tuple[int, int] | None) -> str:
    return case_id if slab is None else f"{case_id}|slices={slab[0]}:{slab[1]}"


@dataclass(frozen=True)
class SeriesPlan:
    """Everything needed to write one series."""

    modality: str
    protocol: SequenceProtocol
    series_number: int
    series_uid: str
    frame_of_reference_uid: str
    start: datetime
    folder_name: str
    misaligned: bool


def _set_study_attributes(ds: Dataset, ctx: StudyContext) -> None:
    """Patient, study, equipment attributes (identical in every file of the study)."""
    v = ctx.vendor
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = MRImageStorage
    ds.StudyDate = ctx.study_date.strftime("%Y%m%d")
    ds.StudyTime = ctx.study_start.strftime("%H%M%S")
    ds.AccessionNumber = ctx.accession
    ds.Modality = "MR"
    ds.Manufacturer = v.manufacturer
    ds.InstitutionName = ctx.institution
    ds.ReferringPhysicianName = ctx.referring
    ds.StationName = v.station_name
    ds.StudyDescription = v.study_description
    ds.ManufacturerModelName = v.model
    ds.PatientName = ctx.patient_name
    ds.PatientID = ctx.case_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.PatientWeight = str(ctx.patient_weight_kg)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "BraTS 2018 public data; synthetic DICOM headers"
    ds.BodyPartExamined = "BRAIN"
    ds.SoftwareVersions = list(v.software_versions)
    ds.StudyInstanceUID = ctx.study_uid
    ds.StudyID = "1"
    ds.PatientPosition = "HFS"


def _set_series_attributes(
    ds: Dataset, ctx: StudyContext, plan: SeriesPlan, vol: Volume, window: tuple[int, int]
) -> None:
    """Series / acquisition / image-plane-constant attributes (same for every slice)."""
    p = plan.protocol
    sp = vol.spacing
    n_i, n_j, _ = vol.data.shape
    ds.ImageType = list(p.image_type)
    ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = plan.start.strftime("%Y%m%d")
    ds.SeriesTime = plan.start.strftime("%H%M%S.%f")[:13]
    ds.AcquisitionTime = plan.start.strftime("%H%M%S.%f")[:13]
    ds.SeriesDescription = p.series_description
    ds.ProtocolName = p.protocol_name
    ds.ScanningSequence = list(p.scanning_sequence)
    ds.SequenceVariant = list(p.sequence_variant)
    ds.ScanOptions = list(p.scan_options)
    ds.MRAcquisitionType = "2D"
    if p.sequence_name:
        ds.SequenceName = p.sequence_name
    ds.SliceThickness = decimal_string(sp[2])
    ds.RepetitionTime = decimal_string(p.repetition_time)
    ds.EchoTime = decimal_string(p.echo_time)
    if p.inversion_time is not None:
        ds.InversionTime = decimal_string(p.inversion_time)
    ds.NumberOfAverages = "1"
    ds.ImagingFrequency = decimal_string(ctx.vendor.imaging_frequency_mhz)
    ds.ImagedNucleus = "1H"
    ds.EchoNumbers = "1"
    ds.MagneticFieldStrength = "3"
    ds.SpacingBetweenSlices = decimal_string(sp[2])
    ds.EchoTrainLength = str(p.echo_train_length)
    ds.PercentSampling = "100"
    ds.PercentPhaseFieldOfView = "100"
    ds.ReceiveCoilName = ctx.vendor.receive_coil
    ds.TransmitCoilName = "Body"
    ds.AcquisitionMatrix = [0, n_i, n_j, 0]
    ds.InPlanePhaseEncodingDirection = "ROW"
    ds.FlipAngle = decimal_string(p.flip_angle)
    if p.contrast:
        inject = plan.start - timedelta(seconds=75)
        ds.ContrastBolusAgent = ctx.vendor.contrast_agent
        ds.ContrastBolusRoute = "IV"
        ds.ContrastBolusVolume = decimal_string(round(ctx.patient_weight_kg * 0.1, 1))  # ml, 0.1 ml/kg
        ds.ContrastBolusTotalDose = ds.ContrastBolusVolume
        ds.ContrastBolusStartTime = inject.strftime("%H%M%S")
        ds.ContrastBolusIngredient = "GADOLINIUM"
        ds.ContrastBolusIngredientConcentration = "1"  # mmol/ml (gadobutrol 1.0 M)
    ds.SeriesInstanceUID = plan.series_uid
    ds.SeriesNumber = str(plan.series_number)
    ds.AcquisitionNumber = "1"
    ds.FrameOfReferenceUID = plan.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    # Image plane (see GEOMETRY in samples.make_study's docstring):
    #   IOP = [unit LPS dir of increasing i (along a row), unit LPS dir of increasing j];
    #   PixelSpacing = [spacing along j (row to row), spacing along i (column to column)].
    d = vol.direction
    ds.ImageOrientationPatient = decimal_strings([*d[:, 0], *d[:, 1]])
    ds.PixelSpacing = decimal_strings([sp[1], sp[0]])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = n_j  # row index = j
    ds.Columns = n_i  # column index = i
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1  # signed int16: the NIfTI values, unchanged, no rescale
    ds.WindowCenter = str(window[0])
    ds.WindowWidth = str(window[1])
    ds.WindowCenterWidthExplanation = "Auto"


def slice_dataset(
    ctx: StudyContext, plan: SeriesPlan, vol: Volume, k: int, window: tuple[int, int], seed: int,
    misalign_seed: int | None,
) -> Dataset:
    """The complete dataset (with file meta) of slice ``k`` of a series.

    ``pixel_array[j, i] = vol.data[i, j, k]``;
    ``ImagePositionPatient = A_lps @ (0, 0, k, 1)``; ``InstanceNumber = k + 1``.
    """
    sop_uid = deterministic_uid(seed, ctx.uid_case, misalign_seed, plan.modality, "instance", k)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"PYDICOM {pydicom.__version__}"[:16]

    ds = Dataset()
    ds.file_meta = meta
    _set_study_attributes(ds, ctx)
    _set_series_attributes(ds, ctx, plan, vol, window)
    ds.SOPInstanceUID = sop_uid
    created = plan.start + timedelta(seconds=plan.protocol.duration_s + 5 + 0.01 * k)
    ds.InstanceCreationDate = created.strftime("%Y%m%d")
    ds.InstanceCreationTime = ds.ContentTime = created.strftime("%H%M%S.%f")[:13]
    ds.InstanceNumber = str(k + 1)
    ipp = (vol.affine_lps @ np.array([0.0, 0.0, float(k), 1.0]))[:3]
    ds.ImagePositionPatient = decimal_strings(ipp)
    ds.SliceLocation = decimal_string(float(np.dot(ipp, vol.direction[:, 2])))
    # pixel_array[j, i] = data[i, j, k]  (rows = j, columns = i)
    pixels = np.ascontiguousarray(vol.data[:, :, k].T, dtype="<i2")
    ds.add_new(0x7FE00010, "OW", pixels.tobytes())
    return ds


def write_series(
    ctx: StudyContext, plan: SeriesPlan, vol: Volume, dicom_dir: Path, seed: int,
    misalign_seed: int | None,
) -> Path:
    """Write one series as ``<dicom_dir>/<folder>/IM_0001.dcm`` ... (one file per slice k)."""
    folder = dicom_dir / plan.folder_name
    folder.mkdir(parents=True)
    window = window_of(vol.data)
    for k in range(vol.data.shape[2]):
        ds = slice_dataset(ctx, plan, vol, k, window, seed, misalign_seed)
        ds.save_as(folder / f"IM_{k + 1:04d}.dcm", enforce_file_format=True)
    return folder


def refuse_existing_study(out_dir: Path, overwrite: bool) -> None:
    """Refuse to replace an existing study unless ``overwrite``."""
    final = out_dir / "dicom"
    if not overwrite and final.is_dir() and any(final.iterdir()):
        raise StudyBuildError(f"{final} already holds a study; use --overwrite to replace it")


def prepare_study_folder(out_dir: Path, overwrite: bool) -> Path:
    """Create ``out_dir`` (an earlier study there replaced only with ``overwrite``) and return a fresh
    staging folder for the DICOM tree (``<out>/.dicom.partial``; the caller renames it ``<out>/dicom``
    once every series is written)."""
    refuse_existing_study(out_dir, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / "dicom"
    if final.exists() and any(final.iterdir()):
        shutil.rmtree(final)
    (out_dir / "misalignment.json").unlink(missing_ok=True)
    staging = out_dir / ".dicom.partial"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    return staging


@contextmanager
def staged_dicom_folder(out_dir: Path, overwrite: bool) -> Iterator[Path]:
    """The staging folder of a study's DICOM tree (:func:`prepare_study_folder`): renamed
    ``<out>/dicom`` when the block ends, removed when it raises (never a half-written study)."""
    staging = prepare_study_folder(out_dir, overwrite)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    staging.rename(out_dir / "dicom")
