"""Tiny models of the families whose core detection fixes a size a CPU cannot test (Z-Image: 3840 wide;
HiDream: every size, about 17 B parameters) or fixes a width far above what a test needs (Qwen-Image:
3072 wide, 3584-wide context): ComfyUI's own classes at a tiny config, every tensor seeded, loaded by
the host's own loader (``comfy.sd.load_diffusion_model_state_dict``: dtypes, weights, ModelPatcher) with
only ``model_detection.model_config_from_unet`` replaced by the given config for that one call.

``detected_on_meta`` pairs it with core detection of the real layout on meta tensors (no memory): the
description keys on classes and attributes, never on the sizes the tests use, and that test checks the
class core picks for the real files is the one the tiny model has.

``HeldModel`` hands such a model to a graph by name (a test-only loader node, like the held CLIPs of
``text_encoders.py``), so the graphs run through ComfyUI's real validator and executor.
"""

from __future__ import annotations

import contextlib

import torch

from text_encoders import Held, register_held_clips, unregister_held_clips


def seeded_state_dict(config_class: str, unet_config: dict, seed: int) -> dict:
    """The standalone diffusion-model state dict of ``supported_models.<config_class>(unet_config)``, every
    tensor seeded by ``devtools.seeding.seeded_init``, float32."""
    import comfy.supported_models as sm

    from devtools.seeding import seeded_init

    config = getattr(sm, config_class)(dict(unet_config))
    config.set_inference_dtype(torch.float32, None)
    net = config.get_model({}, device="cpu").diffusion_model
    seeded_init(net, seed)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def load_with_config(sd: dict, config_class: str, unet_config: dict):
    """A ModelPatcher from the host's loader, with detection replaced by ``config_class(unet_config)``."""
    import comfy.model_detection as md
    import comfy.sd
    import comfy.supported_models as sm

    real = md.model_config_from_unet

    def given(state_dict, prefix, *args, **kwargs):
        return getattr(sm, config_class)(dict(unet_config))

    md.model_config_from_unet = given
    try:
        model = comfy.sd.load_diffusion_model_state_dict(dict(sd))
    finally:
        md.model_config_from_unet = real
    if model is None:
        raise RuntimeError(f"ComfyUI's loader returned no model for {config_class}")
    return model


def tiny_model(config_class: str, unet_config: dict, seed: int):
    return load_with_config(seeded_state_dict(config_class, unet_config, seed), config_class, unet_config)


def detected_on_meta(config_class: str, unet_config: dict):
    """(supported_models class name, unet_config) core detection gives the real layout's tensor shapes,
    built on the meta device (no memory)."""
    import comfy.model_detection as md
    import comfy.supported_models as sm

    config = getattr(sm, config_class)(dict(unet_config))
    config.set_inference_dtype(torch.bfloat16, None)
    with torch.device("meta"):
        sd = config.get_model({}, device="meta").diffusion_model.state_dict()
    found = md.model_config_from_unet(sd, "")
    return (None, None) if found is None else (type(found).__name__, found.unet_config)


class HeldModel(Held):
    """A test-only loader node: returns a MODEL built in the test."""

    NODE_ID = "ShapeFirstTestHeldModel"
    MODELS: dict = {}
    VALUES = MODELS
    RETURN_TYPES = ("MODEL",)


def register_held_models(**models) -> None:
    import nodes

    HeldModel.MODELS.update(models)
    nodes.NODE_CLASS_MAPPINGS[HeldModel.NODE_ID] = HeldModel


def unregister_held_models() -> None:
    import nodes

    HeldModel.MODELS.clear()
    nodes.NODE_CLASS_MAPPINGS.pop(HeldModel.NODE_ID, None)


class HeldLatent(Held):
    """A test-only loader node: returns a LATENT built in the test ({"samples": tensor})."""

    NODE_ID = "ShapeFirstTestHeldLatent"
    LATENTS: dict = {}
    VALUES = LATENTS
    RETURN_TYPES = ("LATENT",)


def register_held_latents(**latents) -> None:
    import nodes

    HeldLatent.LATENTS.update(latents)
    nodes.NODE_CLASS_MAPPINGS[HeldLatent.NODE_ID] = HeldLatent


def unregister_held_latents() -> None:
    import nodes

    HeldLatent.LATENTS.clear()
    nodes.NODE_CLASS_MAPPINGS.pop(HeldLatent.NODE_ID, None)


@contextlib.contextmanager
def held(models: dict, clips: dict, latents: dict | None = None):
    """The held models, CLIPs (``text_encoders.HeldCLIP``) and latents, by name, for the graphs run inside."""
    register_held_models(**models)
    register_held_clips(**clips)
    register_held_latents(**(latents or {}))
    try:
        yield
    finally:
        unregister_held_models()
        unregister_held_clips()
        unregister_held_latents()
