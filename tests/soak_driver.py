"""One process, many studies: run the application's entry point once per study folder and
print the process's RSS after each run (the in-process half of the soak, ``test_soak.py``).

    python -m tests.soak_driver --models <models dir> --out <folder> <study dir> [<study dir> ...]

Each run is exactly ``python -m app -i <study> -o <out>/out_NN -m <models>`` (the Holoscan
application, composed and run afresh; engines, registration, SEG writer, report), but all
inside this one interpreter. After each run: ``gc.collect()``, then one line on stdout::

    SOAK {"study": i, "exit_code": rc, "rss_bytes": VmRSS, "hwm_bytes": VmHWM, "seconds": s}

Runs in its own process so that nothing of the test harness (pytest's captured output and
log records) lives in the address space being measured.
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path


def _status_bytes(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path, help="out_NN folders are made here")
    parser.add_argument("studies", nargs="+", type=Path)
    args = parser.parse_args(argv)

    from app.main import main as app_main

    for i, study in enumerate(args.studies):
        t0 = time.perf_counter()
        out = args.out / f"out_{i:02d}"
        rc = app_main(["app", "-i", str(study), "-o", str(out), "-m", str(args.models)])
        gc.collect()
        record = {"study": i, "exit_code": rc, "rss_bytes": _status_bytes("VmRSS"),
                  "hwm_bytes": _status_bytes("VmHWM"), "seconds": round(time.perf_counter() - t0, 1)}
        print("SOAK " + json.dumps(record), flush=True)
        if rc != 0:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
