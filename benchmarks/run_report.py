"""``python -m benchmarks.run``'s report: ``tables.md`` (MPA-style Markdown tables), the figures
(``latency.png``, ``memory.png``, ``end_to_end.png``, ``throughput.png`` with ``--triton``) and
``deployment_manifest.json``, all from the run's results document (``results.json``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.measurement import PROTOCOL_SHAPES, REGIONS
from benchmarks.reporting import markdown_header, markdown_row, pyplot, save_figure

__all__ = ["STAGE_KEYS", "deployment_manifest", "write_plots", "write_tables"]

#: The stages of one case end to end, as the worker records them (seconds).
STAGE_KEYS = ("load", "preprocess", "infer", "postprocess")


def write_tables(doc: dict[str, Any], path: Path) -> None:
    """MPA-style Markdown tables."""
    res, lines = doc["engines"], []
    lines += ["# Engine benchmark", "", f"Run: {doc['started']}, host {doc['hardware'].get('cpu_model', '?')}, "
              f"{doc['hardware'].get('cpu_count')} CPUs; warm-up {doc['protocol']['warmup']}, "
              f"runs {doc['protocol']['runs']}.", ""]
    lines += ["## Latency (model only, seconds)", "",
              *markdown_header(["engine", "batch", "p50", "p95", "max", "speed-up vs torch (p50)"], "llrrrr")]
    for name, r in res.items():
        if r.get("status") != "ok":
            continue
        for key, v in r.get("latency", {}).items():
            sp = doc["speedup_vs_torch"].get(name, {}).get(key)
            lines.append(markdown_row([name, key, f"{v['p50']:.3f}", f"{v['p95']:.3f}", f"{v['max']:.3f}",
                                       f"{sp:.2f}x" if sp else "-"]))
    lines += ["", "## Skipped engines", "", *markdown_header(["engine", "reason"], "ll")]
    for name, r in res.items():
        if r.get("status") != "ok":
            lines.append(markdown_row([name, r.get("reason", "?")]))
    lines += ["", "## Memory", "",
              *markdown_header(["engine", "peak RSS MiB", "GPU max allocated MiB", "GPU max reserved MiB"], "lrrr")]
    for name, r in res.items():
        if r.get("status") == "ok":
            lines.append(markdown_row([name, f"{r.get('peak_rss_mb', float('nan')):.0f}",
                                       r.get("gpu_max_memory_allocated_mb", "-"), r.get("gpu_max_memory_reserved_mb", "-")]))
    lines += ["", "## End to end per case (seconds)", "",
              *markdown_header(["engine", "case", "scenario", *STAGE_KEYS, "total wall", "total CPU", "infer %",
                                "Amdahl bound"], "lllrrrrrrrr")]
    for name, r in res.items():
        for row in r.get("e2e", []):
            lines.append(markdown_row([name, row["case"], row["scenario"],
                                       *(f"{row[k]:.1f}" for k in (*STAGE_KEYS, "total_wall", "total_cpu")),
                                       f"{100 * row['infer_fraction']:.0f}", f"{row['amdahl_bound']:.1f}x"]))
    q = doc["quality"]
    for ref_kind, title in (("vs_ground_truth", "against ground truth"), ("vs_fp32_reference", "against the FP32 torch labels")):
        lines += ["", f"## Quality {title}", "",
                  *markdown_header(["engine", "case", "scenario",
                                    *(f"{r} {m}" for r in REGIONS for m in ("Dice", "HD95", "sens"))],
                                   "lll" + "r" * 3 * len(REGIONS))]
        for name, rows in q["per_case"].items():
            for i in rows:
                m = i.get(ref_kind)
                if m is None:
                    continue
                lines.append(markdown_row([name, i["case"], i["scenario"], *(
                    cell for r in REGIONS
                    for cell in (f"{m[r]['dice']:.3f}", f"{m[r]['hd95']:.1f}", f"{m[r]['sensitivity']:.3f}"))]))
    lines += ["", "## ΔDice vs FP32 torch (engine minus torch, both against ground truth)", "",
              *markdown_header(["engine", "scenario", *(f"Δ{r}" for r in REGIONS)], "ll" + "r" * len(REGIONS))]
    for name, per_s in q["delta_dice_vs_fp32"].items():
        for s, d in per_s.items():
            lines.append(markdown_row([name, s, *(f"{d.get(r, float('nan')):+.4f}" for r in REGIONS)]))
    tri = doc.get("triton")
    if tri:
        lines += ["", "## Remote inference (Triton)", ""]
        if "variants" not in tri:
            lines.append(f"Failed: {tri.get('reason', '?')}")
        else:
            lines += [f"Server: {tri['server']}; protocol {tri['protocol']}; case {tri['case']} (scenario all, crop "
                      f"{tri['crop']}); {tri.get('note', '')}", "",
                      *markdown_header(["variant", "network call", "p50", "p95", "max"], "llrrr")]
            for v, r in tri["variants"].items():
                for key, x in r.get("latency", {}).items():
                    lines.append(markdown_row([v, key, f"{x['p50']:.3f}", f"{x['p95']:.3f}", f"{x['max']:.3f}"]))
            lines += ["", *markdown_header(["variant", "concurrent studies", "wall s", "study latency p50 s", "studies/min",
                                            "vs 1 study", "requests / execute", "labels = single study",
                                            "labels = local onnxruntime"], "lrrrrrrll")]
            for v, r in tri["variants"].items():
                for row in r.get("throughput", []):
                    rpe = row.get("requests_per_execute")
                    lines.append(markdown_row([v, row["concurrent_studies"], f"{row['wall_s']:.1f}",
                                               f"{row['study_latency_s']['p50']:.1f}", f"{row['studies_per_minute']:.2f}",
                                               f"{row['throughput_vs_1']:.2f}x", "-" if rpe is None else f"{rpe:.2f}",
                                               row.get("labels_identical_to_single_study", "-"),
                                               row.get("labels_identical_to_local_onnxruntime", "-")]))
    path.write_text("\n".join(lines) + "\n")


def write_plots(doc: dict[str, Any], out: Path) -> list[str]:
    """latency.png, memory.png, end_to_end.png and, with a Triton section, throughput.png; returns
    the names written."""
    plt = pyplot()
    ok = {n: r for n, r in doc["engines"].items() if r.get("status") == "ok"}
    files: list[str] = []
    keys = sorted({k for r in ok.values() for k in r.get("latency", {})})
    fig, ax = plt.subplots(figsize=(max(6, 1.5 * len(keys) * max(1, len(ok)) / 2), 4))
    width = 0.8 / max(1, len(ok))
    for j, (name, r) in enumerate(ok.items()):
        p50 = [r["latency"].get(k, {}).get("p50", np.nan) for k in keys]
        p95 = [r["latency"].get(k, {}).get("p95", np.nan) for k in keys]
        xs = np.arange(len(keys)) + j * width
        ax.bar(xs, p50, width, label=name)
        ax.errorbar(xs, p50, yerr=[np.zeros(len(keys)), np.subtract(p95, p50)], fmt="none", ecolor="k", capsize=2)
    ax.set_xticks(np.arange(len(keys)) + width * (len(ok) - 1) / 2)
    ax.set_xticklabels([k.split("[")[0] for k in keys], rotation=20, fontsize=8)
    ax.set_ylabel("latency p50 (s), whisker p95")
    ax.set_title("Model-only latency per engine")
    ax.legend(fontsize=8)
    save_figure(fig, out / "latency.png", files)

    fig, ax = plt.subplots(figsize=(6, 4))
    names = list(ok)
    ax.bar(names, [ok[n].get("peak_rss_mb", 0) for n in names], label="peak RSS (MiB)")
    if any("gpu_max_memory_reserved_mb" in ok[n] for n in names):
        ax.bar(names, [ok[n].get("gpu_max_memory_reserved_mb", 0) for n in names], alpha=0.6, label="GPU reserved (MiB)")
    ax.set_ylabel("MiB")
    ax.set_title("Peak memory per engine")
    ax.legend(fontsize=8)
    plt.setp(ax.get_xticklabels(), rotation=20, fontsize=8)
    save_figure(fig, out / "memory.png", files)

    fig, ax = plt.subplots(figsize=(6, 4))
    e2e_names = [n for n in names if ok[n].get("e2e")]
    bottom = np.zeros(len(e2e_names))
    for stage in STAGE_KEYS:
        vals = np.array([np.mean([row[stage] for row in ok[n]["e2e"]]) for n in e2e_names]) if e2e_names else np.zeros(0)
        ax.bar(e2e_names, vals, bottom=bottom, label=stage)
        bottom = bottom + vals
    ax.set_ylabel("seconds per case (mean)")
    ax.set_title("End-to-end stage breakdown")
    ax.legend(fontsize=8)
    plt.setp(ax.get_xticklabels(), rotation=20, fontsize=8)
    save_figure(fig, out / "end_to_end.png", files)

    tri = doc.get("triton") or {}
    if tri.get("variants"):
        fig, ax = plt.subplots(figsize=(6, 4))
        for v, r in tri["variants"].items():
            rows = r.get("throughput", [])
            ax.plot([x["concurrent_studies"] for x in rows], [x["studies_per_minute"] for x in rows], marker="o", label=v)
        ax.set_xlabel("concurrent studies against one server")
        ax.set_ylabel("studies per minute")
        ax.set_title("Triton remote inference: throughput")
        ax.legend(fontsize=8)
        save_figure(fig, out / "throughput.png", files)
    return files


def deployment_manifest(doc: dict[str, Any]) -> dict[str, Any]:
    """The six-part deployment manifest."""
    res = doc["engines"]
    return {
        "hardware": doc["hardware"],
        "runtime_versions": {"packages": doc["runtime_versions"],
                             "engines": {n: r.get("describe") for n, r in res.items() if r.get("status") == "ok"}},
        "precision": {n: (r.get("describe") or {}).get("precision") for n, r in res.items() if r.get("status") == "ok"},
        "input_protocol": {
            "layout": "NCDHW float32, channels FLAIR, T1, T1ce, T2, z-scored per modality over voxels > 0",
            "batch": 5, "slab_depth_in": 19, "slab_depth_out": 11,
            "patch_shapes": {n: list(s[2:]) for n, s in PROTOCOL_SHAPES.items()},
            "reference_batch": doc["protocol"]["reference_batch"],
            "normalisation": "batch statistics over (N, D, H, W): results depend on batch composition",
        },
        "latency_protocol": {
            "warmup": doc["protocol"]["warmup"], "runs": doc["protocol"]["runs"],
            "timer": "time.perf_counter, wall clock, one engine per subprocess, engines run sequentially",
            "included": "engine.run(network, batch): host->device copy, inference, device->host copy, "
                        "output conversion to float32 NumPy; excluded: engine creation, model loading, "
                        "compilation / first-call warm-up (reported separately)",
            "statistics": "p50, p95, max over the timed runs; speed-up = torch p50 / engine p50, same run",
            "threads": doc["protocol"]["threads"],
        },
        "quality_delta": doc["quality"]["delta_dice_vs_fp32"],
        **({"remote_inference": _remote_manifest(doc["triton"])} if "triton" in doc else {}),
    }


def _remote_manifest(tri: dict[str, Any]) -> dict[str, Any]:
    """The remote engine's part of the deployment manifest (same format as the local engines')."""
    if "variants" not in tri:
        return tri
    return {
        "server": tri.get("server"), "protocol": tri.get("protocol"), "case": tri.get("case"), "crop": tri.get("crop"),
        "engines": {v: r.get("describe") for v, r in tri["variants"].items()},
        "latency_p50_s": {v: {k: x["p50"] for k, x in r.get("latency", {}).items()} for v, r in tri["variants"].items()},
        "throughput_studies_per_minute": {v: {str(row["concurrent_studies"]): row["studies_per_minute"]
                                              for row in r.get("throughput", [])} for v, r in tri["variants"].items()},
        "batching": tri.get("note"),
    }
