#!/usr/bin/env bash
# Runs ShapeFirst's whole test suite (pure math, in-process ComfyUI, browser) inside a real
# ComfyUI runtime, building it first if needed (scripts/runtime.py). Extra arguments go to
# pytest and are relative to tests/ (e.g. -k frequency, or test_browser.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(python3 scripts/runtime.py --print-python | tail -n 1)
# pytest runs from tests/ (its rootdir): the repository root is a ComfyUI package whose
# __init__.py needs ComfyUI, so pytest must not collect it as a test package.
cd tests
exec "$PY" -m pytest "$@"
