"""Tumour volumes as a DICOM Structured Report a PACS can show: TID 1500 with highdicom.

One Comprehensive 3D SR (TID 1500 "Imaging Measurement Report") per run, beside the SEG:

* observation context: the algorithm as a device observer (TID 1004);
* one "Volumetric ROI Measurements and Qualitative Evaluations" group (TID 1411) per SEG
  segment -- necrotic / non-enhancing core, edema, enhancing tumour, or the regions the
  sequences support when a sequence is missing (the SEG's own segments) -- each referencing its
  segment of the SEG (SOP instance UID + segment number) and the source series, its finding
  type the segment's property type, with one measurement: **Volume** (SCT 118565006) in
  **ml** (UCUM ``ml``), algorithm identified (name, version);
* evidence: the SEG and the source series' instances (Current Requested Procedure Evidence).

Whole tumour (all three classes) and tumour core (necrotic core + enhancing) are sums of these
groups; ``report.json`` lists them too.

The volumes are what the app measured on the model grid (1 mm isotropic), the same numbers as
``report.json``'s ``result.tumour_volumes_ml``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from operators.dicom.seg import BRATS_SEGMENTS, SegmentSpec

__all__ = ["SR_SERIES_NUMBER", "build_volume_report", "volumes_from_report"]

#: Series number of the SR (the SEG's is 901, :func:`operators.dicom.seg.build_segmentation`'s default).
SR_SERIES_NUMBER = 9901
ALGORITHM_NAME = "BraTS17 cascaded anisotropic CNN"
#: Procedure reported (CID 100): brain MRI (LOINC).
PROCEDURE = codes.LN.BrainMRI
#: Millilitre (UCUM "ml"; not in pydicom's code dictionary).
MILLILITER = hd.sr.CodedConcept(value="ml", scheme_designator="UCUM", meaning="milliliter")


def build_volume_report(
    seg: pydicom.Dataset,
    source_datasets: Sequence[pydicom.Dataset],
    class_volumes_ml: Mapping[int, float],
    algorithm_version: str,
    segments: Sequence[SegmentSpec] = BRATS_SEGMENTS,
) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 report of the segments' volumes.

    Parameters
    ----------
    seg
        The DICOM-SEG this run wrote, its segments numbered as ``segments``.
    source_datasets
        The reference series' instances the SEG was derived from (evidence).
    class_volumes_ml
        BraTS label (1, 2, 4) -> volume in millilitres.
    algorithm_version
        The app's version (algorithm identification).
    segments
        The SEG's segments (default: the three BraTS classes); one volume group each, its volume
        the sum of its BraTS labels' volumes.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR
        Same patient and study as ``seg``, a new series.
    """
    algorithm = hd.sr.AlgorithmIdentification(name=ALGORITHM_NAME, version=algorithm_version)
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(), name=ALGORITHM_NAME, model_name=algorithm_version,
        ),
    )
    source_series = hd.sr.SourceSeriesForSegmentation(str(source_datasets[0].SeriesInstanceUID))
    groups = []
    for spec in segments:
        volume = sum(float(class_volumes_ml.get(label, 0.0)) for label in spec.brats_labels)
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=spec.tracking_id),
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=str(seg.SOPClassUID), sop_instance_uid=str(seg.SOPInstanceUID),
                segment_number=spec.segment_number, source_series=source_series,
            ),
            finding_type=spec.property_type,
            algorithm_id=algorithm,
            measurements=[hd.sr.Measurement(
                name=codes.SCT.Volume, value=round(volume, 3),
                unit=MILLILITER, algorithm_id=algorithm,
            )],
        ))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=PROCEDURE,
        imaging_measurements=groups,
        title=codes.DCM.ImagingMeasurementReport,
    )
    return hd.sr.Comprehensive3DSR(
        evidence=[seg, *source_datasets],
        content=report[0],
        series_instance_uid=generate_uid(),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="brats-seg-map",
        series_description=f"{ALGORITHM_NAME}: tumour volumes (ml)"[:64],
        is_complete=True,
    )


def volumes_from_report(sr: pydicom.Dataset) -> dict[int, tuple[str, float]]:
    """Read back SEG segment number -> (referenced SEG SOP instance UID, volume in ml) from a
    report written by :func:`build_volume_report` (or any TID 1500 SR with segment-referencing
    volume groups)."""
    parsed = sr if isinstance(sr, hd.sr.Comprehensive3DSR) else hd.sr.Comprehensive3DSR.from_dataset(sr)
    out: dict[int, tuple[str, float]] = {}
    for group in parsed.content.get_volumetric_roi_measurement_groups():
        segment = group.referenced_segment
        if segment is None:
            continue
        for m in group.get_measurements(name=codes.SCT.Volume):
            for number in segment.referenced_segment_numbers:
                out[int(number)] = (str(segment.referenced_sop_instance_uid), float(m.value))
    return out
