"""Build a realistic multi-series MR DICOM study from one BraTS case (test / benchmark input).

Usage
-----
``python -m samples.make_study <case dir> <out dir> [--drop t1,flair] [--misalign SEED]
[--seed N] [--slices START:END] [--overwrite]``, or a clinical-looking exam:
``... --clinical {philips,siemens,ge} [--mask-series] [--no-contrast-evidence]``
(:mod:`samples.clinical_profiles`), or ``--clinical reformats``: only reformats of 3-D
acquisitions (:mod:`samples.reformat_exam`), or ``--clinical thick-post``: a single post-contrast
T1 of 5 mm slices every 6.5 mm (:mod:`samples.thick_post_exam`)

or, without a subprocess, :func:`make_study` (returns a :class:`StudyManifest`).

Output layout (other code depends on it -- keep it exactly)
-----------------------------------------------------------
``<out>/dicom/``
    The study = the application's input folder. One sub-folder per series, named
    ``<SeriesNumber>_<sanitised SeriesDescription>`` (e.g. ``501_AX_T1_POST_GD``), one
    classic MR Image Storage file per slice (``IM_0001.dcm`` ...), explicit VR little endian.
``<out>/ground_truth.nii.gz``
    The case's ``seg`` label map, copied byte-for-byte (original = reference grid).
``<out>/study.json``
    What was built (case, seed, UIDs, per-series geometry, dropped series, reference).
``<out>/misalignment.json`` (only with ``--misalign``)
    The known rigid transform of every non-reference series (convention below).

Determinism
-----------
Same arguments -> byte-identical files. UIDs are ``generate_uid`` with entropy from
(``--seed``, case id, ``--misalign`` seed, series, slice); ``--drop`` does not enter, so a
dropped-series study holds the very same remaining series. ``--slices START:END`` keeps only
the slab of NIfTI slices ``k`` in ``[START, END)`` (a small study for fast runs; geometry
exact: slice ``START`` keeps its position, ``ground_truth.nii.gz`` is cropped the same way);
the slab enters the UIDs, so a slab study never shares UIDs with the full one. ``--seed N`` also picks dates,
names and the vendor style (``N % 3``: Siemens, GE, Philips naming; seed 0 = Siemens).

GEOMETRY (read this before touching anything below)
===================================================
* NIfTI affines (nibabel) are **RAS**; DICOM patient coordinates are **LPS**. The conversion
  is explicit: ``A_lps = diag(-1, -1, 1, 1) @ A_ras`` (flip the first two *rows*).
* For the NIfTI array ``data[i, j, k]`` (nibabel axis order):

  - DICOM **column** index = ``i``, DICOM **row** index = ``j``, **slice** = ``k``;
  - ``pixel_array[j, i] = data[i, j, k]``  -> each slice is ``data[:, :, k].T``
    (``Rows = J``, ``Columns = I``);
  - ``ImageOrientationPatient`` = unit LPS direction of increasing ``i`` (along a row),
    then unit LPS direction of increasing ``j`` (down a column);
  - ``ImagePositionPatient`` (slice ``k``) = ``A_lps @ (0, 0, k, 1)`` (centre of voxel 0,0);
  - ``PixelSpacing`` = ``[spacing along j (between rows), spacing along i (between columns)]``;
  - ``InstanceNumber = k + 1`` (files follow slice order).

  The slice axis must point along ``cross(row dir, column dir)`` (a right-handed LPS affine);
  otherwise a DICOM reader would sort the slices in reverse, so such input is refused.
* SimpleITK images use the same ``(i, j, k)`` index order (``GetArrayFromImage`` returns
  ``[k, j, i]``), LPS physical space.

MISALIGNMENT CONVENTION (``--misalign SEED``)
=============================================
The reference series (T1ce if present, else the first present of t1, t2, flair -- the
application's rule) keeps the original grid exactly. Every other series gets a rigid ITK
``Euler3DTransform`` ``T`` that maps points of the **reference series' physical space (LPS
mm) to the moving series' physical space**: ``x_moving = T(x_ref) = R (x_ref - c) + c + t``.
The moving series' anatomy is displaced by ``T``: ``moving(y) = original(T^-1(y))``, hence
``moving(T(x)) = original(x)`` -- exactly what a SimpleITK registration with
``fixed = reference`` and ``moving = series`` returns; resampling the moving series onto the
reference grid with ``T`` itself (``sitk.Resample(moving, reference, T)``) undoes it.
Each moving series also gets its own acquisition grid (different matrix, pixel spacing and
slice thickness, same field of view, axis-aligned with the reference) and its own
FrameOfReferenceUID.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

from engines.model.modalities import MODALITIES
from operators.spatial.grid import REFERENCE_ORDER

# The case input and the --misalign draws need neither SimpleITK nor pydicom: samples.volumes
# (the GPU check builds its registration pair with it). Imported back under their old names.
from samples.volumes import (
    _INT16_MAX,
    _INT16_MIN,
    Grid,
    RigidTransform,
    StudyBuildError,
    Volume,
    _as_int16,  # noqa: F401 -- ms._as_int16 (samples.make_native_study)
    _rng,
    case_file,
    case_id_of,
    draw_grid,
    draw_transform,
    load_case,
    load_volume,  # noqa: F401 -- ms.load_volume (samples.clinical_profiles)
    nifti_lps_affine,
    volume_center,
)

__all__ = [
    "MODALITIES",
    "REFERENCE_ORDER",
    "RigidTransform",
    "SeriesManifest",
    "StudyBuildError",
    "StudyManifest",
    "choose_reference",
    "main",
    "make_study",
    "nifti_lps_affine",
]

LOG = logging.getLogger("samples.make_study")

# Modality keys (also the file suffixes of a BraTS case) and the reference preference order:
# the application's own (engines.model.modalities, operators.spatial.grid.choose_reference).
#: Acquisition order in the simulated exam (contrast-enhanced T1 comes last).
ACQUISITION_ORDER: tuple[str, ...] = ("t1", "t2", "flair", "t1ce")

_GENERATOR = "samples.make_study 1.0"


# ============================================================================================
# Scanner protocols (what a site's scanner writes, per vendor style)
# ============================================================================================
@dataclass(frozen=True)
class SequenceProtocol:
    """Acquisition parameters of one sequence as a scanner would write them.

    Times in ms, angles in degrees, ``duration_s`` in seconds.
    """

    series_description: str
    protocol_name: str
    scanning_sequence: tuple[str, ...]
    sequence_variant: tuple[str, ...]
    scan_options: tuple[str, ...]
    sequence_name: str
    repetition_time: float
    echo_time: float
    inversion_time: float | None
    flip_angle: float
    echo_train_length: int
    image_type: tuple[str, ...]
    duration_s: int
    contrast: bool = False


@dataclass(frozen=True)
class VendorProfile:
    """Scanner identity and the four brain-tumour protocols of one vendor style."""

    manufacturer: str
    model: str
    software_versions: tuple[str, ...]
    station_name: str
    imaging_frequency_mhz: float
    receive_coil: str
    contrast_agent: str
    study_description: str
    protocols: dict[str, SequenceProtocol]


def _siemens() -> VendorProfile:
    it = ("ORIGINAL", "PRIMARY", "M", "ND", "NORM")
    t1 = SequenceProtocol("AX T1 SE", "t1_se_tra", ("SE",), ("SK", "SP"), ("SAT1",), "*se2d1",
                          550.0, 10.0, None, 90.0, 1, it, 182)
    return VendorProfile(
        manufacturer="SIEMENS", model="Skyra", software_versions=("syngo MR E11",),
        station_name="MRC40123", imaging_frequency_mhz=123.2511, receive_coil="HeadNeck_20",
        contrast_agent="Gadobutrol", study_description="MR HEAD W WO CONTRAST",
        protocols={
            "t1": t1,
            "t2": SequenceProtocol("t2_tse_tra", "t2_tse_tra", ("SE",), ("SK",), ("PFP",),
                                   "*tse2d1_15", 5000.0, 100.0, None, 150.0, 15, it, 165),
            "flair": SequenceProtocol("AX FLAIR", "t2_tirm_tra_dark-fluid", ("SE", "IR"),
                                      ("SK", "SP", "MP"), ("IR",), "*tir2d1_16", 9000.0, 81.0,
                                      2500.0, 150.0, 16, it, 272),
            "t1ce": SequenceProtocol("AX T1 POST GD", "t1_se_tra_post", ("SE",), ("SK", "SP"),
                                     ("SAT1",), "*se2d1", 550.0, 10.0, None, 90.0, 1, it, 182,
                                     contrast=True),
        },
    )


def _ge() -> VendorProfile:
    it = ("ORIGINAL", "PRIMARY", "OTHER")
    proto = "ROUTINE BRAIN W/WO"
    t1 = SequenceProtocol("Ax T1 SE", proto, ("SE",), ("SK", "SP", "OSP"), ("FILTERED_GEMS",),
                          "", 600.0, 9.5, None, 90.0, 1, it, 190)
    return VendorProfile(
        manufacturer="GE MEDICAL SYSTEMS", model="DISCOVERY MR750",
        software_versions=("27", "LX", "MR27.0_R02"), station_name="GEMR750",
        imaging_frequency_mhz=127.7726, receive_coil="HNS Head", contrast_agent="GADAVIST",
        study_description="MRI BRAIN WITH AND WITHOUT CONTRAST",
        protocols={
            "t1": t1,
            "t2": SequenceProtocol("Ax T2 FSE", proto, ("SE",), ("SK", "OSP"),
                                   ("FAST_GEMS", "FILTERED_GEMS"), "", 5200.0, 102.0, None,
                                   125.0, 16, it, 150),
            "flair": SequenceProtocol("Ax T2 FLAIR", proto, ("SE", "IR"), ("SK", "SP", "MP", "OSP"),
                                      ("FAST_GEMS", "IR_GEMS", "FILTERED_GEMS"), "", 9000.0,
                                      81.5, 2250.0, 160.0, 24, it, 240),
            "t1ce": SequenceProtocol("Ax T1 SE +C", proto, ("SE",), ("SK", "SP", "OSP"),
                                     ("FILTERED_GEMS",), "", 600.0, 9.5, None, 90.0, 1, it, 190,
                                     contrast=True),
        },
    )


def _philips() -> VendorProfile:
    se = ("ORIGINAL", "PRIMARY", "M_SE", "M", "SE")
    ir = ("ORIGINAL", "PRIMARY", "M_IR", "M", "IR")
    t1 = SequenceProtocol("T1W_SE_TRA", "T1W_SE_TRA", ("SE",), ("SK",), ("FS",), "SE",
                          500.0, 8.0, None, 90.0, 1, se, 175)
    return VendorProfile(
        manufacturer="Philips Medical Systems", model="Ingenia",
        software_versions=("5.4.1", "5.4.1.0"), station_name="PHILIPS-MR1",
        imaging_frequency_mhz=127.7714, receive_coil="dS Head_32ch", contrast_agent="Gadovist",
        study_description="MR Brain tumour protocol",
        protocols={
            "t1": t1,
            "t2": SequenceProtocol("T2W_TSE_TRA", "T2W_TSE_TRA", ("SE",), ("SK",), ("FS",), "TSE",
                                   4500.0, 100.0, None, 90.0, 15, se, 140),
            "flair": SequenceProtocol("T2W_FLAIR_TRA", "T2W_FLAIR_TRA", ("SE", "IR"), ("SK", "MP"),
                                      ("IR", "FS"), "IR_TSE", 11000.0, 125.0, 2800.0, 90.0, 32,
                                      ir, 264),
            "t1ce": SequenceProtocol("T1W_SE_TRA_GD", "T1W_SE_TRA_GD", ("SE",), ("SK",), ("FS",),
                                     "SE", 500.0, 8.0, None, 90.0, 1, se, 175, contrast=True),
        },
    )


#: Vendor styles; ``--seed N`` picks ``VENDORS[N % 3]`` (seed 0 = the Siemens-style names).
VENDORS = (_siemens, _ge, _philips)


# ============================================================================================
# Determinism helpers
# ============================================================================================
def _entropy(*parts: object) -> list[str]:
    """Entropy sources for ``generate_uid`` (strings, so the hash is platform independent)."""
    return ["samples.make_study", *(str(p) for p in parts)]


def _uid(*parts: object) -> str:
    """Deterministic UID (pydicom root + SHA-512 of the parts)."""
    return generate_uid(entropy_srcs=_entropy(*parts))



# ============================================================================================
# Misalignment: the moved series (the transform and the grid are drawn in samples.volumes)
# ============================================================================================
def resample_moving(original: Volume, transform: RigidTransform, grid: Grid) -> Volume:
    """Simulate a separately acquired, displaced series: ``moving(y) = original(T^-1(y))``.

    ``sitk.Resample``'s transform maps *output* points to *input* points, so it is given
    ``T^-1`` (moving space -> reference space). Linear interpolation, rounded to int16;
    voxels whose nearest original voxel is 0 (outside the skull-stripped brain) stay 0.

    Returns
    -------
    Volume
        ``grid.size`` int16 data on ``grid``. (:func:`samples.volumes.resample_moving_numpy`: the
        same with SciPy, for where SimpleITK is absent; equal voxel for voxel on the series tested.)
    """
    src = original.to_sitk()
    # sitk.Resample: output(y) = input(tx(y)); we want original(T^-1(y)) -> tx = T^-1.
    inverse = transform.to_sitk().GetInverse()

    def _resample(image: sitk.Image, interp: int, out_type: int) -> np.ndarray:
        """Resample onto ``grid``; returns the ``(I, J, K)`` array (``data[i, j, k]``)."""
        out = sitk.Resample(image, grid.size, inverse, interp, grid.origin, grid.spacing,
                            grid.direction, 0.0, out_type)
        return sitk.GetArrayFromImage(out).transpose(2, 1, 0)

    values = _resample(src, sitk.sitkLinear, sitk.sitkFloat32)
    inside = _resample(src != 0, sitk.sitkNearestNeighbor, sitk.sitkUInt8) > 0
    data = np.where(inside, np.clip(np.rint(values), _INT16_MIN, _INT16_MAX), 0).astype(np.int16)
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(grid.direction).reshape(3, 3) * np.asarray(grid.spacing)
    affine[:3, 3] = grid.origin
    return Volume(data=data, affine_lps=affine)


# ============================================================================================
# DICOM writing
# ============================================================================================
def _ds_str(x: float) -> str:
    """Decimal String text: at most 6 decimals, no trailing zeros, no ``-0``."""
    v = round(float(x), 6) + 0.0
    if v == int(v):
        return str(int(v))
    return f"{v:.6f}".rstrip("0").rstrip(".")


def _ds_list(xs: Iterable[float]) -> list[str]:
    return [_ds_str(x) for x in xs]


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
    rng = _rng("study", seed, case_id)
    day = date(2018, 1, 2) + timedelta(days=int(rng.integers(0, 700)))
    start = datetime(day.year, day.month, day.day, int(rng.integers(7, 17)),
                     int(rng.integers(0, 60)), int(rng.integers(0, 60)))
    short = re.sub(r"^Brats\d*_", "", case_id)
    short = re.sub(r"_\d+$", "", short)
    return StudyContext(
        case_id=case_id,
        study_uid=_uid(seed, _uid_case(case_id, slab), misalign_seed, "study"),
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


def plan_series(
    ctx: StudyContext, present: Sequence[str], seed: int, misalign_seed: int | None,
    reference: str,
) -> dict[str, SeriesPlan]:
    """Series numbers, UIDs and acquisition start times in :data:`ACQUISITION_ORDER`.

    Times run over all four sequences (a dropped one was acquired but is not in the study),
    so dropping a series does not change the others.
    """
    plans: dict[str, SeriesPlan] = {}
    t = ctx.study_start + timedelta(minutes=2)  # after the localizer
    aligned_for = _uid(seed, ctx.uid_case, misalign_seed, "frame-of-reference")
    for order, m in enumerate(ACQUISITION_ORDER):
        proto = ctx.vendor.protocols[m]
        if proto.contrast:
            t += timedelta(seconds=75)  # injection
        start = t
        t += timedelta(seconds=proto.duration_s + 25)
        if m not in present:
            continue
        number = 100 * (order + 2) + 1
        misaligned = misalign_seed is not None and m != reference
        plans[m] = SeriesPlan(
            modality=m,
            protocol=proto,
            series_number=number,
            series_uid=_uid(seed, ctx.uid_case, misalign_seed, m, "series"),
            frame_of_reference_uid=(
                _uid(seed, ctx.uid_case, misalign_seed, m, "frame-of-reference")
                if misaligned else aligned_for
            ),
            start=start,
            folder_name=f"{number}_{sanitise(proto.series_description)}",
            misaligned=misaligned,
        )
    return plans


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
    ds.SliceThickness = _ds_str(sp[2])
    ds.RepetitionTime = _ds_str(p.repetition_time)
    ds.EchoTime = _ds_str(p.echo_time)
    if p.inversion_time is not None:
        ds.InversionTime = _ds_str(p.inversion_time)
    ds.NumberOfAverages = "1"
    ds.ImagingFrequency = _ds_str(ctx.vendor.imaging_frequency_mhz)
    ds.ImagedNucleus = "1H"
    ds.EchoNumbers = "1"
    ds.MagneticFieldStrength = "3"
    ds.SpacingBetweenSlices = _ds_str(sp[2])
    ds.EchoTrainLength = str(p.echo_train_length)
    ds.PercentSampling = "100"
    ds.PercentPhaseFieldOfView = "100"
    ds.ReceiveCoilName = ctx.vendor.receive_coil
    ds.TransmitCoilName = "Body"
    ds.AcquisitionMatrix = [0, n_i, n_j, 0]
    ds.InPlanePhaseEncodingDirection = "ROW"
    ds.FlipAngle = _ds_str(p.flip_angle)
    if p.contrast:
        inject = plan.start - timedelta(seconds=75)
        ds.ContrastBolusAgent = ctx.vendor.contrast_agent
        ds.ContrastBolusRoute = "IV"
        ds.ContrastBolusVolume = _ds_str(round(ctx.patient_weight_kg * 0.1, 1))  # ml, 0.1 ml/kg
        ds.ContrastBolusTotalDose = ds.ContrastBolusVolume
        ds.ContrastBolusStartTime = inject.strftime("%H%M%S")
        ds.ContrastBolusIngredient = "GADOLINIUM"
        ds.ContrastBolusIngredientConcentration = "1"  # mmol/ml (gadobutrol 1.0 M)
    ds.SeriesInstanceUID = plan.series_uid
    ds.SeriesNumber = str(plan.series_number)
    ds.AcquisitionNumber = "1"
    ds.FrameOfReferenceUID = plan.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    # Image plane (see GEOMETRY in the module docstring):
    #   IOP = [unit LPS dir of increasing i (along a row), unit LPS dir of increasing j];
    #   PixelSpacing = [spacing along j (row to row), spacing along i (column to column)].
    d = vol.direction
    ds.ImageOrientationPatient = _ds_list([*d[:, 0], *d[:, 1]])
    ds.PixelSpacing = _ds_list([sp[1], sp[0]])
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
    sop_uid = _uid(seed, ctx.uid_case, misalign_seed, plan.modality, "instance", k)
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
    ds.ImagePositionPatient = _ds_list(ipp)
    ds.SliceLocation = _ds_str(float(np.dot(ipp, vol.direction[:, 2])))
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


# ============================================================================================
# Manifest
# ============================================================================================
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
    """What :func:`make_study` built (mirrors ``study.json``)."""

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
            "generator": _GENERATOR,
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


def _series_manifest(plan: SeriesPlan, vol: Volume, folder: Path) -> SeriesManifest:
    return SeriesManifest(
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


def misalignment_document(manifest: StudyManifest) -> dict[str, Any]:
    """Content of ``misalignment.json``."""
    return {
        "generator": _GENERATOR,
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


# ============================================================================================
# Public API
# ============================================================================================
def choose_reference(present: Iterable[str]) -> str:
    """T1ce if present, else the first present of t1, t2, flair (the application's rule)."""
    avail = set(present)
    for m in REFERENCE_ORDER:
        if m in avail:
            return m
    raise StudyBuildError("no series present")


def _check_slab(slices: tuple[int, int] | None, depth: int) -> tuple[int, int] | None:
    """Validate ``(start, end)`` against ``depth`` slices; None = keep all."""
    if slices is None:
        return None
    try:
        start, end = (int(v) for v in slices)
    except (TypeError, ValueError) as exc:
        raise StudyBuildError(f"slices must be (start, end), got {slices!r}") from exc
    if not 0 <= start < end <= depth:
        raise StudyBuildError(f"slices {start}:{end} outside 0:{depth} or empty")
    if (start, end) == (0, depth):
        return None
    return start, end


def crop_slab(vol: Volume, slab: tuple[int, int]) -> Volume:
    """Slices ``slab[0] <= k < slab[1]`` of ``vol``; voxel (0, 0, 0) of the result is voxel
    (0, 0, start) of ``vol`` (same position in patient space)."""
    start, end = slab
    affine = vol.affine_lps.copy()
    affine[:3, 3] = (vol.affine_lps @ np.array([0.0, 0.0, float(start), 1.0]))[:3]
    return Volume(data=np.ascontiguousarray(vol.data[:, :, start:end]), affine_lps=affine)


def _parse_slices(text: str) -> tuple[int, int]:
    try:
        start, end = text.split(":")
        return int(start), int(end)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected START:END, got {text!r}") from exc


def _normalise_drop(drop: Iterable[str]) -> tuple[str, ...]:
    names = [d.strip().lower() for d in drop if d.strip()]
    unknown = sorted(set(names) - set(MODALITIES))
    if unknown:
        raise StudyBuildError(
            f"unknown modality name(s) {', '.join(unknown)}; "
            f"expected some of {','.join(MODALITIES)}"
        )
    dropped = tuple(m for m in MODALITIES if m in names)
    if len(dropped) == len(MODALITIES):
        raise StudyBuildError("refusing to drop all four modalities: the study would be empty")
    return dropped


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse to replace an existing study unless ``overwrite``."""
    final = out_dir / "dicom"
    if not overwrite and final.is_dir() and any(final.iterdir()):
        raise StudyBuildError(f"{final} already holds a study; use --overwrite to replace it")


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> Path:
    """Create ``out_dir``; return a fresh staging folder for the DICOM tree."""
    _check_out_dir(out_dir, overwrite)
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


def _write_all_series(
    ctx: StudyContext,
    plans: dict[str, SeriesPlan],
    vols: dict[str, Volume],
    reference: str,
    staging: Path,
    dicom_dir: Path,
    seed: int,
    misalign_seed: int | None,
    timings: dict[str, float],
) -> tuple[dict[str, SeriesManifest], dict[str, RigidTransform]]:
    """Write every planned series (acquisition order) into ``staging``.

    Misaligned series are first resampled (:func:`resample_moving`) with their transform and
    grid drawn from ``misalign_seed``. Per-series durations go into ``timings``.

    Returns
    -------
    series
        modality -> manifest (folders already named as under ``dicom_dir``).
    transforms
        modality -> rigid transform, for the misaligned series only.
    """
    transforms: dict[str, RigidTransform] = {}
    series: dict[str, SeriesManifest] = {}
    center = volume_center(vols[reference])
    for m in ACQUISITION_ORDER:
        if m not in plans:
            continue
        t0 = time.perf_counter()
        vol = vols[m]
        if plans[m].misaligned and misalign_seed is not None:
            transforms[m] = draw_transform(misalign_seed, m, center)
            grid = draw_grid(misalign_seed, m, vols[reference])
            vol = resample_moving(vol, transforms[m], grid)
        folder = write_series(ctx, plans[m], vol, staging, seed, misalign_seed)
        series[m] = _series_manifest(plans[m], vol, dicom_dir / folder.name)
        timings[f"{m}_s"] = time.perf_counter() - t0
        LOG.info("%-5s -> dicom/%s: %d slices %s, %s mm%s in %.2f s", m, folder.name,
                 vol.data.shape[2], "x".join(map(str, vol.data.shape[:2])),
                 "x".join(_ds_list(vol.spacing)), " (misaligned)" if plans[m].misaligned else "",
                 timings[f"{m}_s"])
    return series, transforms


def make_study(
    case_dir: str | Path,
    out_dir: str | Path,
    drop: Iterable[str] = (),
    misalign_seed: int | None = None,
    seed: int = 0,
    *,
    overwrite: bool = False,
    slices: tuple[int, int] | None = None,
) -> StudyManifest:
    """Turn a BraTS case folder into a realistic multi-series MR DICOM study.

    Parameters
    ----------
    case_dir
        ``.../<case>/`` holding ``<case>_{flair,t1,t1ce,t2,seg}.nii.gz`` (``(I, J, K)`` =
        ``(240, 240, 155)``, 1 mm, int16, one shared affine).
    out_dir
        Output folder (created); see the module docstring for the layout.
    drop
        Modality keys (``flair``, ``t1``, ``t1ce``, ``t2``) to leave out; not all four.
    misalign_seed
        If given, every non-reference series gets a known random rigid transform and its
        own acquisition grid (``misalignment.json``).
    seed
        Seeds UIDs, dates, names and the vendor style (``seed % 3``: Siemens, GE, Philips).
    overwrite
        Replace an existing ``<out>/dicom`` study instead of refusing.
    slices
        ``(start, end)``: keep only NIfTI slices ``start <= k < end`` (default: all). The
        slab keeps its exact position in patient space; the ground truth is cropped alike.

    Returns
    -------
    StudyManifest
        What was written; also saved as ``<out>/study.json``.

    Raises
    ------
    StudyBuildError
        Bad input (missing case files, unknown modality, empty study, existing output).
    """
    t_start = time.perf_counter()
    case_dir, out_dir = Path(case_dir), Path(out_dir)
    dropped = _normalise_drop(drop)
    present = [m for m in MODALITIES if m not in dropped]
    reference = choose_reference(present)
    case_id = case_id_of(case_dir)
    _check_out_dir(out_dir, overwrite)  # fail fast, before reading the case

    t0 = time.perf_counter()
    vols = load_case(case_dir, present)
    seg_path = case_file(case_dir, "seg")
    if not seg_path.is_file():
        raise StudyBuildError(f"missing case file: {seg_path}")
    slab = _check_slab(slices, next(iter(vols.values())).data.shape[2])
    if slab is not None:
        vols = {m: crop_slab(v, slab) for m, v in vols.items()}
    timings = {"load_s": time.perf_counter() - t0}
    LOG.info("loaded %s (%s) in %.2f s", case_id, ",".join(present), timings["load_s"])

    ctx = study_context(case_id, seed, misalign_seed, slab)
    plans = plan_series(ctx, present, seed, misalign_seed, reference)
    staging = _prepare_out_dir(out_dir, overwrite)
    dicom_dir = out_dir / "dicom"

    try:
        series, transforms = _write_all_series(
            ctx, plans, vols, reference, staging, dicom_dir, seed, misalign_seed, timings
        )
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # never leave a half-written study
        raise
    staging.rename(dicom_dir)
    if slab is None:
        shutil.copyfile(seg_path, out_dir / "ground_truth.nii.gz")
    else:
        truth = nib.load(str(seg_path))
        nib.save(truth.slicer[:, :, slab[0]:slab[1]], str(out_dir / "ground_truth.nii.gz"))

    manifest = StudyManifest(
        case_id=case_id, seed=seed, misalign_seed=misalign_seed, out_dir=out_dir,
        dicom_dir=dicom_dir, ground_truth=out_dir / "ground_truth.nii.gz",
        study_json=out_dir / "study.json",
        misalignment_json=(out_dir / "misalignment.json") if misalign_seed is not None else None,
        study_instance_uid=ctx.study_uid, patient_id=ctx.case_id, patient_name=ctx.patient_name,
        accession_number=ctx.accession, manufacturer=ctx.vendor.manufacturer,
        reference_modality=reference, dropped=dropped, series=series, transforms=transforms,
        timings_s=timings, slices=slab,
    )
    manifest.study_json.write_text(json.dumps(manifest.as_dict(), indent=2) + "\n")
    if manifest.misalignment_json is not None:
        manifest.misalignment_json.write_text(
            json.dumps(misalignment_document(manifest), indent=2) + "\n"
        )
    timings["total_s"] = time.perf_counter() - t_start
    LOG.info("study %s: %d series in %s (%.2f s)", case_id, len(series), out_dir,
             timings["total_s"])
    return manifest


# ============================================================================================
# CLI
# ============================================================================================
class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports usage errors in one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"make_study: error: {message}\n")
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    p = _OneLineParser(prog="python -m samples.make_study", description=__doc__.split("\n")[0])
    p.add_argument("case_dir", type=Path, help="BraTS case folder")
    p.add_argument("out_dir", type=Path, help="output folder")
    p.add_argument("--drop", default="",
                   help="comma-separated modalities to omit (flair,t1,t1ce,t2)")
    p.add_argument("--misalign", type=int, default=None, metavar="SEED",
                   help="misalign non-reference series with transforms drawn from SEED")
    p.add_argument("--seed", type=int, default=0, help="seed for UIDs, names, vendor (default 0)")
    p.add_argument("--slices", type=_parse_slices, default=None, metavar="START:END",
                   help="keep only NIfTI slices START <= k < END (a small study; default all)")
    p.add_argument("--clinical", default=None, metavar="PROFILE",
                   help="a clinical-looking exam (philips, siemens, ge; reformats: reformats of 3-D series only; "
                        "thick-post: one thick-slice post-contrast T1): "
                        "extra series, pre/post T1 "
                        "of one protocol without contrast attributes, faulty attributes "
                        "(samples.clinical_profiles)")
    p.add_argument("--mask-series", action="store_true",
                   help="with --clinical: add a lesion mask saved as a FLAIR-like MR series")
    p.add_argument("--no-contrast-evidence", action="store_true",
                   help="with --clinical: post-contrast T1 series without enhancement or time gap")
    p.add_argument("--overwrite", action="store_true", help="replace an existing <out>/dicom")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (0 ok, 2 bad input)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="[make_study] %(message)s")
    try:
        if args.clinical in ("reformats", "thick-post"):
            from samples.reformat_exam import make_reformat_study
            from samples.thick_post_exam import make_thick_post_study

            if args.drop or args.misalign is not None:
                raise StudyBuildError("--clinical does not combine with --drop / --misalign")
            make = make_reformat_study if args.clinical == "reformats" else make_thick_post_study
            make(args.case_dir, args.out_dir, seed=args.seed, slices=args.slices, overwrite=args.overwrite)
            return 0
        if args.clinical:
            from samples.clinical_profiles import make_clinical_study

            if args.drop or args.misalign is not None:
                raise StudyBuildError("--clinical does not combine with --drop / --misalign")
            make_clinical_study(args.case_dir, args.out_dir, args.clinical, seed=args.seed, slices=args.slices,
                                mask_series=args.mask_series, contrast_evidence=not args.no_contrast_evidence,
                                overwrite=args.overwrite)
            return 0
        make_study(args.case_dir, args.out_dir, drop=args.drop.split(","),
                   misalign_seed=args.misalign, seed=args.seed, overwrite=args.overwrite,
                   slices=args.slices)
    except StudyBuildError as exc:
        sys.stderr.write(f"make_study: error: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
