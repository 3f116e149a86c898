"""Shared fixtures. Tier 1 (pure math) needs nothing; tiers 2 and 3 boot a real ComfyUI."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# `shapefirst` (pure math) and the scripts' helpers. Appended, never prepended: ComfyUI's own
# top-level `nodes` module must win over this repository's `nodes/` package.
for p in (REPO, REPO / "scripts"):
    if str(p) not in sys.path:
        sys.path.append(str(p))
