"""What every benchmark writes, and the pieces it is written with: the one shared module for
results files, Markdown tables, figures and latency percentiles.

* :func:`write_result`: ``<name>.json`` (the numbers) and ``<name>.md`` (the table a person
  reads), side by side in the output folder, and the table printed;
* :func:`markdown_header`, :func:`markdown_row`, :func:`number_or_dash`: lines of a Markdown table;
* :func:`pyplot`, :func:`save_figure`: matplotlib without a display, and one way to write a PNG;
* :func:`percentiles`: p50 / p95 / max / mean of timing samples;
* :func:`jsonable`, :func:`find_key`: results as JSON, and a key found anywhere in a report.

NumPy only at import (matplotlib when a figure is drawn): the GPU check imports it on a machine
whose image has torch, NumPy and matplotlib but not the app's stack.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "find_key",
    "jsonable",
    "markdown_header",
    "markdown_row",
    "number_or_dash",
    "percentiles",
    "pyplot",
    "save_figure",
    "write_result",
]


def write_result(out_dir: Path, name: str, result: dict[str, Any], markdown: str) -> None:
    """Write ``out_dir/name.json`` and ``out_dir/name.md`` (creating the folder) and print the table."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / f"{name}.md").write_text(markdown)
    print(markdown)


def find_key(obj: Any, key: str) -> Any:
    """The first value under ``key`` anywhere in a nested JSON object (a report), depth first;
    None when absent."""
    if isinstance(obj, dict):
        if key in obj:
            return obj[key]
        obj = list(obj.values())
    if isinstance(obj, list):
        for v in obj:
            found = find_key(v, key)
            if found is not None:
                return found
    return None


def jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON values (what ``json.dumps(..., default=str)`` writes, read back)."""
    return json.loads(json.dumps(obj, default=str))


# ----------------------------------------------------------------------------- percentiles


def percentiles(samples: Sequence[float]) -> dict[str, float]:
    """``p50``, ``p95``, ``max``, ``mean``, ``n`` of latency samples (seconds)."""
    a = np.asarray(samples, dtype=np.float64)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "max": float(a.max()), "mean": float(a.mean()), "n": int(a.size)}


# ----------------------------------------------------------------------------- Markdown tables


def markdown_row(cells: Iterable[Any]) -> str:
    """One table line: ``| a | b | c |``."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown_header(columns: Sequence[str], align: str) -> list[str]:
    """The header line and the rule of a table; ``align`` has one letter per column, ``l``
    (``---``) or ``r`` (``---:``, numbers)."""
    if len(align) != len(columns) or set(align) - {"l", "r"}:
        raise ValueError(f"align {align!r}: one of 'l' / 'r' per column of {list(columns)}")
    return [markdown_row(columns), markdown_row("---:" if a == "r" else "---" for a in align)]


def number_or_dash(v: Any, fmt: str = ".2f") -> str:
    """``v`` formatted with ``fmt``; an en dash for a value not measured (None, NaN, infinite)."""
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, fmt)


# ----------------------------------------------------------------------------- figures


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, files: list[str] | None = None, *, dpi: int = 100) -> None:
    """Lay out, write ``path`` (PNG, ``dpi``), close, and list its name in ``files`` (when given)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    if files is not None:
        files.append(Path(path).name)
