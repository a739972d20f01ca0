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
                          capture_output=True, text=True)
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
])
def test_data_flows_one_way(package: str, forbidden: set[str]) -> None:
    offenders = {str(p.relative_to(REPO_ROOT)): sorted(_imported_packages(p) & forbidden)
                 for p in (REPO_ROOT / package).rglob("*.py") if _imported_packages(p) & forbidden}
    assert offenders == {}


FIRST_PARTY = {"app", "operators", "engines", "benchmarks", "samples", "tests"}
#: The limit a module of the product may grow to before it is split by concept.
MAX_MODULE_LINES = 450


def test_no_product_module_is_over_the_size_limit() -> None:
    sizes = {str(p.relative_to(REPO_ROOT)): len(p.read_text().splitlines())
             for package in ("app", "operators", "engines") for p in (REPO_ROOT / package).rglob("*.py")}
    assert {p: n for p, n in sizes.items() if n > MAX_MODULE_LINES} == {}


def _private_uses(path: Path) -> list[str]:
    """``from first_party import _name`` and ``alias._name`` where alias is a first-party module."""
    tree = ast.parse(path.read_text())
    aliases: set[str] = set()
    found: list[str] = []

    def private(name: str) -> bool:
        return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases |= {(a.asname or a.name.split(".")[0]) for a in node.names if a.name.split(".")[0] in FIRST_PARTY}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in FIRST_PARTY:
            for a in node.names:
                if private(a.name):
                    found.append(f"from {node.module} import {a.name}")
                else:
                    aliases.add(a.asname or a.name)  # may be a module (from samples import make_study as ms)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and private(node.attr) and isinstance(node.value, ast.Name)
                and node.value.id in aliases):
            found.append(f"{node.value.id}.{node.attr}")
    return sorted(set(found))


def test_no_private_name_is_used_across_modules() -> None:
    """A name another module needs is public. Tests are left out: a unit test may reach into the
    private parts of what it tests."""
    offenders = {str(p.relative_to(REPO_ROOT)): _private_uses(p)
                 for package in ("app", "operators", "engines", "benchmarks", "samples")
                 for p in (REPO_ROOT / package).rglob("*.py") if _private_uses(p)}
    assert offenders == {}
