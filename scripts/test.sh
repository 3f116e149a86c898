#!/usr/bin/env bash
# Runs ShapeFirst's whole test suite (pure math, in-process ComfyUI, browser) inside a real
# ComfyUI runtime, building it first if needed (scripts/runtime.py). Extra arguments go to
# pytest and are relative to tests/ (e.g. -k frequency, or test_browser.py).
# `--comfyui-src DIR` first runs the suite on a runtime built for that ComfyUI source folder
# (the same as SHAPEFIRST_COMFYUI_SRC=DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--comfyui-src" ]; then
  SHAPEFIRST_COMFYUI_SRC="$(cd "$2" && pwd)"
  export SHAPEFIRST_COMFYUI_SRC
  shift 2
fi
PY=$(python3 scripts/runtime.py --print-python | tail -n 1)
# pytest runs from tests/ (its rootdir): the repository root is a ComfyUI package whose
# __init__.py needs ComfyUI, so pytest must not collect it as a test package.
cd tests
exec "$PY" -m pytest "$@"
