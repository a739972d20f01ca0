"""Application settings: paths from the MAP contract, behaviour from ``app.yaml`` / env.

Precedence (highest first): command line (``-i/-o/-m/-w``), ``HOLOSCAN_*`` environment
variables (both resolved by the SDK's ``AppContext``), then ``BRATS_*`` environment
variables for the app's own settings, then the defaults below.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

APP_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class AppSettings:
    input_dir: Path
    output_dir: Path
    model_dir: Path
    work_dir: Path
    rules_path: Path
    engine: str
    seed: int
    triton_server: str

    @classmethod
    def from_context(cls, app_context: Any) -> "AppSettings":
        work = app_context.workdir or os.environ.get("HOLOSCAN_WORKDIR") or ""
        output_dir = Path(app_context.output_path).resolve()
        return cls(
            input_dir=Path(app_context.input_path).resolve(),
            output_dir=output_dir,
            model_dir=Path(app_context.model_path).resolve(),
            work_dir=Path(work).resolve() if work else output_dir.parent / ".brats_workdir",
            rules_path=Path(os.environ.get("BRATS_SELECTION_RULES", APP_DIR / "modality_rules.json")),
            engine=os.environ.get("BRATS_ENGINE", "auto"),
            seed=int(os.environ.get("BRATS_SEED", "0")),
            triton_server=app_context.triton_server_netloc or "",
        )

    def describe(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}
