"""The MONAI Deploy application: the operator graph.

DICOM study -> StudyLoader -> ModalitySelector -> (registration / normalisation ->
segmentation -> DICOM-SEG writer) -> ReportWriter, each operator taking what it needs on named
ports (see each operator's docstring): the SEG writer, for one, takes the selection, the
reference series and brain mask from the registration, and the labels and the missing-sequence
plan from the segmentation.

Inputs and outputs follow the MAP contract: ``-i/-o/-m/-w`` on the command line, else
``HOLOSCAN_INPUT_PATH``, ``HOLOSCAN_OUTPUT_PATH``, ``HOLOSCAN_MODEL_PATH``,
``HOLOSCAN_WORKDIR`` (resolved by the SDK's ``init_app_context``).
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

from holoscan.conditions import CountCondition
from monai.deploy.core import AppContext, Application

from app import __version__
from app.settings import AppSettings
from operators.dicom_seg_writer_operator import DicomSegWriterOperator
from operators.errors import InputError
from operators.modality_selector_operator import ModalitySelectorOperator
from operators.outputs.report import finished_report
from operators.outputs.staging import OutputStaging, check_writable, remove_stale_staging, set_aside_earlier_outputs
from operators.registration_operator import RegistrationOperator
from operators.report_writer_operator import ReportWriterOperator
from operators.segmentation_operator import SegmentationOperator
from operators.study_loader_operator import StudyLoaderOperator

APP_NAME = "brats-seg-map"


class BrainTumorSegApp(Application):
    """Brain tumour segmentation on multi-sequence MRI (FLAIR, T1, T1ce, T2)."""

    name = APP_NAME
    description = "BraTS 2017 cascade (Wang et al.) on a DICOM MR study; writes a DICOM-SEG"
    version = __version__

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Command-line arguments are read from sys.argv (Holoscan strips its own first).
        self._logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self.output_dir: Path | None = None
        self.staging: OutputStaging | None = None
        #: Where an earlier run's outputs in the output folder were moved (None: there were none).
        self.earlier_outputs: Path | None = None
        self.settings: AppSettings | None = None
        super().__init__(*args, **kwargs)

    def discard_outputs(self) -> None:
        """Drop everything staged by this run (called on failure)."""
        if self.staging is not None:
            self.staging.discard()

    def compose(self) -> None:
        app_context: AppContext = Application.init_app_context(self.argv)
        settings = AppSettings.from_context(app_context, self)  # app.yaml through the SDK
        self.output_dir = settings.output_dir
        self.settings = settings
        check_writable(settings.output_dir)  # fail before any work
        remove_stale_staging(settings.output_dir)
        self.earlier_outputs = set_aside_earlier_outputs(settings.output_dir)
        if not settings.input_dir.is_dir():
            raise InputError(f"input folder {settings.input_dir} does not exist")
        self.staging = OutputStaging(settings.output_dir)
        self._logger.info("Settings: %s", settings.describe())

        loader = StudyLoaderOperator(self, CountCondition(self, 1), input_folder=settings.input_dir, name="study_loader")
        selector = ModalitySelectorOperator(self, rules_path=settings.rules_path, name="modality_selector")
        registration = RegistrationOperator(self, seed=settings.seed, brain_extraction=settings.brain_extraction,
                                            registration_backend=settings.registration, model_dir=settings.model_dir,
                                            cache_dir=settings.engine_cache_dir, name="registration")
        segmentation = SegmentationOperator(
            self, model_dir=settings.model_dir, engine=settings.engine, seed=settings.seed,
            triton_server=settings.triton_server, triton_timeout_s=settings.triton_timeout_s,
            rules=settings.post_processing, cache_dir=settings.engine_cache_dir,
            write_unreliable_regions=settings.write_unreliable_regions, name="segmentation",
        )
        seg_writer = DicomSegWriterOperator(
            self, staging=self.staging, algorithm_version=__version__, name="dicom_seg_writer"
        )
        reporter = ReportWriterOperator(
            # A plain function, not a bound method of the app: an operator that referred to the
            # app would close a cycle through Holoscan's C++ graph that Python's garbage
            # collector cannot see, and keep every app (its graph, GXF context) alive until exit.
            self, staging=self.staging, name="report_writer",
            build_report=functools.partial(finished_report, APP_NAME, __version__, earlier_outputs=self.earlier_outputs),
        )
        # Data flows one way; each operator takes what it needs on named ports. One Timings value
        # follows the chain loader -> selector -> registration -> segmentation -> SEG writer -> report.
        self.add_flow(loader, selector, {("study", "study"), ("timings", "timings")})
        self.add_flow(selector, registration, {("selection", "selection"), ("timings", "timings")})
        self.add_flow(selector, segmentation, {("selection", "selection")})
        self.add_flow(registration, segmentation, {("model_input", "model_input"), ("timings", "timings")})
        self.add_flow(selector, seg_writer, {("selection", "selection")})
        self.add_flow(registration, seg_writer, {("reference", "reference"), ("brain_mask", "brain_mask")})
        self.add_flow(segmentation, seg_writer, {("labels", "labels"), ("plan", "plan"), ("timings", "timings")})
        self.add_flow(selector, reporter, {("selection", "selection")})
        self.add_flow(registration, reporter, {("registration", "registration")})
        self.add_flow(segmentation, reporter, {("segmentation", "segmentation"), ("plan", "plan")})
        self.add_flow(seg_writer, reporter, {("outputs", "outputs"), ("timings", "timings")})
