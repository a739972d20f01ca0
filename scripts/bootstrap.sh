#!/usr/bin/env bash
# Install everything the project needs, idempotently:
#   - Debian packages (dicom3tools for dciodvfy, orthanc for the PACS tests) when asked;
#   - the Python stack into .venv (re-installed when requirements change);
#   - with --viewer, the browser viewer test's stack (tests/test_viewer_ohif.py): Debian's
#     orthanc-dicomweb, chromium and nginx-light, OHIF's prebuilt viewer from npm
#     (@ohif/app, pinned below, cached and unpacked under the git-ignored .viewer/) and
#     requirements-viewer.txt (Playwright, driving Debian's chromium). Offline after that.
# Usage: bash scripts/bootstrap.sh [--system] [--viewer]
set -euo pipefail
cd "$(dirname "$0")/.."

OHIF_VERSION="3.13.2"
OHIF_INTEGRITY="sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="

want_system=0
want_viewer=0
for arg in "$@"; do
  case "$arg" in
    --system) want_system=1 ;;
    --viewer) want_system=1; want_viewer=1 ;;
    *) echo "[bootstrap] unknown option: $arg (use --system, --viewer)" >&2; exit 2 ;;
  esac
done

if [ "$want_system" = 1 ]; then
  missing=()
  command -v dciodvfy >/dev/null 2>&1 || missing+=(dicom3tools)
  [ -x /usr/sbin/Orthanc ] || missing+=(orthanc)
  if [ "$want_viewer" = 1 ]; then
    [ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing+=(orthanc-dicomweb)
    [ -x /usr/bin/chromium ] || missing+=(chromium)
    [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    echo "[bootstrap] apt-get install ${missing[*]}"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # The Debian package may start a system Orthanc on 4242/8042; tests run their own.
    (command -v service >/dev/null && $SUDO service orthanc stop >/dev/null 2>&1) || true
    # Likewise nginx on port 80; the viewer test runs its own on a free loopback port.
    (command -v service >/dev/null && $SUDO service nginx stop >/dev/null 2>&1) || true
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

if [ "$want_viewer" = 1 ]; then
  # OHIF's prebuilt viewer: the npm tarball, kept in .viewer/ (git-ignored) and checked against
  # the registry's sha512, then unpacked once; nothing is fetched again while it is there.
  tgz=".viewer/ohif-app-$OHIF_VERSION.tgz"
  dist=".viewer/ohif-app-$OHIF_VERSION/dist"
  check_tgz() {
    [ -f "$tgz" ] && [ "$(python3 -c 'import base64, hashlib, sys; print("sha512-" + base64.b64encode(hashlib.sha512(open(sys.argv[1], "rb").read()).digest()).decode())' "$tgz")" = "$OHIF_INTEGRITY" ]
  }
  if ! check_tgz; then
    echo "[bootstrap] fetching @ohif/app@$OHIF_VERSION from the npm registry"
    mkdir -p .viewer
    rm -f "$tgz"
    if command -v npm >/dev/null 2>&1; then
      (cd .viewer && npm pack --silent "@ohif/app@$OHIF_VERSION" >/dev/null)
    else
      curl -fsSL -o "$tgz" "https://registry.npmjs.org/@ohif/app/-/app-$OHIF_VERSION.tgz"
    fi
    check_tgz || { echo "[bootstrap] $tgz does not match $OHIF_INTEGRITY" >&2; exit 1; }
  fi
  if [ ! -f "$dist/index.html" ]; then
    rm -rf ".viewer/ohif-app-$OHIF_VERSION"
    mkdir -p ".viewer/ohif-app-$OHIF_VERSION.tmp"
    tar -xzf "$tgz" -C ".viewer/ohif-app-$OHIF_VERSION.tmp" --strip-components=1
    mv ".viewer/ohif-app-$OHIF_VERSION.tmp" ".viewer/ohif-app-$OHIF_VERSION"
  fi
  vstamp=".venv/.requirements-viewer.sha256"
  vwant=$(sha256sum requirements-viewer.txt | cut -d' ' -f1)
  if [ "$(cat "$vstamp" 2>/dev/null)" != "$vwant" ]; then
    echo "[bootstrap] installing requirements-viewer.txt"
    .venv/bin/python -m pip install -q -r requirements-viewer.txt
    echo "$vwant" > "$vstamp"
  fi
fi
