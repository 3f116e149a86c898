"""Shared by the tiny 2026-family builders (tests/tiny_flux2.py, tiny_chroma.py, tiny_hv15.py).

Each builder makes ComfyUI's own network class at a tiny size (every tensor seeded by
``devtools.families.seeded_init``) and saves it as a standalone diffusion-model file under the
runtime's models folder, with the key names such files carry on disk (Flux-family q/k norms as
``*_norm.scale``: ComfyUI 0.33 builds them as ``.weight`` and renames ``.scale`` on load, 0.3.75's
modules are ``.scale``; a file written with 0.33's names would lose those gains on 0.3.75 with only
an "unet missing" log line). Core ``UNETLoader`` loads the file. Where core detection fixes a size a
CPU cannot test (Chroma's modulation approximator; Flux 2 on ComfyUI 0.3.75, whose detection fixes
48 heads), ``replaced_detection`` makes core's loader build the tiny configuration instead, for that
file only; a detection test on meta tensors of the real layout checks what core itself picks.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import torch

CLIP_NODE = "ShapeFirstTest2026TextEncoder"


def host_params(params_class, config: dict, **newer) -> dict:
    """``config`` plus the keys of ``newer`` that the host's network parameters (a dataclass) also have."""
    fields = {f.name for f in dataclasses.fields(params_class)}
    return {**config, **{k: v for k, v in newer.items() if k in fields}}


def disk_names(sd: dict, extra_norms: bool = False) -> dict:
    """Keys as Flux-family files name them on disk: q/k norms (and, for Chroma, the approximator's
    ``norms.N``) as ``.scale``."""
    out = {}
    for k, v in sd.items():
        if k.endswith("_norm.weight") or (extra_norms and ".norms." in k and k.endswith(".weight")):
            k = k[: -len(".weight")] + ".scale"
        out[k] = v
    return out


def build_state_dict(config_class: str, unet: dict, seed: int, extra_norms: bool = False) -> dict:
    """ComfyUI's own network of ``comfy.supported_models.<config_class>(unet)``, seeded, float32, on-disk names."""
    import comfy.supported_models

    from devtools.families import check_finite, seeded_init

    config = getattr(comfy.supported_models, config_class)(dict(unet))
    config.set_inference_dtype(torch.float32, None)
    net = config.get_model({}, device="cpu").diffusion_model
    seeded_init(net, seed)
    sd = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    check_finite(sd, config_class)
    return disk_names(sd, extra_norms)


def loaded_as_saved(model, sd: dict, extra_norms: bool = False) -> bool:
    """Every tensor of the file ``sd`` is in the loaded network, with the same value (compared under the
    on-disk names: ComfyUI 0.33 renames ``.scale`` norms on load), and the network has no other."""
    loaded = disk_names(model.model.diffusion_model.state_dict(), extra_norms)
    return set(loaded) == set(sd) and all(torch.equal(loaded[k].float(), v.float()) for k, v in sd.items())


def ensure_file(models_dir, name: str, build) -> str:
    """The file ``name`` under ``models_dir/diffusion_models`` (built by ``build()`` if missing), its folder
    registered with ComfyUI; returns the name for UNETLoader."""
    import folder_paths
    import safetensors.torch

    from devtools.checkpoints import _ensure_file

    folder = Path(models_dir) / "diffusion_models"
    folder.mkdir(parents=True, exist_ok=True)
    _ensure_file(folder / name, lambda tmp: safetensors.torch.save_file(build(), str(tmp)))
    folder_paths.add_model_folder_path("diffusion_models", str(folder), is_default=True)
    return name


def detected(sd: dict):
    """(supported_models class name, unet config) core detection gives a standalone diffusion-model state dict."""
    import comfy.model_detection

    config = comfy.model_detection.model_config_from_unet(sd, "")
    return (None, None) if config is None else (type(config).__name__, config.unet_config)


def meta(shapes: dict) -> dict:
    """A state dict of meta tensors (no memory): what detection reads of a real-size file."""
    return {k: torch.empty(s, dtype=torch.bfloat16, device="meta") for k, s in shapes.items()}


def meta_state_dict(config_class: str, unet: dict, extra_norms: bool = False) -> dict:
    """The keys and shapes of ``config_class(unet)``'s network built on the meta device, on-disk names."""
    import comfy.supported_models

    config = getattr(comfy.supported_models, config_class)(dict(unet))
    config.set_inference_dtype(torch.bfloat16, None)
    net = config.get_model({}, device="meta").diffusion_model
    return disk_names(dict(net.state_dict()), extra_norms)


@contextlib.contextmanager
def replaced_detection(is_tiny, config_class: str, unet: dict):
    """Core detection, except for state dicts ``is_tiny(sd)`` recognises: those get
    ``comfy.supported_models.<config_class>(unet)`` (core's loader does the rest: dtypes, weights,
    ModelPatcher). Yields the list of files replaced (one entry per load)."""
    import comfy.model_detection
    import comfy.supported_models

    real = comfy.model_detection.model_config_from_unet
    replaced = []

    def detect(state_dict, prefix, *args, **kwargs):
        if prefix == "" and is_tiny(state_dict):
            replaced.append(config_class)
            return getattr(comfy.supported_models, config_class)(dict(unet))
        return real(state_dict, prefix, *args, **kwargs)

    comfy.model_detection.model_config_from_unet = detect
    try:
        yield replaced
    finally:
        comfy.model_detection.model_config_from_unet = real


@contextlib.contextmanager
def clip_node(build):
    """A test-only node ``CLIP_NODE`` (no inputs) that outputs the CLIP ``build()`` makes, registered
    while the block runs."""
    import nodes

    clip = {}

    class TextEncoderNode:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {}}

        RETURN_TYPES = ("CLIP",)
        FUNCTION = "load"
        CATEGORY = "testing"
        DESCRIPTION = "Test only: a seeded tiny text encoder of ComfyUI's own classes."

        def load(self):
            if "clip" not in clip:
                clip["clip"] = build()
            return (clip["clip"],)

    nodes.NODE_CLASS_MAPPINGS[CLIP_NODE] = TextEncoderNode
    try:
        yield
    finally:
        nodes.NODE_CLASS_MAPPINGS.pop(CLIP_NODE, None)


def graph(unet_name: str, latent: tuple, prompt="a photo of a cat", negative="") -> dict:
    """Nodes 1 (UNETLoader), 9 (the test text encoder), 2 / 3 (core CLIPTextEncode), 4 (latent)."""
    latent_node, latent_inputs = latent
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": unet_name, "weight_dtype": "default"}},
        "9": {"class_type": CLIP_NODE, "inputs": {}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["9", 0]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["9", 0]}},
        "4": {"class_type": latent_node, "inputs": {**latent_inputs, "batch_size": 1}},
    }
