#!/usr/bin/env bash
# Install everything the project needs, idempotently:
#   - Debian packages (dicom3tools for dciodvfy, orthanc for the PACS tests) when asked;
#   - the Python stack into .venv (re-installed when requirements change).
# Usage: bash scripts/bootstrap.sh [--system]
set -euo pipefail
cd "$(dirname "$0")/.."

want_system=0
[ "${1:-}" = "--system" ] && want_system=1

if [ "$want_system" = 1 ]; then
  missing=()
  command -v dciodvfy >/dev/null 2>&1 || missing+=(dicom3tools)
  [ -x /usr/sbin/Orthanc ] || missing+=(orthanc)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "[bootstrap] apt-get install ${missing[*]}"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # The Debian package may start a system Orthanc on 4242/8042; tests run their own.
    (command -v service >/dev/null && $SUDO service orthanc stop >/dev/null 2>&1) || true
  fi
fi

PY="${PYTHON:-python3}"
stamp=".venv/.requirements.sha256"
want=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[bootstrap] creating .venv and installing requirements (a few minutes the first time)"
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade "pip>25.1"
  .venv/bin/python -m pip install -q -r requirements-dev.txt
  echo "$want" > "$stamp"
fi
