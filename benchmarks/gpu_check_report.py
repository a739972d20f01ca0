"""The GPU check's report (``python -m benchmarks.gpu_check``, the last phase): the summary
(speed-ups, achieved FLOP rate against the device's peak, memory ratios, the issue's goals met
or not), ``results.md`` (MPA tables 1 and 2, the ablation, the case and app stage times, the
goals) and the figures ``latency.png``, ``memory.png``, ``quality.png``, ``stages.png``."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.gpu_check_measure import BASELINE, ENGINES, PRODUCT
from benchmarks.measurement import REGIONS
from benchmarks.reporting import markdown_header, markdown_row, number_or_dash, pyplot, save_figure

__all__ = ["GOALS", "PEAK_TFLOPS", "peak_rate", "summarise", "write_markdown", "write_plots"]

#: Dense peak rates (TFLOP/s) by GPU name fragment: FP16 / TF32 tensor cores, FP32 CUDA cores
#: (NVIDIA data sheets, SXM parts unless named). Eager FP32 convolutions run in TF32 on these
#: GPUs (PyTorch's default ``torch.backends.cudnn.allow_tf32 = True``).
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H200": {"fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H100 PCIe": {"fp16": 756.0, "tf32": 378.0, "fp32": 51.2},
    "H100 NVL": {"fp16": 835.0, "tf32": 417.5, "fp32": 60.0},
    "H100": {"fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "A100": {"fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "L40S": {"fp16": 362.0, "tf32": 183.0, "fp32": 91.6},
}
#: The issue's goals for the FP16 engine on the GPU.
GOALS = {"speedup_vs_eager": 3.0, "speedup_vs_compile": 1.5, "peak_allocated_ratio": 0.20,
         "abs_delta_dice": 0.001, "label_agreement": 0.999, "end_to_end_s": 5.0,
         # the stages without Holoscan (app.direct): a fresh process, the engine built; a later study of a process
         "end_to_end_cold_s": 10.0, "end_to_end_warm_p95_s": 2.0,
         # the networks of a warm study (p50), and its labels against the CPU path's (Dice per region)
         "networks_per_case_s": 0.3, "labels_vs_cpu_abs_delta_dice": 0.005}


def peak_rate(gpu_name: str | None, precision: str) -> float | None:
    """The device's dense peak TFLOP/s for ``precision`` (None when the GPU is not listed)."""
    if not gpu_name:
        return None
    for fragment, rates in PEAK_TFLOPS.items():
        if fragment in gpu_name:
            return rates.get(precision)
    return None


def summarise(doc: dict[str, Any]) -> dict[str, Any]:
    """Speed-ups, throughput and memory ratios vs eager FP32, and the goals (met or not)."""
    eng = {n: r for n, r in doc["engines"].items() if r.get("status") == "ok"}
    base = eng.get(BASELINE, {}).get("latency", {})
    comp = eng.get("compile-fp32", {}).get("latency", {})
    gpu = doc["hardware"].get("gpu")
    shape_key = "x".join(map(str, doc["protocol"]["reference_shape"]))
    out: dict[str, Any] = {}
    for name, r in {**eng, **{n: v for n, v in doc.get("fp16_variants", {}).items() if v.get("status") == "ok"}}.items():
        lat = {n: v for n, v in r.get("latency", {}).items() if "p50" in v}
        row: dict[str, Any] = {}
        if lat:
            for key, ref in (("speedup_vs_eager", base), ("speedup_vs_compile", comp)):
                ratios = [ref[n]["p50"] / v["p50"] for n, v in lat.items() if "p50" in ref.get(n, {})]
                if ratios:
                    row[key] = float(np.exp(np.mean(np.log(ratios))))  # geometric mean over networks
            flops = [doc["flops_gflop"][n][shape_key] for n in lat]
            row["p50_ms_mean_over_networks"] = float(np.mean([1e3 * v["p50"] for v in lat.values()]))
            if all("device" in v for v in lat.values()):
                row["device_p50_ms_mean_over_networks"] = float(np.mean([1e3 * v["device"]["p50"] for v in lat.values()]))
            row["achieved_tflops"] = float(np.mean([f / 1e3 / v["p50"] for f, v in zip(flops, lat.values())]))
            prec = (ENGINES.get(name) or ENGINES[PRODUCT])[2]
            peak = peak_rate(gpu, prec)
            if peak:
                row["peak_tflops"] = peak
                row["peak_precision"] = prec
                row["fraction_of_peak"] = row["achieved_tflops"] / peak
        mem, mem0 = r.get("memory_reference_batch", {}), eng.get(BASELINE, {}).get("memory_reference_batch", {})
        if mem.get("peak_allocated_mb") and mem0.get("peak_allocated_mb"):
            row["peak_allocated_ratio_vs_eager"] = mem["peak_allocated_mb"] / mem0["peak_allocated_mb"]
            row["peak_reserved_ratio_vs_eager"] = mem["peak_reserved_mb"] / mem0["peak_reserved_mb"]
        out[name] = row
    goals: dict[str, Any] = {}
    p = out.get(PRODUCT, {})
    q = doc.get("quality", {}).get(PRODUCT, {})
    deltas = [abs(d) for item in q.values() for d in (item.get("delta_dice_vs_eager_fp32") or {}).values()]
    agreements = [item["label_agreement_brain"] for item in q.values() if "label_agreement_brain" in item]
    app, direct = doc.get("app", {}).get("app", {}), doc.get("app", {}).get("direct", {})
    measured = {
        "speedup_vs_eager": p.get("speedup_vs_eager"), "speedup_vs_compile": p.get("speedup_vs_compile"),
        "peak_allocated_ratio": p.get("peak_allocated_ratio_vs_eager"),
        "abs_delta_dice": max(deltas) if deltas else None, "label_agreement": min(agreements) if agreements else None,
        "end_to_end_s": (app.get("wall_after_first_s") or {}).get("p50"),
        "end_to_end_cold_s": ((direct.get("cold") or {}).get("process_wall_s") or {}).get("p50"),
        "end_to_end_warm_p95_s": ((direct.get("warm") or {}).get("study_wall_s") or {}).get("p95"),
        "networks_per_case_s": (((direct.get("warm") or {}).get("stages_s") or {}).get("network") or {}).get("p50"),
        "labels_vs_cpu_abs_delta_dice": ((direct.get("labels") or {}).get("vs_cpu_path") or {}).get("max_abs_delta_dice"),
    }
    for key, target in GOALS.items():
        v = measured[key]
        lower_is_better = key in ("peak_allocated_ratio", "abs_delta_dice", "networks_per_case_s",
                                  "labels_vs_cpu_abs_delta_dice") or key.startswith("end_to_end")
        met = None if v is None else (v <= target if lower_is_better else v >= target)
        goals[key] = {"target": target, "measured": v, "met": met, "direction": "<=" if lower_is_better else ">="}
    return {"per_engine": out, "goals": goals}


def write_markdown(doc: dict[str, Any], path: Path) -> None:
    """MPA-style tables 1 and 2, the ablation, the case and app stage times, the goals."""
    hw, proto, summ = doc["hardware"], doc["protocol"], doc.get("summary", {})
    lines = ["# GPU check: FP16 engine vs eager FP32 and torch.compile FP32", "",
             f"Run {doc['started']} ({doc['wall_s']:.0f} s wall, budget {proto['budget_s']} s), "
             f"`python -m benchmarks.gpu_check {' '.join(doc['argv'])}`.", "",
             f"- Device: {hw.get('gpu', 'CPU: ' + str(hw.get('cpu_model')))}"
             + (f", driver {hw.get('driver')}, CUDA {hw.get('cuda')}, cuDNN {hw.get('cudnn')}" if hw.get("gpu") else ""),
             f"- Host: {hw.get('cpu_model')}, {hw.get('cpu_count')} CPUs; torch {doc['runtime_versions'].get('torch')}, "
             f"onnx {doc['runtime_versions'].get('onnx')}, TensorRT {doc['runtime_versions'].get('tensorrt')}",
             f"- Eager FP32 convolutions: TF32 allowed = {doc['tf32']['cudnn_allow_tf32']} (PyTorch default)",
             f"- Reference batch {proto['reference_shape']} (NCDHW), {proto['warmup']} warm-up + {proto['runs']} timed "
             f"calls per network, wall clock around engine.run (copies in and out included; [network alone]: "
             f"CUDA events around the graph replay); case {proto['case']}"
             + (f" cropped to {proto['crop']}" if proto.get("crop") else ""),
             ""]
    eng = doc["engines"]
    lines += ["## Model only (MPA table 2)", "",
              *markdown_header(["engine", "model files MB", "p50 ms (mean of 9 nets) [network alone]", "speed-up vs eager",
                                "vs torch.compile", "peak allocated MiB", "peak reserved MiB", "allocated vs eager",
                                "TFLOP/s (of peak)", "first call s (max)"], "l" + "r" * 9)]
    sizes = doc.get("model_sizes", {})
    size_of = {"eager-fp32": sizes.get("fp32_state_dicts_mb"), "compile-fp32": sizes.get("fp32_state_dicts_mb"),
               "fp16": sizes.get("fp16_state_dicts_mb"), "tensorrt-fp16": sizes.get("fp32_onnx_mb")}
    for name, r in {**eng, **doc.get("fp16_variants", {})}.items():
        if r.get("status") != "ok":
            lines.append(f"| {name} | {r.get('status')}: {r.get('reason', '')} |||||||||")
            continue
        s = summ.get("per_engine", {}).get(name, {})
        mem = r.get("memory_reference_batch", {})
        firsts = [v.get("first_call_s") or 0 for v in r.get("latency", {}).values() if "p50" in v]
        tf = number_or_dash(s.get("achieved_tflops"), ".1f")
        if s.get("fraction_of_peak"):
            tf += f" ({100 * s['fraction_of_peak']:.1f} % of {s['peak_precision']})"
        dev = f" [{s['device_p50_ms_mean_over_networks']:.2f}]" if "device_p50_ms_mean_over_networks" in s else ""
        lines.append(markdown_row([
            name, number_or_dash(size_of.get(name), ".1f"), number_or_dash(s.get("p50_ms_mean_over_networks")) + dev,
            number_or_dash(s.get("speedup_vs_eager")) + "x", number_or_dash(s.get("speedup_vs_compile")) + "x",
            number_or_dash(mem.get("peak_allocated_mb"), ".0f"), number_or_dash(mem.get("peak_reserved_mb"), ".0f"),
            number_or_dash(s.get("peak_allocated_ratio_vs_eager")), tf, number_or_dash(max(firsts) if firsts else None, ".1f")]))
    nets = doc["protocol"]["networks"]
    ok = [n for n, r in {**eng, **doc.get("fp16_variants", {})}.items() if r.get("status") == "ok"]
    lines += ["", "Latency per network (ms: mean / p50 / p95):", "",
              *markdown_header(["network", "GFLOP", *ok], "lr" + "r" * len(ok))]
    shape_key = "x".join(map(str, proto["reference_shape"]))
    for n in nets:
        cells = []
        for name in ok:
            v = ({**eng, **doc.get("fp16_variants", {})}[name].get("latency") or {}).get(n, {})
            cells.append(f"{1e3 * v['mean']:.2f} / {1e3 * v['p50']:.2f} / {1e3 * v['p95']:.2f}" if "p50" in v else "–")
        lines.append(markdown_row([n, f"{doc['flops_gflop'][n][shape_key]:.1f}", *cells]))

    lines += ["", "## Quality on the case (MPA table 1)", "",
              *markdown_header(["scenario", "engine", "Dice WT / TC / ET", "HD95 mm WT / TC / ET", "sensitivity WT / TC / ET",
                                "ΔDice vs eager (points)", "label agreement with eager (brain voxels)", "voxels differing"],
                               "llllllrr")]
    for scen in proto["scenarios"]:
        for name, by in doc.get("quality", {}).items():
            item = by.get(scen)
            if not item or "vs_ground_truth" not in item:
                continue
            g = item["vs_ground_truth"]
            dd = item.get("delta_dice_vs_eager_fp32") or {}
            lines.append(markdown_row([scen, name, " / ".join(number_or_dash(g[r]["dice"], ".3f") for r in REGIONS),
                                       " / ".join(number_or_dash(g[r]["hd95"], ".1f") for r in REGIONS),
                                       " / ".join(number_or_dash(g[r]["sensitivity"], ".3f") for r in REGIONS),
                                       " / ".join(number_or_dash(100 * dd[r], "+.2f") if r in dd else "–" for r in REGIONS),
                                       number_or_dash(item.get("label_agreement_brain"), ".5f"),
                                       item.get("voxels_differing", "–")]))

    lines += ["", "## The case through the cascade (seconds)", "",
              *markdown_header(["engine", "scenario", "wall", "preprocess", "networks (9 views)", "post-processing"], "llrrrr")]
    for name, r in eng.items():
        for scen, c in (r.get("case") or {}).items():
            if "wall_s" in c:
                lines.append(markdown_row([name, scen, *(f"{c[k]:.2f}" for k in ("wall_s", "preprocess_s", "networks_s",
                                                                              "postprocess_s"))]))
            else:
                lines.append(f"| {name} | {scen} | {c.get('skipped', '')} ||||")

    e2e = doc.get("app", {})
    app, direct = e2e.get("app", {}), e2e.get("direct", {})
    lines += ["", "## The app end to end (DICOM in, SEG on disk)", ""]
    if e2e.get("study"):
        lines.append(f"Study: {e2e['study']}.")
    if app.get("status") != "ok" and not app.get("runs"):
        lines.append(f"python -m app {app.get('status', e2e.get('status', 'not run'))}: "
                     f"{app.get('reason', e2e.get('reason', ''))}")
    else:
        lines.append(f"python -m app, engine requested `{app.get('engine_requested')}`.")
        lines += ["", *markdown_header(["run", "exit", "wall s", "engine", "stages (s)"], "lrrll")]
        for i, run in enumerate(app.get("runs", [])):
            stages = ", ".join(f"{k} {v:.2f}" for k, v in (run.get("stages_s") or {}).items())
            lines.append(markdown_row([f"{i + 1}{' (cold)' if run.get('cold') else ''}", run.get("exit_code", "–"),
                                       number_or_dash(run.get("wall_s")), run.get("engine", "–"),
                                       stages or run.get("skipped", "")]))

    lines += aot_lines(doc.get("aot_start", {}))
    lines += direct_lines(direct)
    lines += ["", "## Goals (FP16 engine)", "", *markdown_header(["goal", "target", "measured", "met"], "lrrl")]
    for key, g in summ.get("goals", {}).items():
        met = {True: "yes", False: "**no**", None: "not measured"}[g["met"]]
        lines.append(markdown_row([key, f"{g['direction']} {g['target']}", number_or_dash(g["measured"], ".4g"), met]))
    skipped = [f"- {n}: {r.get('reason')}" for n, r in {**eng, **doc.get("fp16_variants", {})}.items() if r.get("status") != "ok"]
    if skipped:
        lines += ["", "## Not measured", "", *skipped]
    path.write_text("\n".join(lines) + "\n")


def aot_lines(aot: dict[str, Any]) -> list[str]:
    """The Markdown of the start-up phase: per kind of start, process wall and first calls."""
    lines = ["", "## The FP16 engine's start in a fresh process (AOT packages loaded vs compiled in the process)", ""]
    if aot.get("status") != "ok":
        return lines + [f"{aot.get('status', 'not run')}: {aot.get('reason', '')}"]
    build = aot.get("build", {})
    lines.append(f"AOT packages of {len(aot.get('networks', []))} network(s) built in {build.get('wall_s', 0):.1f} s "
                 f"({build.get('jobs')} processes); reference batch {aot.get('reference_shape')}.")
    lines += ["", *markdown_header(["start", "processes", "process wall p50 s", "first calls, sum over networks p50 s",
                                    "slowest first call p50 s", "later call p50 ms (mean)"], "lrrrrr")]
    for kind, v in aot.get("summary", {}).items():
        lines.append(markdown_row([kind, v["process_wall_s"]["n"], f"{v['process_wall_s']['p50']:.2f}",
                                   f"{v['first_call_s_sum_over_networks']['p50']:.2f}",
                                   f"{v['first_call_s_max_network']['p50']:.2f}", f"{1e3 * v['later_call_p50_s_mean']:.1f}"]))
    return lines


def direct_lines(direct: dict[str, Any]) -> list[str]:
    """The Markdown of the ``app.direct`` phase: cold and warm p50 / p95 per stage."""
    lines = ["", "### The stages without Holoscan (`python -m app.direct`), cold and warm", ""]
    if direct.get("status") != "ok":
        return lines + [f"{direct.get('status', 'not run')}: {direct.get('reason', '')}"]
    cold, warm = direct.get("cold") or {}, direct.get("warm") or {}
    lines.append(f"Cold: {(cold.get('process_wall_s') or {}).get('n', 0)} fresh processes of one study (the engine "
                 f"built by an earlier process); warm: later studies of one process "
                 f"({(warm.get('study_wall_s') or {}).get('n', 0)} measured).")
    lines += ["", *markdown_header(["stage", "cold p50 s", "cold p95 s", "warm p50 s", "warm p95 s"], "lrrrr")]

    def cells(block: dict[str, Any] | None) -> list[str]:
        return [number_or_dash((block or {}).get("p50")), number_or_dash((block or {}).get("p95"))]

    stages = list(dict.fromkeys([*(cold.get("stages_s") or {}), *(warm.get("stages_s") or {})]))
    for stage in stages:
        lines.append(markdown_row([stage, *cells((cold.get("stages_s") or {}).get(stage)),
                                   *cells((warm.get("stages_s") or {}).get(stage))]))
    lines.append(markdown_row(["**study, folder to report**", *cells(cold.get("study_wall_s")),
                               *cells(warm.get("study_wall_s"))]))
    lines.append(markdown_row(["**process, start to exit**", *cells(cold.get("process_wall_s")), "–", "–"]))
    labels = direct.get("labels") or {}
    if labels.get("status") == "failed":
        lines += ["", f"Labels not compared: {labels.get('reason')}"]
    elif labels:
        versus = labels.get("vs_cpu_path") or {}
        lines += ["", f"Labels (first cold run) vs the expert: Dice {labels.get('dice_vs_expert')}; vs the CPU path: "
                  + (f"change {versus['delta_dice']} (CPU {versus['cpu_dice_vs_expert']}, `{versus['reference']}`)"
                     if versus.get("status") == "ok" else str(versus.get("reason")))]
    return lines


def write_plots(doc: dict[str, Any], out: Path) -> list[str]:
    """latency.png, memory.png, quality.png, stages.png; returns the names written."""
    plt = pyplot()
    files: list[str] = []
    runs = {n: r for n, r in {**doc["engines"], **doc.get("fp16_variants", {})}.items() if r.get("status") == "ok"}
    nets = doc["protocol"]["networks"]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(nets) + 2), 4))
    width = 0.8 / max(1, len(runs))
    for j, (name, r) in enumerate(runs.items()):
        lat = r.get("latency", {})
        ax.bar(np.arange(len(nets)) + j * width, [1e3 * lat.get(n, {}).get("p50", np.nan) for n in nets], width, label=name)
    ax.set_xticks(np.arange(len(nets)) + width * (len(runs) - 1) / 2)
    ax.set_xticklabels(nets, fontsize=8)
    ax.set_ylabel("p50 latency (ms)")
    ax.set_title(f"Model only, batch {doc['protocol']['reference_shape']}")
    ax.legend(fontsize=7)
    save_figure(fig, out / "latency.png", files)

    fig, ax = plt.subplots(figsize=(7, 4))
    names = list(runs)
    alloc = [runs[n].get("memory_reference_batch", {}).get("peak_allocated_mb", 0) for n in names]
    resv = [runs[n].get("memory_reference_batch", {}).get("peak_reserved_mb", 0) for n in names]
    xs = np.arange(len(names))
    ax.bar(xs - 0.2, alloc, 0.4, label="peak allocated")
    ax.bar(xs + 0.2, resv, 0.4, label="peak reserved")
    ax.set_xticks(xs)
    ax.set_xticklabels(names, rotation=20, fontsize=8)
    ax.set_ylabel("GPU memory (MiB)" if doc["hardware"].get("gpu") else "GPU memory (none: CPU run)")
    ax.set_title("Peak GPU memory, reference batch")
    ax.legend(fontsize=8)
    save_figure(fig, out / "memory.png", files)

    q = doc.get("quality", {})
    scen = doc["protocol"]["scenarios"]
    fig, axes = plt.subplots(1, len(REGIONS), figsize=(4 * len(REGIONS), 3.8), sharey=True)
    for ax, reg in zip(np.atleast_1d(axes), REGIONS):
        width = 0.8 / max(1, len(q))
        for j, (name, by) in enumerate(q.items()):
            vals = [by.get(s, {}).get("vs_ground_truth", {}).get(reg, {}).get("dice", np.nan) for s in scen]
            ax.bar(np.arange(len(scen)) + j * width, vals, width, label=name)
        ax.set_xticks(np.arange(len(scen)) + width * (len(q) - 1) / 2)
        ax.set_xticklabels(scen, rotation=20, fontsize=7)
        ax.set_title(f"Dice {reg}")
        ax.set_ylim(0, 1)
    np.atleast_1d(axes)[0].legend(fontsize=7)
    save_figure(fig, out / "quality.png", files)

    fig, ax = plt.subplots(figsize=(7, 4))
    rows = [(n, r["case"]["all"]) for n, r in runs.items() if "wall_s" in (r.get("case") or {}).get("all", {})]
    bottom = np.zeros(len(rows))
    for part in ("preprocess_s", "networks_s", "postprocess_s"):
        vals = np.array([c[part] for _, c in rows])
        ax.bar([n for n, _ in rows], vals, bottom=bottom, label=part.removesuffix("_s"))
        bottom += vals
    app_runs = [r for r in doc.get("app", {}).get("app", {}).get("runs", []) if r.get("stages_s")]
    if app_runs:
        last = app_runs[-1]["stages_s"]
        b = 0.0
        for k, v in last.items():
            ax.bar(["app (last run)"], [v], bottom=[b], label=f"app {k}")
            b += v
    ax.set_ylabel("seconds")
    ax.set_title("One case, all four sequences: where the time goes")
    ax.legend(fontsize=7)
    plt.setp(ax.get_xticklabels(), rotation=20, fontsize=8)
    save_figure(fig, out / "stages.png", files)
    return files
