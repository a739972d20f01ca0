#!/usr/bin/env bash
# Stage .gpu-carry/ for a GPU machine that has torch, numpy, scipy, matplotlib and onnx but no
# network: the pure-Python wheels benchmarks/gpu_check.py needs beyond those (MONAI for the
# metrics, nibabel to read NIfTI), the nine networks' original weights and one BraTS case.
# Run here (PyPI reachable); ~22 MB; .gpu-carry/ is git-ignored (derived from ../shared).
# Usage: bash benchmarks/stage_gpu_carry.sh [case id]
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="${BRATS_SHARED:-$(cd .. && pwd)/shared}"
CASE="${1:-Brats18_TCIA01_201_1}"
OUT=.gpu-carry
rm -rf "$OUT"
mkdir -p "$OUT/wheels" "$OUT/shared/models/brats17-cascade" "$OUT/shared/data/brats18"
# Versions pinned in requirements.txt; py3-none-any wheels import from the zip file.
for req in $(grep -E '^(monai|nibabel)==' requirements.txt); do
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$OUT/wheels" "$req"
done
cp "$SHARED"/models/brats17-cascade/*.npz "$SHARED"/models/brats17-cascade/README.md "$SHARED"/models/brats17-cascade/LICENSE.txt \
  "$OUT/shared/models/brats17-cascade/"
cp -r "$SHARED/data/brats18/$CASE" "$OUT/shared/data/brats18/"
du -sh "$OUT"
