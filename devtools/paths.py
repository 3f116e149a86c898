"""Every folder the development tools use, defined once (standard library only)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACK_DIR_NAME = "comfyui-shapefirst"  # the pack's folder name under ComfyUI's custom_nodes

# Built runtimes (git-ignored): the default ComfyUI 0.3.75 one directly in it, runtimes built from
# other ComfyUI sources in ``comfyui-<version>/`` next to it. The model cache is shared by all.
RUNTIME_DIR = Path(os.environ.get("SHAPEFIRST_RUNTIME_DIR", REPO / ".runtime"))
MODELS = RUNTIME_DIR / "models"
CHECKPOINTS = MODELS / "checkpoints"
CONTROLNETS = MODELS / "controlnet"

OUTPUT = REPO / "output"
DEMO_OUTPUT = OUTPUT / "demo"
UI_BASE = RUNTIME_DIR / "ui"  # base folder of the server started by ``demo.py --ui``
TEST_OUTPUT = Path(os.environ.get("SHAPEFIRST_TEST_OUTPUT", REPO / "test-output"))

# Shipped workflows, in the folder name ComfyUI prefers (0.3.75 lists it too).
WORKFLOWS = REPO / "workflows"
DEV_REQUIREMENTS = REPO / "devtools" / "requirements-dev.txt"
