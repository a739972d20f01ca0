# Sourced by the scripts that run on a GPU machine (gpu_check.sh, gpu_dropout.sh), from the
# repository's root: PY, the Python to run (GPU_CHECK_PYTHON, else .venv's when present, else
# the machine's python3: a GPU image with torch, numpy, onnx), and PYTHONPATH with the packages
# that Python lacks from the carried folder $CARRY (its wheels/, made by a stage_gpu_*.sh
# here), extracted outside the tree (GPU_CARRY_SITE, default $TMPDIR/gpu-carry-site) by
# benchmarks/gpu_carry.py; a carried package never shadows an installed one.
PY="${GPU_CHECK_PYTHON:-python3}"
if [ -z "${GPU_CHECK_PYTHON:-}" ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
if [ -d "$CARRY/wheels" ]; then
  EXTRA="$("$PY" -m benchmarks.gpu_carry unpack --carry "$CARRY" --site "${GPU_CARRY_SITE:-${TMPDIR:-/tmp}/gpu-carry-site}")"
  if [ -n "$EXTRA" ]; then PYTHONPATH="$EXTRA${PYTHONPATH:+:$PYTHONPATH}"; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
