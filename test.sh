#!/usr/bin/env bash
# The test suite. Installs what it needs (.venv, dicom3tools, orthanc), then runs pytest.
# Default: everything but the slow tests (< 15 min on 2 cores). `bash test.sh -m slow` runs
# the slow ones; other arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
ulimit -s 32768 2>/dev/null || true
bash scripts/bootstrap.sh --system
case " $* " in *" -m "*) ;; *) set -- -m "not slow" "$@" ;; esac  # slow tests only when asked
exec .venv/bin/python -m pytest "$@"
