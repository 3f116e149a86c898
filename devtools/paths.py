"""Every folder the development tools use, defined once (standard library only)."""

from __future__ import annotations

import os
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACK_DIR_NAME = "comfyui-shapefirst"  # the pack's folder name under ComfyUI's custom_nodes

# Built runtimes (git-ignored): the default ComfyUI 0.3.75 one directly in it, runtimes built from
# other ComfyUI sources in ``comfyui-<version>/`` next to it.
RUNTIME_DIR = Path(os.environ.get("SHAPEFIRST_RUNTIME_DIR", REPO / ".runtime"))
# Generated test/demo models, one cache per ComfyUI version (``comfyui-<version>/checkpoints``, ...): the
# models are built with the host's own classes, so one host's file must never stand in for another
# host's build. $SHAPEFIRST_MODELS_DIR replaces the base folder (e.g. an empty one: every builder runs).
MODELS = Path(os.environ.get("SHAPEFIRST_MODELS_DIR", RUNTIME_DIR / "models"))


def host_models(comfyui_version: str) -> Path:
    """The model cache of the ComfyUI host of this version."""
    return MODELS / ("comfyui-" + re.sub(r"[^\w.+-]", "_", comfyui_version))


OUTPUT = REPO / "output"
DEMO_OUTPUT = OUTPUT / "demo"
UI_BASE = Path(os.environ.get("SHAPEFIRST_UI_DIR", RUNTIME_DIR / "ui"))  # base folder of ``demo.py --ui``'s server
TEST_OUTPUT = Path(os.environ.get("SHAPEFIRST_TEST_OUTPUT", REPO / "test-output"))

# Shipped workflows, in the folder name ComfyUI prefers (0.3.75 lists it too).
WORKFLOWS = REPO / "workflows"
DEV_REQUIREMENTS = REPO / "devtools" / "requirements-dev.txt"
