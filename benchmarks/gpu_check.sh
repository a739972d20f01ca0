#!/usr/bin/env bash
# The GPU measurement as one command: no network, no installs.
#   bash benchmarks/gpu_check.sh --out DIR                    # on a CUDA machine (~7 min budget)
#   bash benchmarks/gpu_check.sh --out DIR --device cpu --quick   # the same code, tiny, on the CPU
# Other options go to `python -m benchmarks.gpu_check` (see its --help).
#
# Python: .venv's when present, else the machine's python3 (a GPU image with torch, numpy, onnx).
# What such an image lacks travels beside the repository in .gpu-carry/ (made by
# `bash benchmarks/stage_gpu_carry.sh`): pure-Python wheels, imported from their zip files or,
# for hf-deepali, from the unpacked wheel (nothing is installed), and the shared weights and one
# case (used when BRATS_SHARED is unset and ../shared is absent).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${GPU_CHECK_PYTHON:-python3}"
[ -z "${GPU_CHECK_PYTHON:-}" ] && [ -x .venv/bin/python ] && PY=.venv/bin/python
CARRY="${GPU_CARRY:-.gpu-carry}"
if [ -d "$CARRY/wheels" ]; then
  # A wheel file, or a wheel unpacked into a folder (a namespace package such as hf-deepali's
  # `deepali` cannot be imported from a zip without directory entries).
  for wheel in "$CARRY"/wheels/*.whl "$CARRY"/wheels/*/; do
    [ -e "$wheel" ] || continue
    wheel="${wheel%/}"
    # Only what this Python lacks: a carried wheel must never shadow an installed package. The
    # packages a wheel holds are read from it (hf_deepali-*.whl holds `deepali`, not `hf_deepali`).
    if ! "$PY" - "$wheel" 2>/dev/null <<'EOF'
import importlib.util, os, sys, zipfile
p = sys.argv[1]
names = zipfile.ZipFile(p).namelist() if os.path.isfile(p) else os.listdir(p)
tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
tops = {t[:-3] if t.endswith(".py") else t for t in tops}
sys.exit(0 if any(t.isidentifier() and importlib.util.find_spec(t) for t in tops) else 1)
EOF
    then
      PYTHONPATH="$PWD/$wheel${PYTHONPATH:+:$PYTHONPATH}"
    fi
  done
fi
if [ -z "${BRATS_SHARED:-}" ] && [ ! -d ../shared ] && [ -d "$CARRY/shared" ]; then
  export BRATS_SHARED="$PWD/$CARRY/shared"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$PY" -m benchmarks.gpu_check "$@"
