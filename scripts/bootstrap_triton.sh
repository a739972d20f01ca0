#!/usr/bin/env bash
# Install the Triton Inference Server environment used by the Triton tests and benchmark,
# idempotently: .venv-triton with requirements-triton.txt (nvidia-pytriton ships the
# `tritonserver` binary, its Python backend and the per-Python-version backend stubs).
# Re-installed when requirements-triton.txt changes (hash stamp). Prints nothing when
# already up to date.
# Usage: bash scripts/bootstrap_triton.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# The same interpreter as .venv (the Python-backend stub embeds that Python's libpython).
PY="${PYTHON:-python3}"
if [ -x .venv/bin/python ]; then
  PY=$(.venv/bin/python -c 'import sys, os; print(os.path.join(sys.base_prefix, "bin", "python3"))')
fi
stamp=".venv-triton/.requirements.sha256"
want=$(sha256sum requirements-triton.txt | cut -d' ' -f1)
if [ ! -x .venv-triton/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[bootstrap-triton] creating .venv-triton (nvidia-pytriton: Triton server + Python backend)"
  [ -x .venv-triton/bin/python ] || "$PY" -m venv .venv-triton
  .venv-triton/bin/python -m pip install -q --upgrade "pip>25.1"
  .venv-triton/bin/python -m pip install -q -r requirements-triton.txt
  test -x .venv-triton/lib/python*/site-packages/pytriton/tritonserver/bin/tritonserver
  echo "$want" > "$stamp"
fi
