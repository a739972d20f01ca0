#!/usr/bin/env bash
# The GPU measurement as one command: no network, no installs.
#   bash benchmarks/gpu_check.sh --out DIR                    # on a CUDA machine (~7 min budget)
#   bash benchmarks/gpu_check.sh --out DIR --device cpu --quick   # the same code, tiny, on the CPU
# Other options go to `python -m benchmarks.gpu_check` (see its --help).
#
# Python: .venv's when present, else the machine's python3 (a GPU image with torch, numpy, onnx).
# What such an image lacks travels beside the repository in .gpu-carry/ (made by
# `bash benchmarks/stage_gpu_carry.sh`): pure-Python wheels, imported from their zip files
# (nothing is installed), and the shared weights and one case (used when BRATS_SHARED is unset
# and ../shared is absent).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${GPU_CHECK_PYTHON:-python3}"
[ -z "${GPU_CHECK_PYTHON:-}" ] && [ -x .venv/bin/python ] && PY=.venv/bin/python
CARRY="${GPU_CARRY:-.gpu-carry}"
if [ -d "$CARRY/wheels" ]; then
  for wheel in "$CARRY"/wheels/*.whl; do
    [ -e "$wheel" ] || continue
    module="$(basename "$wheel" | cut -d- -f1)"
    # Only what this Python lacks: a carried wheel must never shadow an installed package.
    if ! "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$module') is None)" 2>/dev/null; then
      PYTHONPATH="$PWD/$wheel${PYTHONPATH:+:$PYTHONPATH}"
    fi
  done
fi
if [ -z "${BRATS_SHARED:-}" ] && [ ! -d ../shared ] && [ -d "$CARRY/shared" ]; then
  export BRATS_SHARED="$PWD/$CARRY/shared"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$PY" -m benchmarks.gpu_check "$@"
