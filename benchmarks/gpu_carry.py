"""What travels to a GPU machine beside the repository, and how the GPU image uses it.

The GPU machines receive the working tree and the carried folders, at most 64 MiB in all
(``/work/.library/device/README.md``), and can fetch nothing. Their image has torch, NumPy,
SciPy, scikit-image, Pillow, matplotlib, ONNX (:data:`GPU_IMAGE_DISTRIBUTIONS`), and none of
SimpleITK, pydicom or highdicom, which the stages need. ``bash benchmarks/stage_gpu_carry.sh``
puts them in ``.gpu-carry/wheels``: pure-Python wheels as downloaded, and SimpleITK's wheel
(52.7 MB, mostly one shared library) repacked as an xz tarball of its unpacked files (28.9 MB).

There, :func:`unpack` extracts each archive whose packages the interpreter lacks into a site
folder outside the tree and gives the folders for ``PYTHONPATH``; an archive is never put in
front of an installed package. :func:`travelling_size` counts what a device call sends.

Standard library only: this runs on the GPU image before anything is unpacked.

Usage::

    python -m benchmarks.gpu_carry size [--carry .gpu-carry]    # exit 1 over the limit
    python -m benchmarks.gpu_carry unpack --carry .gpu-carry --site /tmp/gpu-carry-site
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["CARRY_LIMIT_BYTES", "GPU_IMAGE_DISTRIBUTIONS", "RUNNER_CARRIED", "archive_packages",
           "travelling_size", "unpack", "main"]

REPO = Path(__file__).resolve().parents[1]
#: What one device call may send: the working tree (tracked and untracked-not-ignored files)
#: and the carried folders together.
CARRY_LIMIT_BYTES = 64 * 2**20
#: Distributions of the GPU image ("cuda"), as /work/.library/device/KINDS.md lists them
#: (read 2026-11-17), normalised as pip does (lower case, ``-``).
GPU_IMAGE_DISTRIBUTIONS = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings
cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils
execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py
hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax
jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning
lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions
nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti
nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand
nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13
nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas
pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil
pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest
pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson
six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore
threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric
torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect
urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())
#: What the stages (``python -m app.direct``) need beyond the image; each travels as an archive
#: made by ``stage_gpu_carry.sh`` (pydicom's compressed-pixel decoders are left behind: the
#: studies the GPU check makes are uncompressed, and pydicom and highdicom import without them).
RUNNER_CARRIED = ("simpleitk", "pydicom", "highdicom")


def archive_packages(archive: Path) -> set[str]:
    """Top-level importable names an archive holds (``*.whl`` or ``*.tar.xz`` of an unpacked
    wheel): its first path components less ``*.dist-info`` / ``*.data``, ``.py`` dropped. For a
    tarball, the list ``stage_gpu_carry.sh`` wrote beside it (``<archive>.top_level``) when
    present: listing an xz stream decompresses all of it."""
    listed = archive.with_name(archive.name + ".top_level")
    if archive.name.endswith(".whl"):
        names = zipfile.ZipFile(archive).namelist()
    elif listed.is_file():
        names = listed.read_text().split()
    else:
        with tarfile.open(archive) as tar:
            names = tar.getnames()
    tops = {n.removeprefix("./").split("/")[0] for n in names}
    tops = {t.removesuffix(".py") for t in tops if not t.endswith((".dist-info", ".data"))}
    return {t for t in tops if t.isidentifier()}


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def unpack(carry: Path, site: Path) -> list[Path]:
    """Extract each archive in ``carry/wheels`` whose packages this interpreter cannot import
    into ``site/<archive name>`` (once: a stamp records the archive's size and time) and return
    those folders, in name order, for ``PYTHONPATH``. An archive none of whose packages is
    missing is left alone: a carried package never shadows an installed one."""
    out = []
    for archive in sorted((carry / "wheels").glob("*")):
        if not archive.name.endswith((".whl", ".tar.xz")):
            continue
        if any(_importable(t) for t in archive_packages(archive)):
            continue
        dest = site / archive.name
        stat = archive.stat()
        stamp = dest / ".unpacked"
        expected = f"{stat.st_size} {stat.st_mtime_ns}"
        if not (stamp.is_file() and stamp.read_text() == expected):
            dest.mkdir(parents=True, exist_ok=True)
            if archive.name.endswith(".whl"):
                zipfile.ZipFile(archive).extractall(dest)
            else:
                with tarfile.open(archive) as tar:
                    tar.extractall(dest, filter="data")
            stamp.write_text(expected)
        out.append(dest)
    return out


def _tree_files(repo: Path) -> list[Path]:
    """What a device call sends of the checkout: tracked files and untracked ones git does not
    ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=repo, capture_output=True, check=True).stdout
    return [repo / p for p in listed.decode().split("\0") if p]


def _size(paths: Iterable[Path]) -> int:
    total = 0
    for p in paths:
        if p.is_symlink():
            continue  # a link travels as a link
        if p.is_file():
            total += p.stat().st_size
        elif p.is_dir():
            total += _size(p.iterdir())
    return total


def travelling_size(repo: Path = REPO, carried: Sequence[Path] = ()) -> dict[str, int]:
    """Bytes a device call sends: ``working tree`` and each carried path, and ``total``."""
    sizes = {"working tree": _size(_tree_files(repo))}
    for c in carried:
        sizes[str(c)] = _size([repo / c])
    sizes["total"] = sum(sizes.values())
    return sizes


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_carry", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    size = sub.add_parser("size", help="what a device call carrying these paths sends; exit 1 over 64 MiB")
    size.add_argument("--carry", type=Path, action="append", default=[], help="a carried path (repeatable)")
    up = sub.add_parser("unpack", help="extract the archives this Python lacks; print the PYTHONPATH entries")
    up.add_argument("--carry", type=Path, required=True)
    up.add_argument("--site", type=Path, required=True)
    args = p.parse_args(argv)
    if args.command == "unpack":
        print(os.pathsep.join(str(d) for d in unpack(args.carry, args.site)))
        return 0
    sizes = travelling_size(REPO, args.carry)
    print(json.dumps({k: round(v / 2**20, 2) for k, v in sizes.items()} | {"limit": CARRY_LIMIT_BYTES / 2**20}))
    if sizes["total"] > CARRY_LIMIT_BYTES:
        print(f"over the device's limit: {sizes['total'] / 2**20:.1f} MiB > 64 MiB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
