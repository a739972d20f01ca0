"""Read a folder of DICOM files into one study of image series (no Holoscan here).

Why not the SDK's ``DICOMDataLoaderOperator`` as is: it reads every file, catches only
``InvalidDicomError`` (a zero-length or truncated file stops it with another exception),
keeps SEG / SR / PR objects as if they were images, and collapses instances that share an
ImagePositionPatient, which silently merges multi-echo series. The rules here:

* files that are not DICOM (or empty) are skipped with a log line;
* non-image objects (SEG, SR, PR, KO, RT, encapsulated documents, ...) are skipped with a
  log line: we only read storage classes that carry MR / image pixel data;
* the same SOPInstanceUID twice is kept once (logged);
* instances are grouped by StudyInstanceUID and SeriesInstanceUID; more than one study in
  the input folder is refused (never mix patients or studies);
* a file that *is* DICOM (``DICM`` preamble) but cannot be parsed, and an image instance
  whose pixel data is missing or shorter than its header says, are refused
  (:class:`~operators.errors.CorruptDicomFileError`,
  :class:`~operators.errors.UnreadablePixelDataError`): that is an incomplete transfer,
  and skipping the file would silently drop a slice;
* a 4D / multi-echo series (several instances at one ImagePositionPatient, e.g. the two
  echoes of a PD/T2 series, or repeated time points) is **not used**: it is left out of the
  study with a reason (``ignored`` in the report). It is never mixed into one volume and
  not split either (the pieces would share one SeriesInstanceUID); if it was the only
  series of a modality, that modality is reported missing.
"""
from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable

import pydicom

from operators.errors import (
    CorruptDicomFileError,
    MultipleStudiesError,
    NoStudyError,
    NoUsableSeriesError,
    UnreadablePixelDataError,
)
from operators.study_model import LoadedSeries, LoadedStudy, SeriesHeader

logger = logging.getLogger(__name__)

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
LEGACY_ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.4"

IMAGE_SOP_CLASSES: dict[str, str] = {
    MR_IMAGE_STORAGE: "MR Image Storage",
    ENHANCED_MR_IMAGE_STORAGE: "Enhanced MR Image Storage",
    LEGACY_ENHANCED_MR_IMAGE_STORAGE: "Legacy Converted Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
}
"""Storage classes read as images. Anything else (SEG, SR, PR, ...) is ignored with a log
line. CT / SC are read so that the selector can say *why* they are not used."""


def iter_files(folder: Path) -> Iterable[Path]:
    """All regular files below ``folder``, in a stable (sorted) order."""
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            if path.is_file() and not path.is_symlink():
                yield path


def _text(ds: Any, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value)


def _float(ds: Any, keyword: str) -> float | None:
    value = ds.get(keyword, None)
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def _multi(ds: Any, keyword: str) -> tuple[str, ...]:
    value = ds.get(keyword, None)
    if value is None or value == "":
        return ()
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return tuple(str(v).strip().upper() for v in value)
    return tuple(part.strip().upper() for part in str(value).split("\\"))


def _first_functional(ds: Any, sequence: str, item: str, keyword: str) -> Any:
    """Read an attribute from the Shared (else first Per-frame) Functional Groups of an
    Enhanced (multi-frame) object."""
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        seq = ds.get(groups)
        if not seq:
            continue
        group = seq[0]
        if sequence in group and group[sequence].value:
            inner = group[sequence][0]
            if item and item in inner and inner[item].value:
                inner = inner[item][0]
            if keyword in inner:
                return inner[keyword].value
    return None


def summarise_series(datasets: list[Any]) -> SeriesHeader:
    """Collect the selection-relevant header values of one series.

    Reads Enhanced MR attributes from their functional groups / MR sequences where the
    classic top-level attributes are absent.
    """
    ds = datasets[0]
    tr = _float(ds, "RepetitionTime")
    te = _float(ds, "EchoTime")
    ti = _float(ds, "InversionTime")
    thickness = _float(ds, "SliceThickness")
    spacing = ds.get("PixelSpacing", None)
    orientation = ds.get("ImageOrientationPatient", None)
    if ds.get("NumberOfFrames") is not None and "SharedFunctionalGroupsSequence" in ds:
        # Enhanced MR: timing parameters live in functional groups / MR sequences.
        tr = tr or _as_float(_first_functional(ds, "MRTimingAndRelatedParametersSequence", "", "RepetitionTime"))
        te = te or _as_float(_first_functional(ds, "MREchoSequence", "", "EffectiveEchoTime"))
        ti = ti or _as_float(_first_functional(ds, "MRModifierSequence", "", "InversionTimes"))
        measures_thickness = _first_functional(ds, "PixelMeasuresSequence", "", "SliceThickness")
        thickness = thickness or _as_float(measures_thickness)
        spacing = spacing or _first_functional(ds, "PixelMeasuresSequence", "", "PixelSpacing")
        orientation = orientation or _first_functional(
            ds, "PlaneOrientationSequence", "", "ImageOrientationPatient"
        )
    contrast = _text(ds, "ContrastBolusAgent")
    if not contrast and "SharedFunctionalGroupsSequence" in ds:
        agent = ds.get("ContrastBolusAgentSequence")
        if agent:
            contrast = str(agent[0].get("CodeMeaning", "contrast agent"))
    series_number = ds.get("SeriesNumber", None)
    return SeriesHeader(
        series_instance_uid=str(ds.SeriesInstanceUID),
        series_number=int(series_number) if series_number not in (None, "") else None,
        series_description=_text(ds, "SeriesDescription"),
        protocol_name=_text(ds, "ProtocolName"),
        sop_class_uid=str(ds.SOPClassUID),
        modality=_text(ds, "Modality"),
        image_type=_multi(ds, "ImageType"),
        scanning_sequence=_multi(ds, "ScanningSequence") or _multi(ds, "EchoPulseSequence"),
        sequence_variant=_multi(ds, "SequenceVariant"),
        mr_acquisition_type=_text(ds, "MRAcquisitionType"),
        repetition_time_ms=tr,
        echo_time_ms=te,
        inversion_time_ms=ti,
        contrast_bolus_agent=contrast,
        slice_thickness_mm=thickness,
        pixel_spacing_mm=tuple(float(v) for v in spacing) if spacing else None,
        image_orientation=tuple(float(v) for v in orientation) if orientation else None,
        acquisition_time=_text(ds, "AcquisitionTime") or _text(ds, "AcquisitionDateTime"),
        series_time=_text(ds, "SeriesTime"),
        number_of_instances=len(datasets),
        number_of_frames=sum(int(d.get("NumberOfFrames", 1) or 1) for d in datasets),
        patient_position=_text(ds, "PatientPosition"),
        frame_of_reference_uid=_text(ds, "FrameOfReferenceUID"),
        scan_options=_multi(ds, "ScanOptions"),
    )


def _as_float(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        value = value[0] if len(value) else None
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _has_dicm_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _pixel_data_problem(ds: Any) -> str | None:
    """Why the pixel data of an image instance is unusable (None if it looks complete).

    Native (uncompressed) pixel data must hold at least Rows x Columns x Samples x
    bytes-per-sample x frames bytes; encapsulated data is checked when it is decoded.
    """
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        return "no pixel data (truncated file?)"
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if "PixelData" not in ds or (syntax is not None and pydicom.uid.UID(syntax).is_compressed):
        return None
    try:
        bits = int(ds.BitsAllocated)
        expected = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1)
        expected *= int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        return "pixel data description (Rows / Columns / BitsAllocated) missing or invalid"
    expected = (expected + 7) // 8 if bits == 1 else expected * ((bits + 7) // 8)
    have = len(ds.PixelData or b"")
    if have < expected:
        return f"pixel data truncated ({have} of {expected} bytes)"
    return None


def _position_key(ds: Any) -> tuple[float, ...] | None:
    try:
        return tuple(round(float(v), 2) for v in ds.ImagePositionPatient)
    except (AttributeError, TypeError, ValueError):
        return None


_DIMENSION_KEYWORDS = (
    "EchoTime", "EchoNumbers", "InversionTime", "TemporalPositionIdentifier", "TriggerTime",
    "AcquisitionNumber", "DiffusionBValue", "ImageType",
)


def repeated_positions_reason(datasets: list[Any]) -> str | None:
    """If several single-frame instances share an ImagePositionPatient (a 4D / multi-echo
    series), say so and which attributes vary; None for an ordinary series."""
    if len(datasets) < 2 or any(int(d.get("NumberOfFrames", 1) or 1) > 1 for d in datasets):
        return None
    keys = [_position_key(d) for d in datasets]
    if any(k is None for k in keys):
        return None
    positions = len(set(keys))
    if positions == len(keys):
        return None
    varying = []
    for keyword in _DIMENSION_KEYWORDS:
        values = {str(d.get(keyword, "")) for d in datasets}
        if len(values) > 1:
            shown = ", ".join(sorted(values)[:4]) + (", ..." if len(values) > 4 else "")
            varying.append(f"{keyword} {{{shown}}}")
    what = "; ".join(varying) or "no attribute tells them apart (duplicated slices)"
    return (
        f"4D / multi-echo series: {len(keys)} instances at {positions} positions ({what}); "
        "not used (instances at one position are never mixed into one volume)"
    )


def load_study(folder: Path) -> LoadedStudy:
    """Read every DICOM image instance below ``folder`` into one :class:`LoadedStudy`.

    Raises
    ------
    NoStudyError
        No DICOM image instance was found.
    MultipleStudiesError
        Instances of more than one study (or patient) were found.
    CorruptDicomFileError, UnreadablePixelDataError
        A DICOM file that cannot be parsed, or an image instance with missing / truncated
        pixel data (an incomplete transfer).
    NoUsableSeriesError
        Every image series was left out (e.g. all 4D / multi-echo).
    """
    start = time.perf_counter()
    ignored: list[dict[str, str]] = []
    seen_sop: set[str] = set()
    # study uid -> series uid -> list of (dataset, path)
    studies: "OrderedDict[str, OrderedDict[str, list[tuple[Any, Path]]]]" = OrderedDict()
    patients: dict[str, set[str]] = {}
    n_files = 0
    for path in iter_files(folder):
        n_files += 1
        reason = None
        ds = None
        if path.stat().st_size == 0:
            reason = "empty file"
        else:
            try:
                ds = pydicom.dcmread(path)
            except Exception as exc:  # noqa: BLE001 - pydicom raises many types on bad bytes
                if _has_dicm_preamble(path):
                    raise CorruptDicomFileError(
                        f"{path.relative_to(folder)}: a DICOM file that cannot be read "
                        f"({type(exc).__name__}: {str(exc)[:160]}); incomplete transfer?"
                    ) from exc
                reason = f"not a readable DICOM file ({type(exc).__name__})"
        if ds is not None:
            meta = getattr(ds, "file_meta", None)
            meta_class = str(meta.get("MediaStorageSOPClassUID", "")) if meta is not None else ""
            # A truncated file may have lost everything after its file meta: fall back on
            # the meta's SOP class to know what it was meant to be.
            sop_class = str(ds.get("SOPClassUID", "")) or meta_class
            sop_uid = str(ds.get("SOPInstanceUID", ""))
            if not sop_class:
                raise CorruptDicomFileError(
                    f"{path.relative_to(folder)}: a DICOM file without a SOP Class UID (truncated?)"
                )
            if sop_class in IMAGE_SOP_CLASSES and (problem := _pixel_data_problem(ds)) is not None:
                # An image object cut short (pydicom stops quietly at the end of the file).
                raise UnreadablePixelDataError(f"{path.relative_to(folder)}: {problem}")
            if not sop_uid or "StudyInstanceUID" not in ds or "SeriesInstanceUID" not in ds:
                reason = "missing SOP / study / series instance UID"
            elif sop_class not in IMAGE_SOP_CLASSES:
                name = pydicom.uid.UID(sop_class).name if sop_class else "unknown"
                reason = f"not an image object ({name})"
            elif sop_uid in seen_sop:
                reason = f"duplicate SOPInstanceUID {sop_uid}"
        if reason is not None:
            logger.info("Ignored %s: %s", path.name, reason)
            ignored.append({"what": str(path.relative_to(folder)), "reason": reason})
            continue
        seen_sop.add(str(ds.SOPInstanceUID))
        study_uid = str(ds.StudyInstanceUID)
        studies.setdefault(study_uid, OrderedDict()).setdefault(str(ds.SeriesInstanceUID), []).append(
            (ds, path)
        )
        patients.setdefault(study_uid, set()).add(_text(ds, "PatientID"))

    if not studies:
        raise NoStudyError(f"no DICOM image instance found in {n_files} file(s) under the input folder")
    all_patients = set().union(*patients.values())
    if len(studies) > 1 or len(all_patients) > 1:
        raise MultipleStudiesError(
            f"the input folder holds {len(studies)} studies of {len(all_patients)} patient(s); "
            "send one study per run"
        )
    study_uid, series_map = next(iter(studies.items()))
    series: list[LoadedSeries] = []
    for items in series_map.values():
        datasets = [d for d, _ in items]
        header = summarise_series(datasets)
        repeated = repeated_positions_reason(datasets)
        if repeated is not None:
            what = f"series {header.series_number} '{header.series_description}'"
            logger.warning("Left out %s: %s", what, repeated)
            ignored.append({"what": what, "reason": repeated})
            continue
        series.append(LoadedSeries(header, datasets, [p for _, p in items]))
    if not series:
        raise NoUsableSeriesError(
            "every image series was left out: " + "; ".join(f"{i['what']}: {i['reason']}" for i in ignored[-3:])
        )
    duration = time.perf_counter() - start
    logger.info(
        "Loaded study %s: %d series, %d instances, %d file(s) ignored in %.2f s",
        study_uid,
        len(series),
        sum(len(s.datasets) for s in series),
        len(ignored),
        duration,
    )
    return LoadedStudy(
        study_instance_uid=study_uid,
        patient_id=next(iter(all_patients)) if all_patients else "",
        series=series,
        ignored=ignored,
        duration_s=duration,
    )
