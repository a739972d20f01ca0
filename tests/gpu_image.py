"""A stand-in for the GPU image's Python packages, made from this environment.

The GPU machines' image has the distributions :data:`benchmarks.gpu_carry.GPU_IMAGE_DISTRIBUTIONS`
and nothing else; what the project needs beyond them travels. To test that on a machine without
that image, :func:`link_distributions` links, from this interpreter's site-packages, the files
of the named distributions only (read off each one's ``RECORD``) into a folder;
:func:`isolated_python` runs this interpreter without its site-packages (``-S``) and with only
the given folders on ``sys.path``, and :func:`image_venv` makes a virtual environment whose
only packages are that folder's (for scripts that start further processes with
``sys.executable``): a module outside them fails to import, as it would there.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
from collections.abc import Iterable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SITE_PACKAGES = Path(sysconfig.get_paths()["purelib"])


def normalised(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_distributions(site: Path = SITE_PACKAGES) -> dict[str, Path]:
    """``{normalised name: its .dist-info folder}`` of ``site``."""
    return {normalised(d.name[: -len(".dist-info")].rsplit("-", 1)[0]): d for d in site.glob("*.dist-info")}


def link_distributions(names: Iterable[str], dest: Path, site: Path = SITE_PACKAGES) -> set[str]:
    """Link the top-level files and folders of each distribution of ``names`` installed in
    ``site`` into ``dest`` (created); returns the names found. Top level: the first component of
    each path its ``RECORD`` lists (its packages, modules, ``*.libs`` folders, its dist-info)."""
    dest.mkdir(parents=True, exist_ok=True)
    installed = installed_distributions(site)
    found = set()
    for name in {normalised(n) for n in names}:
        info = installed.get(name)
        if info is None:
            continue
        found.add(name)
        record = (info / "RECORD").read_text().splitlines()
        tops = {line.split(",", 1)[0].split("/")[0] for line in record if line and not line.startswith("..")}
        for top in tops:
            if (site / top).exists() and not (dest / top).exists():
                (dest / top).symlink_to(site / top)
    return found


def image_venv(dest: Path, image: Path) -> Path:
    """A virtual environment (no pip) at ``dest`` whose site-packages holds only a ``.pth``
    pointing at ``image``; returns its ``python``."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(dest)], check=True)
    python = dest / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "gpu-image.pth").write_text(f"{image}\n")
    return python


def isolated_python(args: Sequence[str], path: Sequence[Path], *, timeout: float = 900,
                    env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """This interpreter with ``-S`` (no site-packages) and ``PYTHONPATH`` = ``path`` alone, in the
    repository's root."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    full_env |= {"PYTHONPATH": os.pathsep.join(str(p) for p in path), "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-S", *args], cwd=REPO, env=full_env, capture_output=True,
                          text=True, timeout=timeout)
