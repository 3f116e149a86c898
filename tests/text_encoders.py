"""Reduced-size text encoders of the modern families, built from ComfyUI's own classes (real
tokenizers, real model code) with seeded random weights (``devtools.families.seeded_clip``): SD3
(clip_l + clip_g + T5-XXL), Flux (clip_l + T5-XXL), Z-Image (Qwen3 with its chat template) and
Qwen-Image (Qwen2.5-VL with its chat template, vision tower left out). CLIP and T5 widths stay real
(768 / 1280 / 4096, so the conditioning layout is the family's); depth and MLP width shrink through
ComfyUI's ``<name>_model_config`` options. CLIP encoders keep three layers: SD3 reads layer -2,
which ComfyUI only allows with more than two. (The tiny Wan and Lumina 2 encoders of the workflow
runs are ``devtools.families.build_text_encoder``.)"""

from __future__ import annotations

from contextlib import contextmanager

import torch

CLIP_CONFIG = {"num_hidden_layers": 3, "intermediate_size": 64}
T5_CONFIG = {"num_layers": 1, "d_ff": 64, "num_heads": 2, "d_kv": 16}
# the LLM encoders keep their real vocabularies (the real tokenizers' ids), so their width shrinks to 64
LLM_CONFIG = {"hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2,
              "num_key_value_heads": 1}


def _build(clip_class, tokenizer_class, seed: int, **options):
    from devtools.families import seeded_clip

    clip = seeded_clip(clip_class, tokenizer_class, {"clip_l_model_config": CLIP_CONFIG,
                                                      "clip_g_model_config": CLIP_CONFIG,
                                                      "t5xxl_model_config": T5_CONFIG, **options}, seed=seed)
    with torch.no_grad():
        for name, p in clip.cond_stage_model.named_parameters():
            if name.endswith("text_projection"):  # CLIP's pooled vector = its [EOS] row
                p.copy_(torch.eye(p.shape[0], p.shape[1]))
    return clip


def sd3(clip_l: bool = True, clip_g: bool = True, t5: bool = True, seed: int = 11):
    """SD3's CLIP: rows [clip_l | clip_g | zeros] then T5's rows; pooled [clip_l | clip_g]."""
    import comfy.text_encoders.sd3_clip as sd3_clip

    return _build(sd3_clip.sd3_clip(clip_l=clip_l, clip_g=clip_g, t5=t5), sd3_clip.SD3Tokenizer, seed)


def z_image(seed: int = 13):
    """Z-Image's CLIP: Qwen3 rows of the templated prompt (151936-token vocabulary, width 64)."""
    import comfy.text_encoders.z_image as z

    return _build(z.te(), z.ZImageTokenizer, seed, qwen3_4b_model_config=LLM_CONFIG)


@contextmanager
def _without_vision_tower():
    """ComfyUI's Qwen2.5-VL transformer class without its fixed 32-layer vision tower (text prompts
    never reach it), in place while the block builds an encoder."""
    import comfy.text_encoders.llama as llama

    real = llama.Qwen25_7BVLI

    class TextOnly(real):
        def __init__(self, config_dict, dtype, device, operations):
            torch.nn.Module.__init__(self)
            config = llama.Qwen25_7BVLI_Config(**config_dict)
            self.num_layers = config.num_hidden_layers
            self.model = llama.Llama2_(config, device=device, dtype=dtype, ops=operations)
            self.dtype = dtype

    llama.Qwen25_7BVLI = TextOnly
    try:
        yield
    finally:
        llama.Qwen25_7BVLI = real


def qwen_image(seed: int = 14):
    """Qwen-Image's CLIP: ComfyUI's QwenImageTEModel (template prefix cut from the rows) on its
    Qwen2.5-VL transformer at width 64, vision tower left out (152064-token vocabulary kept)."""
    import comfy.text_encoders.qwen_image as q

    with _without_vision_tower():
        return _build(q.te(), q.QwenImageTokenizer, seed, qwen25_7b_model_config=LLM_CONFIG)


def flux(seed: int = 12):
    """Flux's CLIP: T5's rows; pooled from clip_l."""
    import comfy.text_encoders.flux as flux_te

    return _build(flux_te.flux_clip(), flux_te.FluxTokenizer, seed)


class Held:
    """A test-only node that hands the graph a value built in the test, by name (subclasses set the
    node id, the type and their own dict of values)."""

    NODE_ID = ""
    VALUES: dict = {}
    RETURN_TYPES: tuple = ()
    FUNCTION = "load"
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"name": ("STRING", {"default": ""})}}

    def load(self, name):
        return (self.VALUES[name],)


class HeldCLIP(Held):
    """A test-only loader node: returns a CLIP built here, so graphs with core CLIPTextEncode and
    the pack's nodes run through ComfyUI's real validator and executor on it."""

    NODE_ID = "ShapeFirstTestHeldCLIP"
    CLIPS: dict = {}
    VALUES = CLIPS
    RETURN_TYPES = ("CLIP",)


def register_held_clips(**clips) -> None:
    import nodes

    HeldCLIP.CLIPS.update(clips)
    nodes.NODE_CLASS_MAPPINGS[HeldCLIP.NODE_ID] = HeldCLIP


def unregister_held_clips() -> None:
    import nodes

    HeldCLIP.CLIPS.clear()
    nodes.NODE_CLASS_MAPPINGS.pop(HeldCLIP.NODE_ID, None)
