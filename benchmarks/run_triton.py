"""``python -m benchmarks.run --triton``: the remote engine (:mod:`engines.runtimes.triton_engine`)
measured against a real Triton server, in the main process (see ``benchmarks.run``'s docstring):
latency per network call, latency per study and throughput with concurrent studies, twice (the
Python-backend repository with and without ``dynamic_batching``, each served by a local
``tritonserver``) or once against ``--triton-url``."""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.measurement import PROTOCOL_SHAPES, SCENARIOS, crop_to_tumour, time_network
from benchmarks.reporting import jsonable, percentiles
from engines.model.brats_cases import load_case

__all__ = ["triton_section"]

log = logging.getLogger("benchmarks.run")


def _process_tree_hwm_mb(pid: int) -> float:
    """Sum of peak RSS (``VmHWM``) of ``pid`` and its descendants, MiB (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM"):
                    total += int(line.split()[1]) / 1024.0
        except OSError:
            pass
    return total


def _triton_variant(url: str, args: argparse.Namespace, case: tuple[str, np.ndarray], server_pid: int | None) -> dict[str, Any]:
    """Latency per call, per study and throughput at each concurrency against one server."""
    import threading

    from engines.model import cascade as C
    from engines.runtimes.triton_engine import TritonEngine

    out: dict[str, Any] = {"url": url}
    engine = TritonEngine(args.models, url=url, timeout_s=args.triton_timeout)
    engine.prepare(list(C.STAGES["wt"].networks.values()) + list(C.STAGES["tc"].networks.values())
                   + list(C.STAGES["en"].networks.values()))
    latency: dict[str, Any] = {}
    for net in args.latency_networks:
        shape = tuple(args.latency_shape) if args.latency_shape else PROTOCOL_SHAPES[net]
        latency[f"{net}@{list(shape)}"] = time_network(engine, net, shape, args.warmup, args.runs)
        log.info("triton %s %s: p50 %.3f s", url, net, latency[f"{net}@{list(shape)}"]["p50"])
    out["latency"] = latency
    out["describe"] = jsonable(engine.describe())

    case_name, vols = case
    ref_labels: np.ndarray | None = None
    local_path = args.out / "labels" / "onnxruntime" / f"{case_name}__all.npy"
    local_labels = np.load(local_path) if local_path.is_file() else None
    levels = []
    for conc in args.triton_concurrency:
        engines = [TritonEngine(args.models, url=url, timeout_s=args.triton_timeout) for _ in range(conc)]
        results: list[Any] = [None] * conc
        walls = [0.0] * conc
        errors: list[str] = []

        # Each study thread is joined before the loop moves on: the closure's loop variables
        # (results, engines, errors, walls) are this iteration's.
        def study(i: int) -> None:
            t = time.perf_counter()
            try:
                results[i] = C.segment_brats_full(vols, SCENARIOS["all"], engines[i], seed=0)  # noqa: B023
            except Exception as exc:  # noqa: BLE001 - recorded in the results
                errors.append(f"{type(exc).__name__}: {exc}")  # noqa: B023
            walls[i] = time.perf_counter() - t  # noqa: B023

        before = engine.statistics()
        t0 = time.perf_counter()
        threads = [threading.Thread(target=study, args=(i,), name=f"study-{i}") for i in range(conc)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        after = engine.statistics()
        requests = sum(after[n]["requests"] - before[n]["requests"] for n in after)
        executions = sum(after[n]["executions"] - before[n]["executions"] for n in after)
        row: dict[str, Any] = {"concurrent_studies": conc, "wall_s": wall, "errors": errors,
                               "study_latency_s": percentiles(walls), "studies_per_minute": 60.0 * conc / wall,
                               "requests": requests, "executions": executions,
                               "requests_per_execute": requests / executions if executions else None,
                               "seconds_in_calls_mean": float(np.mean([e.seconds_in_calls for e in engines])),
                               "calls_per_study": float(np.mean([e.calls for e in engines]))}
        labels = [r.labels for r in results if r is not None]
        if labels:
            if ref_labels is None:
                ref_labels = labels[0]
            row["labels_identical_to_single_study"] = all(np.array_equal(lab, ref_labels) for lab in labels)
            if local_labels is not None:
                row["labels_identical_to_local_onnxruntime"] = all(np.array_equal(lab, local_labels) for lab in labels)
        levels.append(row)
        log.info("triton %s: %d concurrent studies in %.1f s (%.2f studies/min), %d requests in %d executes",
                 url, conc, wall, row["studies_per_minute"], requests, executions)
    base = levels[0]["studies_per_minute"] if levels else None
    for row in levels:
        row["throughput_vs_1"] = row["studies_per_minute"] / base if base else None
    out["throughput"] = levels
    if server_pid is not None:
        # tritonserver + one Python-backend stub per model instance; the peaks need not coincide.
        out["server_peak_rss_mb_sum_of_processes"] = _process_tree_hwm_mb(server_pid)
    return out


def triton_section(args: argparse.Namespace) -> dict[str, Any]:
    """The remote-engine benchmark (see the module docstring)."""
    from benchmarks.triton_server import find_triton, run_triton
    from engines.serving.triton_repository import generate

    case_dir = args.case_dirs[0]
    vols, seg, _ = load_case(case_dir)
    if args.crop:
        vols, seg = crop_to_tumour(vols, seg, args.crop)
    res: dict[str, Any] = {"case": case_dir.name, "scenario": "all", "crop": args.crop,
                           "concurrency": args.triton_concurrency, "protocol": args.triton_protocol,
                           "variants": {}}
    case = (case_dir.name, vols)
    if args.triton_url:
        res["server"] = "external"
        res["variants"]["as_configured"] = _triton_variant(args.triton_url, args, case, None)
        return res
    install = find_triton()
    res["server"] = f"local tritonserver from nvidia-pytriton {install.version()} (.venv-triton), Python backend"
    for variant, dyn in (("dynamic_batching", True), ("no_dynamic_batching", False)):
        vdir = args.out / "triton" / variant
        vdir.mkdir(parents=True, exist_ok=True)
        generate(args.models, vdir / "repository", flavour="python", dynamic_batching=dyn)
        with run_triton(vdir / "repository", log_path=vdir / "tritonserver.log") as server:
            url = server.http_url if args.triton_protocol == "http" else server.grpc_url
            r = _triton_variant(url, args, case, server.process.pid)
            r["startup_s"] = server.startup_s
        r["dynamic_batching"] = dyn
        res["variants"][variant] = r
    res["note"] = ("The networks normalise with batch statistics: the Python-backend model runs every request "
                   "as its own batch, also when the dynamic batcher hands it several requests in one execute "
                   "call (requests_per_execute > 1); dynamic batching therefore only changes queueing, never "
                   "the arithmetic. onnxruntime_onnx / tensorrt_plan configs use max_batch_size 0 (no "
                   "server-side batching).")
    return res
