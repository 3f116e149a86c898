"""The shipped SD1.5 workflows on ShapeFirst World (devtools/world): the copies ``demo.py --ui`` offers.

The shipped files ask for ``v1-5-pruned-emaonly.safetensors`` at 512 px with prompts about birds and
chairs. Their World copies (UI format) load the World's checkpoint, sample 64 x 64 images (the size
it was trained at) and say the prompts in its words (``world.in_world_words``); everything else,
the step counts included, is the shipped workflow's. The shipped files are never modified.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .demo_report import workflow_files

WORLD_SIZE = 64  # px: the World's images (8 x 8 latents)
UI_FOLDER = "ShapeFirst World"  # the Workflows sidebar folder of the copies (user/default/workflows/<this>/)
SD15_CHECKPOINT = "v1-5-pruned-emaonly.safetensors"  # what the shipped SD1.5 workflows ask for


def is_sd15(path: Path) -> bool:
    """A shipped workflow that loads one SD1.5 checkpoint and no other model file."""
    return workflow_files(path) == [("checkpoints", SD15_CHECKPOINT)]


def sd15_workflows(folder: Path) -> list[Path]:
    return [p for p in sorted(Path(folder).glob("*.json")) if is_sd15(p)]


def world_copy(workflow: dict, ckpt_name: str) -> dict:
    """A copy of a UI-format SD1.5 workflow for the World: its checkpoint, 64 px latents, its words."""
    from . import world

    out = world.in_world_words(workflow)  # a deep copy
    for node in out.get("nodes", []):
        values = node.get("widgets_values")
        if not isinstance(values, list):
            continue
        if node.get("type") == "CheckpointLoaderSimple" and values:
            values[0] = ckpt_name
        elif node.get("type") == "EmptyLatentImage" and len(values) >= 2:
            values[0] = values[1] = WORLD_SIZE
    return out


def write_ui_copies(user_dir: Path, workflows: list[Path], ckpt_name: str) -> Path:
    """Write the World copies of ``workflows`` where ComfyUI's Workflows sidebar lists them
    (``user_dir/default/workflows/ShapeFirst World/``), replacing earlier copies; returns the folder."""
    folder = Path(user_dir) / "default" / "workflows" / UI_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for path in workflows:
        name = re.sub(r"[^\w.-]", "_", path.stem) + ".json"  # shipped names are already plain
        copy = world_copy(json.loads(path.read_text()), ckpt_name)
        (folder / name).write_text(json.dumps(copy, indent=2) + "\n")
    return folder
