"""Holoscan operator: the last stage; publishes staged outputs and writes ``report.json``."""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

from monai.deploy.core import Fragment, Operator, OperatorSpec

from operators.outputs.staging import REPORT_NAME, OutputStaging, write_json_atomically


class ReportWriterOperator(Operator):
    """Writes ``report.json`` and makes the run's outputs visible, atomically.

    Named input:
        result: the final result of the graph (anything ``build_sections`` understands:
        a :class:`~operators.study_model.ModalitySelection` in the walking graph, the
        SEG writer's result in the full graph).

    No output port. Files staged by earlier operators are renamed into the output folder
    first; ``report.json`` (``status: "ok"``) is written last.
    """

    def __init__(
        self,
        fragment: Fragment,
        *args,
        staging: OutputStaging,
        build_report: Callable[[Any], dict],
        **kwargs,
    ) -> None:
        self._logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self.staging = staging
        self.build_report = build_report
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("result")

    def compute(self, op_input, op_output, context) -> None:
        start = time.perf_counter()
        result = op_input.receive("result")
        report = self.build_report(result)

        def write_report(published) -> None:  # under the staging lock (see OutputStaging)
            report["status"] = "ok"
            report["outputs"] = sorted(p.name for p in published) + [REPORT_NAME]
            write_json_atomically(self.staging.output_dir / REPORT_NAME, report)

        published = self.staging.publish(then=write_report)
        self._logger.info(
            "Wrote %s and %d other file(s) in %.2f s", REPORT_NAME, len(published), time.perf_counter() - start
        )
