#!/usr/bin/env bash
# The test suite. Installs what it needs (.venv, dicom3tools, orthanc, and the viewer test's
# orthanc-dicomweb, chromium, nginx-light, OHIF and Playwright: scripts/bootstrap.sh --viewer),
# then runs pytest. Default: everything but the slow tests (< 15 min on 2 cores).
# `bash test.sh -m slow` runs the slow ones; `-m "not slow and not viewer"` leaves the browser
# test out (and its install); other arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
ulimit -s 32768 2>/dev/null || true
case " $* " in *"not viewer"*) bash scripts/bootstrap.sh --system ;; *) bash scripts/bootstrap.sh --viewer ;; esac
case " $* " in *" -m "*) ;; *) set -- -m "not slow" "$@" ;; esac  # slow tests only when asked
exec .venv/bin/python -m pytest "$@"
