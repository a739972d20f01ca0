"""Holoscan operator: labels on the model grid -> DICOM-SEG on the reference series + QA PNG."""
from __future__ import annotations

import logging

from monai.deploy.core import Fragment, Operator, OperatorSpec

from engines.model.missing.strategies import SubsetPlan
from operators.outputs.seg_outputs import write_outputs
from operators.outputs.staging import OutputStaging
from operators.study_model import ModalitySelection, ReferenceSeries, Timings


class DicomSegWriterOperator(Operator):
    """Writes the tumour segmentation as a DICOM-SEG referencing the reference series.

    Named inputs:
        selection: :class:`operators.study_model.ModalitySelection` (the sequences used and
        missing, the series that filled each slot, the contrast phase: SEG texts, QA title).
        reference: :class:`operators.study_model.ReferenceSeries`, the series the SEG references.
        brain_mask: the brain mask applied on the model grid, or ``None`` (QA outline).
        labels: the BraTS labels on the model grid (``sitkUInt8``).
        plan: :class:`engines.model.missing.strategies.SubsetPlan` with a sequence missing, else
        ``None``.
        timings: :class:`operators.study_model.Timings` so far.

    Named outputs:
        outputs: :class:`operators.study_model.WrittenOutputs` (file names, SEG and SR UIDs,
        tumour volumes in ml), for the report writer.
        timings: the timings received, with ``write_seg`` and its parts added.

    The label map is resampled (nearest neighbour) from the model grid onto the reference
    series' own grid, slice ``k`` of which is the reference instance ``k``; one BINARY SEG
    with one segment per BraTS label class (see :mod:`operators.dicom.seg`) -- with a
    sequence missing, only the regions the sequences support (the plan's ``regions_written``;
    :func:`operators.dicom.seg.segments_for_regions`) -- is staged as
    ``segmentation.dcm``, with the tumour volumes as a DICOM SR (TID 1500,
    :mod:`operators.dicom.sr_builder`) referencing its segments, ``volumes_sr.dcm``, and a QA
    overlay ``overlay.png`` (:mod:`operators.outputs.qa_image`). An empty result still gives a
    valid SEG (empty segments), flagged in the report.
    """

    def __init__(self, fragment: Fragment, *args, staging: OutputStaging, algorithm_version: str, **kwargs) -> None:
        self._logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self.staging = staging
        self.algorithm_version = algorithm_version
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("selection")
        spec.input("reference")
        spec.input("brain_mask")
        spec.input("labels")
        spec.input("plan")
        spec.input("timings")
        spec.output("outputs")
        spec.output("timings")

    def compute(self, op_input, op_output, context) -> None:
        selection: ModalitySelection = op_input.receive("selection")
        reference: ReferenceSeries = op_input.receive("reference")
        brain_mask = op_input.receive("brain_mask")
        labels = op_input.receive("labels")
        plan: SubsetPlan | None = op_input.receive("plan")
        timings: Timings = op_input.receive("timings")
        written, own = write_outputs(selection, reference, labels, plan, brain_mask, self.staging,
                                     self.algorithm_version, self._logger)
        op_output.emit(written, "outputs")
        op_output.emit(timings.merged(own), "timings")
