"""A tiny HunyuanVideo 1.5 for the tests: ComfyUI's own HunyuanVideo network as core detection reads a
HunyuanVideo 1.5 file (the 1152-wide ``vision_in`` projection is what selects ``HunyuanVideo15``;
width, depth and context width are read from shapes), at hidden 128 (one head), one double and one
single block, context 64, no byT5 glyph mapper: 3.0 M parameters (12 MB float32), loaded by core UNETLoader on
ComfyUI 0.3.75 and 0.33.0 alike.

Its text encoder (Qwen2.5-VL-7B) cannot be built small (a fixed 152064 x 3584 token table and vision
tower), so core's ``HunyuanVideo15Tokenizer`` (the real tokenizer and video chat template) feeds a seeded
stand-in: one 64-wide row per token, the template's system part and user header cut as core cuts them.
"""

from __future__ import annotations

from tiny_files import build_state_dict, ensure_file, host_params

NAME = "shapefirst-tiny-hv15-v1.safetensors"
HIDDEN, CONTEXT, STAND_IN_ROWS = 128, 64, 2048
LATENT = ("EmptyHunyuanVideo15Latent", {"width": 64, "height": 64, "length": 5})  # (1, 32, 2, 4, 4)


def unet() -> dict:
    """What core detection reports for the file (0.33.0 also reports ``meanflow_sum``)."""
    import comfy.ldm.hunyuan_video.model as hv

    config = {"image_model": "hunyuan_video", "in_channels": 65, "patch_size": [1, 1, 1], "out_channels": 32,
              "vec_in_dim": None, "axes_dim": [16, 56, 56], "meanflow": False, "context_in_dim": CONTEXT,
              "hidden_size": HIDDEN, "mlp_ratio": 4.0, "num_heads": HIDDEN // 128, "depth": 1,
              "depth_single_blocks": 1, "theta": 256, "qkv_bias": True, "byt5": False, "guidance_embed": False,
              "use_cond_type_embedding": True, "vision_in_dim": 1152}
    return host_params(hv.HunyuanVideoParams, config, meanflow_sum=True)


def ensure(models_dir) -> str:
    return ensure_file(models_dir, NAME, lambda: build_state_dict("HunyuanVideo15", unet(), seed=403))


def text_encoder(seed: int = 321):
    """core's HunyuanVideo15Tokenizer feeding a seeded stand-in of its Qwen2.5-VL encoder (module doc)."""
    import comfy.text_encoders.hunyuan_video as hv

    from devtools.families import seeded_clip
    from devtools.qwen_stand_in import stand_in_encoder

    encoder = stand_in_encoder(CONTEXT, STAND_IN_ROWS, "HunyuanVideo 1.5")
    return seeded_clip(encoder, hv.HunyuanVideo15Tokenizer, {}, {}, seed)
