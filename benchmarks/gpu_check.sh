#!/usr/bin/env bash
# The GPU measurement as one command: no network, no installs.
#   bash benchmarks/gpu_check.sh --out DIR                    # on a CUDA machine (~7 min budget)
#   bash benchmarks/gpu_check.sh --out DIR --device cpu --quick   # the same code, tiny, on the CPU
# Other options go to `python -m benchmarks.gpu_check` (see its --help).
#
# Python: .venv's when present, else the machine's python3 (a GPU image with torch, numpy, onnx).
# What such an image lacks travels beside the repository in .gpu-carry/ (made by
# `bash benchmarks/stage_gpu_carry.sh`): archives of the packages, extracted outside the tree
# (GPU_CARRY_SITE, default $TMPDIR/gpu-carry-site) only where this Python lacks them
# (benchmarks/gpu_carry.py), and the shared weights and one case (used when BRATS_SHARED is
# unset and ../shared is absent).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${GPU_CHECK_PYTHON:-python3}"
[ -z "${GPU_CHECK_PYTHON:-}" ] && [ -x .venv/bin/python ] && PY=.venv/bin/python
CARRY="${GPU_CARRY:-.gpu-carry}"
if [ -d "$CARRY/wheels" ]; then
  SITE="${GPU_CARRY_SITE:-${TMPDIR:-/tmp}/gpu-carry-site}"
  EXTRA="$("$PY" -m benchmarks.gpu_carry unpack --carry "$CARRY" --site "$SITE")"
  if [ -n "$EXTRA" ]; then PYTHONPATH="$EXTRA${PYTHONPATH:+:$PYTHONPATH}"; fi
fi
if [ -z "${BRATS_SHARED:-}" ] && [ ! -d ../shared ] && [ -d "$CARRY/shared" ]; then
  export BRATS_SHARED="$PWD/$CARRY/shared"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$PY" -m benchmarks.gpu_check "$@"
