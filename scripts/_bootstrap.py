"""The one place where entry scripts (scripts/, benchmarks/) make the repository importable.

``import _bootstrap`` first thing in an entry script; then ``devtools`` and ``shapefirst`` import.
The repository root is appended, never prepended: ComfyUI's own top-level ``nodes`` module must
win over this repository's ``nodes/`` package once ComfyUI's folder is on the path.
"""

import sys
from pathlib import Path

REPO = str(Path(__file__).resolve().parent.parent)
if REPO not in sys.path:
    sys.path.append(REPO)
