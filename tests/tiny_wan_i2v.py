"""A tiny Wan 2.1 image-to-video model for the tests: ComfyUI's own WanModel (model_type i2v, its blocks'
WanI2VCrossAttention with the CLIP-vision branch) at a tiny size, every tensor seeded, and conditionings
as core's WanImageToVideo makes them (the CLIP-vision output of the start image beside the text).

A loadable tiny I2V file would need the CLIP-vision model too; the tests build the network here and
sample it with ComfyUI's sampler, as for PixArt.
"""

from __future__ import annotations

import torch

from tiny_pixart import seeded_patcher

TEXT_WIDTH = 32
FRAMES, SIZE = 3, 8  # latent frames and side: patch (1, 2, 2) gives 3 x 4x4 = 48 tokens


def tiny_wan_i2v():
    """A ModelPatcher around a 2-block Wan 2.1 I2V (dim 64, 2 heads) reading ``TEXT_WIDTH``-wide text."""
    import comfy.supported_models as sm

    config = sm.WAN21_I2V({"image_model": "wan2.1", "model_type": "i2v", "in_dim": 36, "dim": 64, "out_dim": 16,
                           "num_heads": 2, "ffn_dim": 128, "num_layers": 2, "patch_size": (1, 2, 2), "freq_dim": 256,
                           "text_dim": TEXT_WIDTH, "window_size": (-1, -1), "qk_norm": True, "cross_attn_norm": True,
                           "eps": 1e-6})
    return seeded_patcher(config, seed=21)


def conditioning(text: torch.Tensor, image_features: torch.Tensor | None, extra: dict | None = None) -> list:
    """[[text, {clip_vision_output, ...}]]: the start image's CLIP-vision features beside the text."""
    import comfy.clip_vision

    extras = dict(extra or {})
    if image_features is not None:
        output = comfy.clip_vision.Output()
        output.penultimate_hidden_states = image_features
        extras["clip_vision_output"] = output
    return [[text, extras]]


def latent(batch: int = 1) -> torch.Tensor:
    return torch.zeros(batch, 16, FRAMES, SIZE, SIZE)
