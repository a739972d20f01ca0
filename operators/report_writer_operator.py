"""Holoscan operator: the last stage; publishes staged outputs and writes ``report.json``."""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

from monai.deploy.core import Fragment, Operator, OperatorSpec

from operators.outputs.staging import REPORT_NAME, OutputStaging, publish_with_report

#: The named inputs (:meth:`ReportWriterOperator.setup`), each handed to ``build_report`` as the
#: keyword of its name.
REPORT_INPUTS = ("selection", "registration", "segmentation", "plan", "outputs", "timings")


class ReportWriterOperator(Operator):
    """Writes ``report.json`` and makes the run's outputs visible, atomically.

    Named inputs:
        selection: :class:`operators.study_model.ModalitySelection` (the study, what was found
        and picked).
        registration: :class:`operators.study_model.RegistrationRecord`.
        segmentation: :class:`operators.study_model.SegmentationRecord`.
        plan: :class:`engines.model.missing.strategies.SubsetPlan` with a sequence missing, else
        ``None``.
        outputs: :class:`operators.study_model.WrittenOutputs` (what the SEG writer staged).
        timings: :class:`operators.study_model.Timings` of every stage before this one.

    No output port. ``build_report(**inputs)`` makes the report's content; files staged by
    earlier operators are renamed into the output folder first; ``report.json``
    (``status: "ok"``) is written last.
    """

    def __init__(
        self,
        fragment: Fragment,
        *args,
        staging: OutputStaging,
        build_report: Callable[..., dict],
        **kwargs,
    ) -> None:
        self._logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self.staging = staging
        self.build_report = build_report
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("selection")
        spec.input("registration")
        spec.input("segmentation")
        spec.input("plan")
        spec.input("outputs")
        spec.input("timings")

    def compute(self, op_input, op_output, context) -> None:
        start = time.perf_counter()
        inputs: dict[str, Any] = {name: op_input.receive(name) for name in REPORT_INPUTS}
        published = publish_with_report(self.staging, self.build_report(**inputs))
        self._logger.info(
            "Wrote %s and %d other file(s) in %.2f s", REPORT_NAME, len(published), time.perf_counter() - start
        )
