"""ShapeFirst World: a small text-to-image model trained on procedural shapes, shipped as compact
parameters (``params/``) and assembled on first use into ComfyUI SD1.5 files (docs/world.md).

    from devtools import world
    ckpt = world.checkpoint(models_dir)         # models_dir/checkpoints/shapefirst-world-v1.safetensors
    files = world.split_files(models_dir)       # {"unet", "clip", "vae"}: diffusion_models/, text_encoders/, vae/
    world.prompt("A blue bird")                 # "a blue circle": the shipped workflows' prompts in the world's words
    world.in_world_words(workflow)              # a copy of a workflow (UI or API format) with those prompts replaced

Importing this package needs the standard library only; assembly needs numpy (no ComfyUI).
"""

from __future__ import annotations

from pathlib import Path


def checkpoint(models_dir) -> Path:
    """The world's single-file SD1.5 checkpoint under ``models_dir/checkpoints/``, assembled first
    if missing and checked against its recorded sha256 (``assemble.WorldFileError`` otherwise)."""
    from .assemble import ensure

    return ensure(models_dir, ("checkpoint",))["checkpoint"]


def split_files(models_dir) -> dict[str, Path]:
    """The world for UNETLoader / CLIPLoader (type stable_diffusion) / VAELoader:
    {"unet": diffusion_models/..., "clip": text_encoders/..., "vae": vae/...}."""
    from .assemble import ensure

    return ensure(models_dir, ("unet", "clip", "vae"))


def prompt(text: str) -> str:
    """``text`` in the world's words when it is one of the shipped workflows' prompts, else ``text``."""
    from .evalset import WORKFLOW_PROMPTS

    return WORKFLOW_PROMPTS.get(text, text)


def in_world_words(workflow: dict) -> dict:
    """A copy of ``workflow`` (ComfyUI's UI format with ``nodes[].widgets_values``, or the API format
    with ``{id: {"inputs": ...}}``) in which every text value that is one of the shipped workflows'
    prompts is replaced by its world version (``prompt``). The input is not modified."""
    import copy

    out = copy.deepcopy(workflow)
    nodes = out.get("nodes") if isinstance(out.get("nodes"), list) else None
    if nodes is not None:
        for node in nodes:
            values = node.get("widgets_values")
            if isinstance(values, list):
                node["widgets_values"] = [prompt(v) if isinstance(v, str) else v for v in values]
    else:
        for node in out.values():
            inputs = node.get("inputs", {}) if isinstance(node, dict) else {}
            for k, v in inputs.items():
                if isinstance(v, str):
                    inputs[k] = prompt(v)
    return out
