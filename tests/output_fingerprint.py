"""What the app wrote, minus what legitimately changes from run to run: a fingerprint to prove a
refactoring left every output as it was.

``fingerprint(output_dir, input_dir)`` reads ``segmentation.dcm``, ``volumes_sr.dcm``,
``report.json`` and ``overlay.png`` (those present) and returns a JSON-able dict:

* DICOM files: every data element (file meta included, sequences recursed) as
  ``keyword -> value`` (compared with a long sequence as its length, a hash of its items and
  its first items); bulk data (``PixelData`` and other OB / OW) as its SHA-256; dates and
  times (VR DA / TM / DT) as ``"<time>"``; a UID that neither the input study holds nor the
  DICOM standard registers (the run's own SOP / Series Instance UIDs and the ones derived from
  them) as ``"<uid N>"``, numbered in order of first appearance within the file, so that a
  reference to a generated UID still has to point at the same thing;
* ``report.json``: every field but the run's clock (``created``, ``timings_s``,
  ``stage_breakdown_s``, ``stage_share``, Amdahl bound, any key holding seconds), the host
  section and output locations; generated UIDs as above;
* ``overlay.png``: the SHA-256 of its decoded RGB pixels.

The network's numerics depend on the CPU (instruction set, FP32 or BF16), so a golden
fingerprint belongs to a *numeric class* (:func:`numeric_class`: engine, precision, AVX-512 or
not); the test compares exactly within the recorded class and, on another class, everything
that does not come from the network's arithmetic plus the label counts within a tolerance.

Tests call :func:`check_unchanged`; with ``BRATS_RECORD_GOLDEN=1`` in the environment it writes
the golden of the run at hand instead (``tests/golden/outputs/NAME.<numeric class>.json``), which
is how the goldens were recorded before the redesign; ``python -m tests.output_fingerprint record
NAME OUTPUT_DIR INPUT_DIR`` does the same for a run made by hand.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID_dictionary

__all__ = ["GOLDEN_DIR", "check_unchanged", "compare", "fingerprint", "golden_path", "numeric_class", "record"]

GOLDEN_DIR = Path(__file__).resolve().parent / "golden" / "outputs"
_BULK_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "UN"}
_TIME_VRS = {"DA", "TM", "DT"}
#: report.json keys that hold the run's clock, its machine or where it wrote (never compared).
_CLOCK_KEYS = {"created", "timings_s", "stage_breakdown_s", "stage_share", "amdahl_bound_zero_time_network", "host",
               "earlier_outputs_moved_to", "cache_dir", "seconds", "duration_s", "elapsed_s", "wall_s", "first_call_s"}


def _is_clock_key(key: str) -> bool:
    return key in _CLOCK_KEYS or key.endswith("_s") or key.endswith("_seconds") or key.startswith("seconds")


class _Uids:
    """Generated UIDs -> ``<uid N>`` in order of first appearance; input and registered UIDs kept."""

    def __init__(self, known: set[str]) -> None:
        self.known = known
        self.generated: dict[str, str] = {}

    def __call__(self, uid: str) -> str:
        if uid in self.known or uid in UID_dictionary:
            return uid
        return self.generated.setdefault(uid, f"<uid {len(self.generated) + 1}>")


def input_uids(input_dir: Path) -> set[str]:
    """Every UID value in the input study's DICOM files (headers only)."""
    uids: set[str] = set()

    def walk(ds: Dataset) -> None:
        for elem in ds:
            if elem.VR == "SQ":
                for item in elem.value:
                    walk(item)
            elif elem.VR == "UI" and elem.value:
                values = elem.value if isinstance(elem.value, list | pydicom.multival.MultiValue) else [elem.value]
                uids.update(str(v) for v in values)

    for path in sorted(Path(input_dir).rglob("*")):
        if path.is_file():
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:  # noqa: BLE001 - not DICOM: the app ignores it too
                continue
            walk(ds.file_meta)
            walk(ds)
    return uids


def _dicom(ds: Dataset, uids: _Uids) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for elem in ds:
        key = elem.keyword or f"({elem.tag.group:04X},{elem.tag.element:04X})"
        if key == "FileMetaInformationGroupLength":  # follows the generated UIDs' lengths
            continue
        if elem.VR == "SQ":
            out[key] = [_dicom(item, uids) for item in elem.value]
        elif elem.VR in _BULK_VRS:
            out[key] = "sha256:" + hashlib.sha256(bytes(elem.value or b"")).hexdigest()
        elif elem.VR in _TIME_VRS:
            out[key] = "<time>"
        elif elem.VR == "UI":
            values = elem.value if isinstance(elem.value, list | pydicom.multival.MultiValue) else [elem.value]
            out[key] = [uids(str(v)) for v in values if v]
        else:
            value = elem.value
            if isinstance(value, pydicom.multival.MultiValue | list):
                out[key] = [str(v) for v in value]
            elif isinstance(value, bytes):
                out[key] = "sha256:" + hashlib.sha256(value).hexdigest()
            else:
                out[key] = str(value)
    return out


#: Sequences longer than this are kept as their item count, the SHA-256 of all items and the
#: first items in full (a per-frame sequence of hundreds of items would make the golden large).
_LONG_SEQUENCE = 8


def collapse(obj: Any) -> Any:
    """Long lists of items (sequences) -> ``{"items", "sha256", "first"}``, recursively."""
    if isinstance(obj, dict):
        return {k: collapse(v) for k, v in obj.items()}
    if isinstance(obj, list) and len(obj) > _LONG_SEQUENCE and all(isinstance(v, dict) for v in obj):
        digest = hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()
        return {"items": len(obj), "sha256": digest, "first": [collapse(v) for v in obj[:2]]}
    if isinstance(obj, list):
        return [collapse(v) for v in obj]
    return obj


def _dicom_file(path: Path, known: set[str]) -> dict[str, Any]:
    ds = pydicom.dcmread(path)
    uids = _Uids(known)
    return {"file_meta": _dicom(ds.file_meta, uids), "dataset": _dicom(ds, uids)}


def _report(obj: Any, uids: _Uids) -> Any:
    if isinstance(obj, dict):
        return {k: _report(v, uids) for k, v in obj.items() if not _is_clock_key(k)}
    if isinstance(obj, list):
        return [_report(v, uids) for v in obj]
    if isinstance(obj, str) and obj[:1].isdigit() and obj.count(".") >= 3 and set(obj) <= set("0123456789."):
        return uids(obj)
    return obj


def _png(path: Path) -> str:
    from PIL import Image

    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))
    return f"sha256:{hashlib.sha256(rgb.tobytes()).hexdigest()} {rgb.shape[1]}x{rgb.shape[0]}"


def label_counts(seg_path: Path) -> dict[str, int]:
    """Voxels per segment of a SEG (segment label -> count), from its frames and their segment numbers."""
    seg = pydicom.dcmread(seg_path)
    frames = np.asarray(seg.pixel_array).reshape(-1, int(seg.Rows), int(seg.Columns))
    numbers = [int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
               for f in seg.PerFrameFunctionalGroupsSequence]
    per_frame = np.count_nonzero(frames.reshape(len(numbers), -1), axis=1)
    return {str(item.SegmentLabel): int(sum(c for n, c in zip(numbers, per_frame) if n == int(item.SegmentNumber)))
            for item in seg.SegmentSequence}


def fingerprint(output_dir: Path, input_dir: Path) -> dict[str, Any]:
    """The fingerprint of one run's outputs (see the module docstring)."""
    output_dir = Path(output_dir)
    known = input_uids(input_dir)
    out: dict[str, Any] = {}
    report_path = output_dir / "report.json"
    if report_path.exists():
        out["report.json"] = _report(json.loads(report_path.read_text()), _Uids(known))
    for name in ("segmentation.dcm", "volumes_sr.dcm"):
        if (output_dir / name).exists():
            out[name] = _dicom_file(output_dir / name, known)
    if (output_dir / "segmentation.dcm").exists():
        out["label_counts"] = label_counts(output_dir / "segmentation.dcm")
    if (output_dir / "overlay.png").exists():
        out["overlay.png"] = _png(output_dir / "overlay.png")
    out["files"] = sorted(p.name for p in output_dir.iterdir())
    return out


def numeric_class(report: dict[str, Any]) -> str:
    """Engine, precision and vector width the network ran with: runs of one class give the same
    labels bit for bit; across classes the last bits of the logits differ."""
    seg = report.get("segmentation") or {}
    engine = (seg.get("engine") or {}).get("engine", "none")
    precision = ((seg.get("engine") or {}).get("precision_choice") or {}).get("precision", "fp32")
    flags = set(((report.get("host") or {}).get("cpu") or {}).get("flags") or [])
    width = "avx512" if any(f.startswith("avx512") for f in flags) else "avx2"
    return f"{engine}-{precision}-{width}"


def golden_path(name: str, numeric: str) -> Path:
    return GOLDEN_DIR / f"{name}.{numeric}.json"


def _diff(a: Any, b: Any, where: str, out: list[str], skip: Iterable[str] = ()) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k in skip:
                continue
            if k not in a or k not in b:
                out.append(f"{where}/{k}: only in {'after' if k in a else 'before'}")
            else:
                _diff(a[k], b[k], f"{where}/{k}", out, skip)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            _diff(x, y, f"{where}[{i}]", out, skip)
    elif a != b:
        out.append(f"{where}: {str(b)[:120]!r} before, {str(a)[:120]!r} after")


def compare(after: dict[str, Any], before: dict[str, Any], *, exact: bool, count_tolerance: float = 0.01) -> list[str]:
    """Differences between two fingerprints, one line each (empty: unchanged).

    ``exact``: the same numeric class, everything must match. Otherwise the parts the network's
    arithmetic decides (pixel data, label counts, volumes, the overlay, numbers in the report)
    are left out of the exact comparison and the label counts must agree within
    ``count_tolerance`` (relative).
    """
    out: list[str] = []
    after, before = collapse(after), collapse(before)
    if exact:
        _diff(after, before, "", out)
        return out
    # "sha256": a collapsed long sequence's hash covers its numbers too (the SR's measurements);
    # its item count and first items are still compared.
    numeric_keys = {"PixelData", "NumberOfFrames", "PerFrameFunctionalGroupsSequence", "overlay.png", "label_counts",
                    "MeasuredValueSequence", "NumericValue", "segmentation", "result", "registration", "warnings",
                    "sha256"}
    _diff(after, before, "", out, skip=numeric_keys)
    for label, n in (before.get("label_counts") or {}).items():
        m = (after.get("label_counts") or {}).get(label)
        if m is None or abs(m - n) > count_tolerance * max(n, 1):
            out.append(f"label_counts/{label}: {n} before, {m} after (> {count_tolerance:.0%})")
    return out


def record(name: str, output_dir: Path, input_dir: Path) -> Path:
    """Write the golden fingerprint of a run; returns its path."""
    fp = fingerprint(Path(output_dir), Path(input_dir))
    report = json.loads((Path(output_dir) / "report.json").read_text())
    path = golden_path(name, numeric_class(report))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(collapse(fp), indent=1, sort_keys=True) + "\n")
    return path


def check_unchanged(name: str, output_dir: Path, input_dir: Path) -> str:
    """Compare a run's outputs with the golden ``name``; returns what was compared (a line for the
    log) and raises AssertionError listing the differences.

    Exact when a golden of this run's numeric class exists; otherwise against another class's
    golden without the network's arithmetic (:func:`compare`). No golden at all fails.
    """
    output_dir, input_dir = Path(output_dir), Path(input_dir)
    report = json.loads((output_dir / "report.json").read_text())
    numeric = numeric_class(report)
    if os.environ.get("BRATS_RECORD_GOLDEN") == "1":
        return f"recorded {record(name, output_dir, input_dir)}"
    after = fingerprint(output_dir, input_dir)
    own = golden_path(name, numeric)
    others = sorted(GOLDEN_DIR.glob(f"{name}.*.json"))
    if not own.exists() and not others:
        raise AssertionError(f"no golden fingerprint {name}.*.json in {GOLDEN_DIR}")
    golden = own if own.exists() else others[0]
    before = json.loads(golden.read_text())
    diffs = compare(after, before, exact=own.exists())
    assert not diffs, f"{name}: {len(diffs)} difference(s) from {golden.name}:\n" + "\n".join(diffs[:40])
    kind = "exact" if own.exists() else f"without the network's arithmetic ({numeric} has no golden)"
    return f"{name}: unchanged against {golden.name} ({kind})"


def main(argv: list[str]) -> int:
    if len(argv) != 4 or argv[0] != "record":
        sys.stderr.write("usage: python -m tests.output_fingerprint record NAME OUTPUT_DIR INPUT_DIR\n")
        return 2
    print(record(argv[1], Path(argv[2]), Path(argv[3])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
