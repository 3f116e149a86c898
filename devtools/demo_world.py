"""The shipped SD1.5 workflows on ShapeFirst World (devtools/world): the copies ``demo.py --ui`` offers.

The shipped files ask for ``v1-5-pruned-emaonly.safetensors`` at 512 px with prompts about birds and
chairs. Their World copies (UI format) load the World's checkpoint, sample 64 x 64 images (the size
it was trained at), say the prompts in its words (``world.in_world_words``) and cap every sampler
at UI_STEPS steps, so that each runs in seconds on a CPU (the World's pictures settle by then; the
windows of the pack's nodes are fractions of the steps, so they keep their meaning); everything else
is the shipped workflow's. The shipped files are never modified.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .demo_report import workflow_files

WORLD_SIZE = 64  # px: the World's images (8 x 8 latents)
UI_FOLDER = "ShapeFirst World"  # the Workflows sidebar folder of the copies (user/default/workflows/<this>/)
SD15_CHECKPOINT = "v1-5-pruned-emaonly.safetensors"  # what the shipped SD1.5 workflows ask for
UI_STEPS = 20  # steps cap of the UI copies (the World's own sampling default, devtools/world/generate.py)


def is_sd15(path: Path) -> bool:
    """A shipped workflow that loads one SD1.5 checkpoint and no other model file."""
    return workflow_files(path) == [("checkpoints", SD15_CHECKPOINT)]


def sd15_workflows(folder: Path) -> list[Path]:
    return [p for p in sorted(Path(folder).glob("*.json")) if is_sd15(p)]


def _steps_index(info: dict | None) -> int | None:
    """Position of the ``steps`` widget in a node's ``widgets_values`` (None: it has none)."""
    from .workflows.convert import widget_names

    k = 0
    for name, has_control in widget_names(info) if info else []:
        if name == "steps":
            return k
        k += 2 if has_control else 1
    return None


def world_copy(workflow: dict, ckpt_name: str, object_info: dict | None = None,
               max_steps: int | None = None) -> dict:
    """A copy of a UI-format SD1.5 workflow for the World: its checkpoint, 64 px latents, its words,
    and (given ComfyUI's ``object_info``) every ``steps`` widget capped at ``max_steps``."""
    from . import world

    out = world.in_world_words(workflow)  # a deep copy
    for node in out.get("nodes", []):
        values = node.get("widgets_values")
        if not isinstance(values, list):
            continue
        at = _steps_index((object_info or {}).get(node.get("type"))) if max_steps else None
        if at is not None and at < len(values) and isinstance(values[at], int) and values[at] > max_steps:
            values[at] = max_steps
        if node.get("type") == "CheckpointLoaderSimple" and values:
            values[0] = ckpt_name
        elif node.get("type") == "EmptyLatentImage" and len(values) >= 2:
            values[0] = values[1] = WORLD_SIZE
    return out


def write_ui_copies(user_dir: Path, workflows: list[Path], ckpt_name: str, object_info: dict) -> Path:
    """Write the World copies of ``workflows`` (steps capped at UI_STEPS) where ComfyUI's Workflows
    sidebar lists them (``user_dir/default/workflows/ShapeFirst World/``), replacing earlier copies;
    returns the folder."""
    folder = Path(user_dir) / "default" / "workflows" / UI_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for path in workflows:
        name = re.sub(r"[^\w.-]", "_", path.stem) + ".json"  # shipped names are already plain
        copy = world_copy(json.loads(path.read_text()), ckpt_name, object_info, UI_STEPS)
        (folder / name).write_text(json.dumps(copy, indent=2) + "\n")
    return folder
