#!/usr/bin/env bash
# Stage .gpu-carry-dropout/ for issue 30's training on a GPU machine (benchmarks/gpu_dropout.sh):
#   cases/    the four selection cases the students are trained on (NIfTI as shared)
#   teacher/  their teachers, the four-sequence WT stage computed here once (OpenVINO folded
#             FP32, ~1 min a case on 2 cores), stored as uint8 (within 0.002 of the probability;
#             float32 they are 53 MB, uint8 1.4 MB)
#   weights/  the shipped WT networks' weights the students start from
#   wheels/   nibabel (the cases' reader)
# Run here (PyPI reachable); ends by counting what a device call carrying it sends, and fails over
# 64 MiB. Git-ignored (derived from ../shared).
# Usage: bash benchmarks/stage_gpu_dropout.sh        (GPU_DROPOUT_CARRY=DIR: another folder)
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="${BRATS_SHARED:-$(cd .. && pwd)/shared}"
OUT="${GPU_DROPOUT_CARRY:-.gpu-carry-dropout}"
CASES="Brats18_TCIA01_201_1 Brats18_TCIA02_135_1 Brats18_TCIA03_265_1 Brats18_TCIA13_623_1"  # README's selection cases
PY=.venv/bin/python
rm -rf "$OUT"
mkdir -p "$OUT/wheels" "$OUT/cases" "$OUT/weights" "$OUT/teacher"
python3 -m pip download -q --no-deps --only-binary=:all: -d "$OUT/wheels" "$(grep -E '^nibabel==' requirements.txt)"
for c in $CASES; do cp -r "$SHARED/data/brats18/$c" "$OUT/cases/"; done
cp "$SHARED"/models/brats17-cascade/msnet_wt32*_20000.npz "$SHARED"/models/brats17-cascade/LICENSE.txt "$OUT/weights/"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
# The teachers: the training's own loader with no step to take (the students it writes are copies).
"$PY" -m engines.model.missing.train_dropout --cases "$OUT"/cases/* --out "$TMP/train" \
  --teacher-cache "$OUT/teacher" --teacher-u8 --weights "$OUT/weights" --steps 0
du -sh "$OUT"/* "$OUT"
python3 -m benchmarks.gpu_carry size --carry "$OUT"
