"""The app's stages in one process without the Holoscan scheduler: one study or several, the engine kept.

``python -m app.direct -i <dicom> [-i <dicom> ...] -o <out> -m <models> [-w <workdir>] [--timings FILE]``

What runs: the functions the operators run, in the graph's order and with the same settings
(``app.yaml`` / ``BRATS_*``, :func:`app.settings.behaviour_settings`): load
(:func:`operators.dicom.study_loader.load_study`), select
(:func:`operators.selection.modality_selector.select_usable_modalities`), register, resample and
remove the skull (:func:`operators.spatial.model_input.register_and_resample`), segment
(:func:`operators.segmentation.segment.segment`), write the SEG, SR and QA image
(:func:`operators.outputs.seg_outputs.write_outputs`), then the report and the publication
(:func:`operators.outputs.report.finished_report`, :func:`operators.outputs.staging.publish_with_report`).
The outputs of a study are those of ``python -m app`` (the same files, the same report).

What differs from ``python -m app`` (measured by ``benchmarks/app_e2e.py --runner direct``):

- no Holoscan scheduler: no GXF context, no operator threads or message queues; the stages
  run one after another in the calling thread;
- one process for every study given: the inference engine (its loaded or compiled networks,
  CUDA graphs, OpenVINO compiled models) is created by the first study and reused by the next
  ones (``python -m app``: one study per process, as a clinical orchestrator starts it);
- the paths come from ``-i/-o/-m/-w`` only (not the ``HOLOSCAN_*`` variables of the MAP
  contract); no SIGTERM handler (a stopped run leaves a staging folder that the next run in
  that output folder removes); no DICOM send (``send.dimse``).

Failure contract per study as the app's: an :class:`operators.errors.AppError` gives one line,
a failed ``report.json`` and nothing else in that study's output folder; the next study still
runs; the exit code is the first failure's (0 when every study succeeded).

Outputs: one study: ``<out>`` as the app's; several: ``<out>/<k>_<study folder name>/``. The
timings (``--timings``; with several studies by default ``<out>/direct_runs.json``, beside the
study folders):
per study the wall seconds from the folder to the published report and the report's stage
breakdown; the first study is the process' cold one, the others warm.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app import __version__
from app.main import APP_NAME, write_failure_report
from app.settings import AppSettings
from engines.runtimes.cpu_host import flush_denormals
from operators.dicom.study_loader import load_study
from operators.errors import AppError, InputError
from operators.outputs.report import finished_report
from operators.outputs.seg_outputs import write_outputs
from operators.outputs.staging import (
    OutputStaging,
    check_writable,
    publish_with_report,
    remove_stale_staging,
    set_aside_earlier_outputs,
)
from operators.segmentation.segment import labels_image, segment
from operators.selection.modality_selector import SelectionRules, select_usable_modalities
from operators.spatial.model_input import register_and_resample
from operators.study_model import Stage, Timings

log = logging.getLogger("app.direct")


def settings_for(study: Path, output: Path, models: Path, workdir: Path | None) -> AppSettings:
    """The app's settings for one study (paths given; behaviour from ``app.yaml`` / ``BRATS_*``)."""
    context = types.SimpleNamespace(input_path=str(study), output_path=str(output), model_path=str(models),
                                    workdir=str(workdir) if workdir else "", triton_server_netloc="")
    return AppSettings.from_context(context)


def run_study(settings: AppSettings, engines: dict) -> tuple[int, dict[str, Any]]:
    """One study, as the app runs it; returns ``(exit code, its report)``. ``engines``: the
    engines earlier studies of this process created (:func:`operators.segmentation.segment.segment`)."""
    out = settings.output_dir
    check_writable(out)
    remove_stale_staging(out)
    earlier = set_aside_earlier_outputs(out)
    staging = OutputStaging(out)
    try:
        if not settings.input_dir.is_dir():
            raise InputError(f"input folder {settings.input_dir} does not exist")
        study = load_study(settings.input_dir)
        timings = Timings({Stage.LOAD: study.duration_s})
        selection = select_usable_modalities(study, SelectionRules.load(settings.rules_path))
        timings = timings.merged(Timings({Stage.SELECT: selection.duration_s}))
        done = register_and_resample(selection, settings.seed, log, settings.brain_extraction, settings.registration,
                                     settings.model_dir, settings.engine_cache_dir)
        timings = timings.merged(done.timings)
        outcome = segment(done.model_input, settings.model_dir, settings.engine, settings.seed, log,
                          rules=settings.post_processing, cache_dir=settings.engine_cache_dir,
                          write_unreliable_regions=settings.write_unreliable_regions, selection=selection,
                          engines=engines)
        timings = timings.merged(outcome.timings)
        written, own = write_outputs(selection, done.reference, labels_image(outcome, done.model_input.grid),
                                     outcome.plan, done.brain_mask, staging, __version__, log)
        timings = timings.merged(own)
        report = finished_report(APP_NAME, __version__, selection=selection, registration=done.record,
                                 segmentation=outcome.record, plan=outcome.plan, outputs=written, timings=timings,
                                 earlier_outputs=earlier)
        publish_with_report(staging, report)
        return 0, report
    except AppError as exc:
        log.error("%s", exc.one_line())
        staging.discard()
        write_failure_report(out, exc.code, exc.one_line(), earlier, exc.report_sections)
        return exc.exit_code, {"status": "failed", "error_code": exc.code, "error": exc.one_line()}
    except BaseException:
        staging.discard()
        raise


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-i", "--input", type=Path, action="append", required=True, help="DICOM study folder (repeat)")
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("-m", "--model", type=Path, required=True)
    ap.add_argument("-w", "--workdir", type=Path, default=None)
    ap.add_argument("--timings", type=Path, default=None,
                    help="where to write the timings (default with several studies: <output>/direct_runs.json)")
    args = ap.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(levelname)s] (%(name)s) - %(message)s")
    flush_denormals()
    several = len(args.input) > 1
    engines: dict = {}
    runs: list[dict[str, Any]] = []
    exit_code = 0
    for k, study in enumerate(args.input):
        output = args.output / f"{k}_{study.name}" if several else args.output
        t0 = time.perf_counter()
        try:
            code, report = run_study(settings_for(study, output, args.model, args.workdir), engines)
        except AppError as exc:  # the output folder itself (not writable): nothing written there
            log.error("%s", exc.one_line())
            code, report = exc.exit_code, {"status": "failed", "error_code": exc.code, "error": exc.one_line()}
        wall = time.perf_counter() - t0
        exit_code = exit_code or code
        runs.append({"study": str(study), "output": str(output), "process_study": k, "warm": k > 0,
                     "exit_code": code, "wall_s": round(wall, 3), "status": report.get("status"),
                     "stage_breakdown_s": report.get("stage_breakdown_s")})
        log.info("Study %d/%d %s: exit %d in %.1f s (%s)", k + 1, len(args.input), study.name, code, wall,
                 "warm" if k else "cold process")
    timings_path = args.timings or (args.output / "direct_runs.json" if several else None)
    if timings_path is not None:
        timings_path.parent.mkdir(parents=True, exist_ok=True)
        timings_path.write_text(json.dumps({"runner": "app.direct", "runs": runs}, indent=1) + "\n")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
