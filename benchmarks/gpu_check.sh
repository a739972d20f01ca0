#!/usr/bin/env bash
# The GPU measurement as one command: no network, no installs.
#   bash benchmarks/gpu_check.sh --out DIR                    # on a CUDA machine (~7 min budget)
#   bash benchmarks/gpu_check.sh --out DIR --device cpu --quick   # the same code, tiny, on the CPU
# Other options go to `python -m benchmarks.gpu_check` (see its --help).
#
# Python and the carried packages: benchmarks/gpu_python.sh. What a GPU image lacks travels
# beside the repository in .gpu-carry/ (`bash benchmarks/stage_gpu_carry.sh`): the packages,
# and the shared weights and one case (used when BRATS_SHARED is unset and ../shared is absent).
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY="${GPU_CARRY:-.gpu-carry}"
source benchmarks/gpu_python.sh
if [ -z "${BRATS_SHARED:-}" ] && [ ! -d ../shared ] && [ -d "$CARRY/shared" ]; then
  export BRATS_SHARED="$PWD/$CARRY/shared"
fi
exec "$PY" -m benchmarks.gpu_check "$@"
