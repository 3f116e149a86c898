"""A tiny Chroma for the tests: ComfyUI's own Chroma network at hidden 128 (one head of 128 rotary
channels), one double and one single block, context 64, its modulation approximator 1 layer x 64 wide
(out 128, the model width): 0.64 M parameters.

Core detection fixes Chroma's approximator at 5 layers x 5120 (out 3072, so the width too): that model
runs 344 modulation rows per image through 270 M parameters, seconds per evaluation on a CPU. So core's
UNETLoader loads this file with detection replaced for it alone (``tiny_files.replaced_detection``), and
``FULL`` is the layout of a real Chroma file, built on the meta device, for the test that core detection
itself picks the class the description names.

Text: core's Chroma text encoder (CLIPLoader type chroma: ``pixart_t5.pixart_te`` + ``PixArtTokenizer``,
T5-XXL) at width 64, one layer, seeded.
"""

from __future__ import annotations

from tiny_files import build_state_dict, ensure_file, host_params

NAME = "shapefirst-tiny-chroma-v1.safetensors"
HIDDEN, CONTEXT = 128, 64
LATENT = ("EmptySD3LatentImage", {"width": 64, "height": 64})  # (1, 16, 8, 8): 4 x 4 = 16 image tokens


def _unet(**sizes) -> dict:
    import comfy.ldm.chroma.model as chroma

    config = {"image_model": "chroma", "axes_dim": [16, 56, 56], "num_heads": 24, "mlp_ratio": 4.0, "theta": 10000,
              "out_channels": 64, "qkv_bias": True, "in_channels": 64, "hidden_size": 3072, "context_in_dim": 4096,
              "patch_size": 2, "depth": 19, "depth_single_blocks": 38, "in_dim": 64, "out_dim": 3072,
              "hidden_dim": 5120, "n_layers": 5, **sizes}
    return host_params(chroma.ChromaParams, config, txt_ids_dims=[], vec_in_dim=None)


def unet() -> dict:
    return _unet(num_heads=1, hidden_size=HIDDEN, context_in_dim=CONTEXT, depth=1, depth_single_blocks=1,
                 out_dim=HIDDEN, hidden_dim=64, n_layers=1)


def full() -> dict:
    """Chroma1-HD's layout (what core detection reports for its file)."""
    return _unet()


def is_tiny(sd) -> bool:
    w = sd.get("img_in.weight")
    return "distilled_guidance_layer.norms.0.scale" in sd and w is not None and w.shape[0] == HIDDEN


def ensure(models_dir) -> str:
    return ensure_file(models_dir, NAME, lambda: build_state_dict("Chroma", unet(), seed=402, extra_norms=True))


def text_encoder(seed: int = 321):
    import comfy.text_encoders.pixart_t5 as pixart

    from devtools.families import seeded_clip

    return seeded_clip(pixart.pixart_te(), pixart.PixArtTokenizer,
                       {"t5xxl_model_config": {"d_model": CONTEXT, "num_layers": 1, "d_ff": 2 * CONTEXT,
                                               "num_heads": 2, "d_kv": CONTEXT // 2}}, {}, seed)
