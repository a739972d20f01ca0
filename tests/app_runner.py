"""Run the application the way users do: a separate process, ``python -m app``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.clinical_profiles import holoscan_stack

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class AppRun:
    returncode: int
    log: str
    output_dir: Path

    @property
    def report(self) -> dict[str, Any]:
        return json.loads((self.output_dir / "report.json").read_text())

    def files(self) -> list[str]:
        return sorted(p.name for p in self.output_dir.iterdir())


def run_app(input_dir: Path, output_dir: Path, model_dir: Path, *, env: dict[str, str] | None = None,
            extra_args: list[str] | None = None, timeout: float = 900, cwd: Path | None = None,
            entry: list[str] | None = None) -> AppRun:
    """Run ``python -m app -i .. -o .. -m ..`` in a subprocess; return its exit code and log."""
    cmd = [sys.executable, *(entry or ["-m", "app"])]
    if input_dir is not None:
        cmd += ["-i", str(input_dir), "-o", str(output_dir), "-m", str(model_dir)]
    cmd += extra_args or []
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run(
        cmd, cwd=cwd or REPO_ROOT, env=full_env, capture_output=True, text=True, timeout=timeout,
        preexec_fn=raise_stack_limit,
    )
    return AppRun(proc.returncode, proc.stdout + proc.stderr, Path(output_dir))


#: The 32 MB stack Holoscan asks for, in each app subprocess.
raise_stack_limit = holoscan_stack
