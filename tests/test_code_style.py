"""The code passes ruff as configured in pyproject.toml (pyflakes, pycodestyle, import order,
bugbear), and the layering the package docstrings state: app -> operators -> engines."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed (requirements-dev.txt pins it; bash test.sh installs it)")
    proc = subprocess.run([ruff, "check", "--output-format", "concise", "."], cwd=REPO_ROOT,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize(("package", "forbidden"), [
    ("engines", {"app", "operators", "benchmarks", "samples", "tests"}),
    ("operators", {"app", "benchmarks", "samples", "tests"}),
    ("app", {"benchmarks", "samples", "tests"}),
])  # fmt: skip
def test_data_flows_one_way(package: str, forbidden: set[str]) -> None:
    offenders = {str(p.relative_to(REPO_ROOT)): sorted(_imported_packages(p) & forbidden)
                 for p in (REPO_ROOT / package).rglob("*.py") if _imported_packages(p) & forbidden}  # fmt: skip
    assert offenders == {}
