#!/usr/bin/env bash
# Package the app as a MONAI Application Package (MAP) with holoscan-cli 4.2.0:
#   monai-deploy package <staged app> -c app.yaml -m <models> -t <tag> --platform x86_64 \
#       --source packaging/holoscan-cli-4.2.0-artifacts.json
# The packager copies only the app folder, so a self-contained copy is staged first:
# app/ + operators/ + engines/ inside one folder (runs as `python3 /opt/holoscan/app`), with
# requirements-map.txt as its requirements.txt (the image's Python requirements) and app.yaml.
# The release manifest (--source) ships in packaging/, so nothing is downloaded to plan the
# build (the Docker build itself pulls the base image and the pip packages).
#
# Usage: bash package.sh [-t TAG] [-m MODELS_DIR] [--context-only DIR] [-- more package args]
#   -t TAG              image name[:tag] (default: brats-seg-map:<app.yaml version>)
#   -m MODELS_DIR       model folder from `python -m engines.prepare` (default:
#                       models/brats17-cascade, built from the shared weights when absent)
#   --context-only DIR  write the packager's build context (Dockerfile, map/app.json,
#                       map/pkg.json, app/, models/, pip/requirements.txt) into DIR and stop
#                       before `docker build` (no Docker needed)
set -euo pipefail
cd "$(dirname "$0")"
ROOT="$(pwd)"

die() { echo "package.sh: error: $*" >&2; exit 2; }

TAG=""; MODELS=""; CONTEXT=""; EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    -t|--tag) [ $# -ge 2 ] || die "$1 needs a value"; TAG="$2"; shift 2 ;;
    -m|--models) [ $# -ge 2 ] || die "$1 needs a value"; MODELS="$2"; shift 2 ;;
    --context-only) [ $# -ge 2 ] || die "$1 needs a folder"; CONTEXT="$2"; shift 2 ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

bash scripts/bootstrap.sh >&2
PY="$ROOT/.venv/bin/python"
VERSION="$("$PY" -c 'import yaml,sys; print(yaml.safe_load(open("app.yaml"))["application"]["version"])')"
TAG="${TAG:-brats-seg-map:${VERSION}}"
SOURCE="$ROOT/packaging/holoscan-cli-4.2.0-artifacts.json"

if [ -z "$MODELS" ]; then
  MODELS="models/brats17-cascade"
  if [ ! -f "$MODELS/manifest.json" ]; then
    SHARED="${BRATS_SHARED:-$(cd .. && pwd)/shared}"
    "$PY" -m engines.prepare --out "$MODELS" --weights "$SHARED/models/brats17-cascade" >&2
  fi
fi
[ -f "$MODELS/manifest.json" ] || die "$MODELS is not a model folder (no manifest.json); build it with 'python -m engines.prepare --out $MODELS'"
MODELS="$(cd "$MODELS" && pwd)"

if [ -z "$CONTEXT" ]; then
  docker info >/dev/null 2>&1 || die "no Docker daemon reachable (docker info failed); install Docker + the NVIDIA container toolkit, or use --context-only DIR"
fi

# Stage the self-contained app folder (named 'app': __main__.py imports the package 'app').
STAGE_ROOT="$(mktemp -d "${TMPDIR:-/tmp}/brats-map-stage.XXXXXX")"
trap 'rm -rf "$STAGE_ROOT"' EXIT
APP_STAGE="$STAGE_ROOT/app"
"$PY" - "$ROOT" "$APP_STAGE" <<'EOF'
import shutil, sys
from pathlib import Path
root, dest = Path(sys.argv[1]), Path(sys.argv[2])
ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
shutil.copytree(root / "app", dest, ignore=ignore)
for package in ("operators", "engines"):
    shutil.copytree(root / package, dest / package, ignore=ignore)
shutil.copyfile(root / "requirements-map.txt", dest / "requirements.txt")
shutil.copyfile(root / "app.yaml", dest / "app.yaml")
EOF

ARGS=("$APP_STAGE" -c "$ROOT/app.yaml" -m "$MODELS" -t "$TAG" --platform x86_64 --source "$SOURCE" "${EXTRA[@]}")
if [ -n "$CONTEXT" ]; then
  "$PY" scripts/package_context.py --context "$CONTEXT" -- "${ARGS[@]}"
else
  "$ROOT/.venv/bin/monai-deploy" package "${ARGS[@]}"
fi
