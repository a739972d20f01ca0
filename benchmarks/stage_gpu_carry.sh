#!/usr/bin/env bash
# Stage .gpu-carry/ for a GPU machine that has torch, numpy, scipy, matplotlib and onnx but no
# network (benchmarks/gpu_carry.py: the image's packages, the 64 MiB limit, the unpacking there):
#   wheels/   what benchmarks/gpu_check.py and the stages (python -m app.direct) need beyond the
#             image: MONAI (metrics), nibabel (NIfTI), hf-deepali (the GPU registration's mutual
#             information), pydicom and highdicom as downloaded; SimpleITK's wheel (52.7 MB) as
#             an xz tarball of its unpacked files (28.9 MB), which is what fits
#   shared/   the nine networks' original weights and one BraTS case
# gpu_check.sh unpacks, there, only what that Python lacks. Run here (PyPI reachable); ~2 min
# (the xz); ends by counting what a device call carrying it sends, and fails over 64 MiB.
# .gpu-carry/ is git-ignored (derived from ../shared).
# Usage: bash benchmarks/stage_gpu_carry.sh [case id]      (GPU_CARRY=DIR: another folder)
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="${BRATS_SHARED:-$(cd .. && pwd)/shared}"
CASE="${1:-Brats18_TCIA01_201_1}"
OUT="${GPU_CARRY:-.gpu-carry}"
rm -rf "$OUT"
mkdir -p "$OUT/wheels" "$OUT/shared/models/brats17-cascade" "$OUT/shared/data/brats18"
# Versions pinned in requirements.txt; all pure Python (py3-none-any).
# hf-deepali: its mi_loss imports torch, numpy, packaging and typing_extensions only (none of
# the wheel's declared pandas / dacite / ruamel.yaml / deprecation).
for req in $(grep -E '^(monai|nibabel|hf-deepali|pydicom|highdicom)==' requirements.txt); do
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$OUT/wheels" "$req"
done
# SimpleITK: one abi3 wheel for CPython >= 3.11 on x86-64 Linux (the GPU image has 3.12).
SITK="$(grep -E '^SimpleITK==' requirements.txt)"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$TMP" "$SITK"
python3 -m zipfile -e "$TMP"/simpleitk-*.whl "$TMP/unpacked"
(cd "$TMP/unpacked" && tar -cf - -- *) | XZ_OPT="-6 -T0" xz > "$OUT/wheels/simpleitk-${SITK#*==}.tar.xz"
ls "$TMP/unpacked" > "$OUT/wheels/simpleitk-${SITK#*==}.tar.xz.top_level"  # what it holds, without decompressing it
cp "$SHARED"/models/brats17-cascade/*.npz "$SHARED"/models/brats17-cascade/README.md "$SHARED"/models/brats17-cascade/LICENSE.txt \
  "$OUT/shared/models/brats17-cascade/"
cp -r "$SHARED/data/brats18/$CASE" "$OUT/shared/data/brats18/"
du -sh "$OUT"/wheels/* "$OUT"
python3 -m benchmarks.gpu_carry size --carry "$OUT"
