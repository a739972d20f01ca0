#!/usr/bin/env bash
# The main job on a sample study: build a DICOM study from a shared BraTS case, convert the
# shared weights into the model folder, run the app, print where the outputs are.
# Usage: bash run.sh [BraTS case id] [extra make_study args, e.g. --drop t1 --misalign 3]
set -euo pipefail
cd "$(dirname "$0")"
ulimit -s 32768 2>/dev/null || true   # Holoscan recommends a 32 MB stack
bash scripts/bootstrap.sh

SHARED="${BRATS_SHARED:-$(cd .. && pwd)/shared}"
CASE="${1:-Brats18_TCIA01_201_1}"; shift || true
STUDY="studies/${CASE}"
MODELS="models/brats17-cascade"
OUT="output/${CASE}"

if [ ! -f "${MODELS}/manifest.json" ]; then
  .venv/bin/python -m engines.prepare --out "${MODELS}" --weights "${SHARED}/models/brats17-cascade"
fi
rm -rf "${STUDY}"
.venv/bin/python -m samples.make_study "${SHARED}/data/brats18/${CASE}" "${STUDY}" "$@"
.venv/bin/python -m app -i "${STUDY}/dicom" -o "${OUT}" -m "${MODELS}"

echo
echo "Input study : ${STUDY}/dicom"
echo "Outputs     : ${OUT}"
ls -l "${OUT}"
