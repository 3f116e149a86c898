"""Reduced-size text encoders of the modern families, built from ComfyUI's own classes (real
tokenizers, real model code) with seeded random weights: SD3 (clip_l + clip_g + T5-XXL), Flux
(clip_l + T5-XXL) and Z-Image (Qwen3 with its chat template). CLIP and T5 widths stay real (768 /
1280 / 4096, so the conditioning layout is the family's); depth and MLP width shrink through
ComfyUI's ``<name>_model_config`` options. CLIP encoders keep three layers: SD3 reads layer -2,
which ComfyUI only allows with more than two."""

from __future__ import annotations

import torch

CLIP_CONFIG = {"num_hidden_layers": 3, "intermediate_size": 64}
T5_CONFIG = {"num_layers": 1, "d_ff": 64, "num_heads": 2, "d_kv": 16}


def _constants(model) -> tuple[str, ...]:
    """Parameters no torch layer initialises: norms' weights (T5, RMSNorm), CLIP's projection and scale."""
    return tuple(n for n, _ in model.named_parameters()
                 if n.endswith("norm.weight") or n.endswith("logit_scale") or n.endswith("text_projection"))


def _build(clip_class, tokenizer_class, seed: int, **options):
    from devtools import checkpoints
    import comfy.sd as sd

    class Target:
        clip = clip_class
        tokenizer = tokenizer_class
        params = {}

    model_options = {"clip_l_model_config": CLIP_CONFIG, "clip_g_model_config": CLIP_CONFIG,
                     "t5xxl_model_config": T5_CONFIG, "dtype": torch.float32, **options}
    clip = sd.CLIP(target=Target, model_options=model_options)
    model = clip.cond_stage_model
    checkpoints.init_default(model, seed, constants=_constants(model))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith("text_projection"):
                p.copy_(torch.eye(p.shape[0], p.shape[1]))
    return clip


def sd3(clip_l: bool = True, clip_g: bool = True, t5: bool = True, seed: int = 11):
    """SD3's CLIP: rows [clip_l | clip_g | zeros] then T5's rows; pooled [clip_l | clip_g]."""
    import comfy.text_encoders.sd3_clip as sd3_clip

    return _build(sd3_clip.sd3_clip(clip_l=clip_l, clip_g=clip_g, t5=t5), sd3_clip.SD3Tokenizer, seed)


def z_image(seed: int = 13):
    """Z-Image's CLIP: Qwen3 rows of the templated prompt. The 151936-token vocabulary stays (the
    real tokenizer's ids), so the width shrinks to 64 to keep the embedding small."""
    import comfy.text_encoders.z_image as z

    config = {"hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2,
              "num_key_value_heads": 1}
    return _build(z.te(), z.ZImageTokenizer, seed, qwen3_4b_model_config=config)


def flux(seed: int = 12):
    """Flux's CLIP: T5's rows; pooled from clip_l."""
    import comfy.text_encoders.flux as flux_te

    return _build(flux_te.flux_clip(), flux_te.FluxTokenizer, seed)


class HeldCLIP:
    """A test-only loader node: returns a CLIP built here, so graphs with core CLIPTextEncode and
    the pack's nodes run through ComfyUI's real validator and executor on it."""

    NODE_ID = "ShapeFirstTestHeldCLIP"
    CLIPS: dict = {}
    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load"
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"name": ("STRING", {"default": ""})}}

    def load(self, name):
        return (self.CLIPS[name],)


def register_held_clips(**clips) -> None:
    import nodes

    HeldCLIP.CLIPS.update(clips)
    nodes.NODE_CLASS_MAPPINGS[HeldCLIP.NODE_ID] = HeldCLIP


def unregister_held_clips() -> None:
    import nodes

    HeldCLIP.CLIPS.clear()
    nodes.NODE_CLASS_MAPPINGS.pop(HeldCLIP.NODE_ID, None)
