"""A tiny PixArt for the tests: ComfyUI's own PixArt class at a tiny size, every tensor seeded.

PixArt has no loadable tiny checkpoint (its T5-XXL text encoder alone is 4.7 B parameters), so the
tests build the network here and sample it with ComfyUI's sampler.
"""

from __future__ import annotations

import torch


def tiny_pixart(caption_channels: int = 32):
    """A ModelPatcher around a 2-block PixArt-Alpha (hidden 64, 4 heads) reading ``caption_channels``-wide text."""
    import comfy.supported_models as sm

    config = sm.PixArtAlpha({"image_model": "pixart_alpha", "hidden_size": 64, "depth": 2, "num_heads": 4,
                             "patch_size": 2, "in_channels": 4, "caption_channels": caption_channels,
                             "model_max_length": 120, "micro_condition": False})
    return seeded_patcher(config, seed=0)


def seeded_patcher(config, seed: int):
    """A CPU ModelPatcher around ``config``'s model in float32, every tensor of its network seeded (ComfyUI
    creates layers empty)."""
    import comfy.model_patcher as mp

    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.diffusion_model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return mp.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
