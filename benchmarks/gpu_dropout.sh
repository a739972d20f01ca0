#!/usr/bin/env bash
# Issue 30's training on a GPU machine, as one command: the WT students fine-tuned on the
# cascade's own batches, T1ce+T2 only, from the teachers computed on a CPU and carried in
# .gpu-carry-dropout (bash benchmarks/stage_gpu_dropout.sh). No network, no installs.
#   bash benchmarks/gpu_dropout.sh --out DIR [more train_dropout options; later ones win]
# Writes DIR/wt32md.pt, wt32sgmd.pt, wt32crmd.pt and dropout_manifest.json (or, when
# --max-seconds runs out first, DIR/checkpoint.pt: the same command with it in DIR resumes).
# The students are judged here on the CPU afterwards (README, "WT networks fine-tuned by
# modality dropout").
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY="${GPU_DROPOUT_CARRY:-.gpu-carry-dropout}"
[ -d "$CARRY/teacher" ] || { echo "no $CARRY: run bash benchmarks/stage_gpu_dropout.sh first" >&2; exit 2; }
source benchmarks/gpu_python.sh
exec "$PY" -m engines.model.missing.train_dropout --cases "$CARRY"/cases/* --weights "$CARRY/weights" \
  --teacher-cache "$CARRY/teacher" --device cuda --batches cascade --subsets T1ce+T2 --steps 2400 \
  --checkpoint-every 150 --max-seconds 420 --threads 8 "$@"
