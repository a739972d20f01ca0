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

import importlib.metadata
import os
import subprocess
import sys
import sysconfig
from collections.abc import Iterable, Sequence
from pathlib import Path

from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
SITE_PACKAGES = Path(sysconfig.get_paths()["purelib"])


def link_distributions(names: Iterable[str], dest: Path, site: Path = SITE_PACKAGES) -> set[str]:
    """Link the top-level files and folders of each distribution of ``names`` installed in
    ``site`` into ``dest`` (created); returns the names found (as ``packaging`` canonicalises
    them). Top level: the first component of each file its ``RECORD`` lists (its packages,
    modules, ``*.libs`` folders, its dist-info)."""
    dest.mkdir(parents=True, exist_ok=True)
    wanted = {canonicalize_name(n) for n in names}
    found = set()
    for dist in importlib.metadata.distributions(path=[str(site)]):
        name = canonicalize_name(dist.metadata["Name"])
        if name not in wanted:
            continue
        found.add(name)
        for top in {f.parts[0] for f in dist.files or () if f.parts and f.parts[0] != ".."}:
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
