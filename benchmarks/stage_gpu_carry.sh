#!/usr/bin/env bash
# Stage .gpu-carry/ for a GPU machine that has torch, numpy, scipy, matplotlib and onnx but no
# network: the pure-Python wheels benchmarks/gpu_check.py needs beyond those (MONAI for the
# metrics, nibabel to read NIfTI, hf-deepali for the registration; no SimpleITK: its 52.7 MB
# wheel does not fit the carry), the nine networks' original weights and one BraTS case.
# Run here (PyPI reachable); ~24 MB; .gpu-carry/ is git-ignored (derived from ../shared).
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
# hf-deepali: the GPU registration's mutual information (registration_torch_core). Its mi_loss
# imports torch, numpy, packaging and typing_extensions only (none of the wheel's declared
# pandas / dacite / ruamel.yaml / deprecation). Unpacked, not imported from the zip: `deepali`
# is a namespace package (no __init__.py) and the wheel has no directory entries, which Python
# 3.11's zipimport needs to find one.
python3 -m pip download -q --no-deps --only-binary=:all: -d "$OUT/wheels" "$(grep -E '^hf-deepali==' requirements.txt)"
for whl in "$OUT"/wheels/hf_deepali-*.whl; do
  python3 -m zipfile -e "$whl" "${whl%.whl}" && rm "$whl"
done
cp "$SHARED"/models/brats17-cascade/*.npz "$SHARED"/models/brats17-cascade/README.md "$SHARED"/models/brats17-cascade/LICENSE.txt \
  "$OUT/shared/models/brats17-cascade/"
cp -r "$SHARED/data/brats18/$CASE" "$OUT/shared/data/brats18/"
du -sh "$OUT"
