"""A tiny Flux 2 for the tests: ComfyUI's own Flux network built as core builds Flux 2 (global modulation,
SiLU-gated MLPs, no biases, 128 latent channels, patch 1, 4 rotary axes of 32), at hidden 128 (one head),
one double and one single block, context 96, no guidance embedding (the Klein base models, run with CFG 5
in core's templates): about 1 M parameters.

ComfyUI 0.33.0's detection reads this file as it is (heads = width / 128). ComfyUI 0.3.75 knows only Flux 2
[dev]: its detection fixes 48 heads (6144 wide), so a Klein file (3072 or 4096 wide) fails to build there
(Klein arrived in ComfyUI 0.9.2), and so would this file: on such a host core's UNETLoader loads it with
detection replaced for it alone (``tiny_files.replaced_detection``). ``dev()`` and ``klein_4b()`` are real
layouts, built on the meta device, for the test of what core detection does with them.

Text: Flux 2's encoders (Mistral 3 for [dev], whose tokenizer ships inside the encoder file; Qwen3 for Klein,
ComfyUI 0.9.2 and later) are not available on every host, so the conditionings are seeded contexts of
CONTEXT channels given by a test node (``conditioning_node``); core front-pads them to 512 rows with zeros
(``model_base.Flux2.extra_conds``), as it does every Flux 2 conditioning shorter than 512 tokens.
"""

from __future__ import annotations

import contextlib

import torch

from tiny_files import build_state_dict, ensure_file, host_params

NAME = "shapefirst-tiny-flux2-v1.safetensors"
HIDDEN, CONTEXT, TEXT_ROWS = 128, 96, 512
LATENT = ("EmptyFlux2LatentImage", {"width": 64, "height": 64})  # (1, 128, 4, 4): 16 image tokens
CONDITIONING_NODE = "ShapeFirstTest2026Conditioning"
PROMPTS = {"positive": (12, 51), "negative": (5, 52)}  # name -> (rows, seed)


def _unet(**sizes) -> dict:
    import comfy.ldm.flux.model as flux

    config = {"image_model": "flux2", "axes_dim": [32, 32, 32, 32], "num_heads": 48, "mlp_ratio": 3.0, "theta": 2000,
              "out_channels": 128, "global_modulation": True, "mlp_silu_act": True, "qkv_bias": False,
              "ops_bias": False, "default_ref_method": "index", "ref_index_scale": 10.0, "in_channels": 128,
              "hidden_size": 6144, "context_in_dim": 15360, "patch_size": 1, "vec_in_dim": None, "depth": 8,
              "depth_single_blocks": 48, "guidance_embed": True, **sizes}
    return host_params(flux.FluxParams, config, txt_ids_dims=[3], yak_mlp=False, txt_norm=False)


def unet() -> dict:
    return _unet(num_heads=1, hidden_size=HIDDEN, context_in_dim=CONTEXT, depth=1, depth_single_blocks=1,
                 guidance_embed=False)


# Flux 2 [dev] (32 B: 6144 wide = 48 heads, Mistral 3 context 3 x 5120, guidance embedding) and Klein 4B
# (3072 wide = 24 heads, Qwen3-4B context 3 x 2560, no guidance embedding)
def dev() -> dict:
    return _unet()


def klein_4b() -> dict:
    return _unet(num_heads=24, hidden_size=3072, context_in_dim=7680, depth=5, depth_single_blocks=20,
                 guidance_embed=False)


def is_tiny(sd) -> bool:
    w = sd.get("img_in.weight")
    return "double_stream_modulation_img.lin.weight" in sd and w is not None and w.shape[0] == HIDDEN


def ensure(models_dir) -> str:
    return ensure_file(models_dir, NAME, lambda: build_state_dict("Flux2", unet(), seed=401))


def context(name: str) -> torch.Tensor:
    rows, seed = PROMPTS[name]
    return torch.randn(1, rows, CONTEXT, generator=torch.Generator().manual_seed(seed))


@contextlib.contextmanager
def conditioning_node():
    """A test-only node ``CONDITIONING_NODE`` (input ``name``: positive / negative) giving a seeded context."""
    import nodes

    class ConditioningNode:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"name": (list(PROMPTS), {"tooltip": "Which seeded context."})}}

        RETURN_TYPES = ("CONDITIONING",)
        FUNCTION = "load"
        CATEGORY = "testing"
        DESCRIPTION = "Test only: a seeded Flux 2 context (no Flux 2 text encoder can be built on every host)."

        def load(self, name):
            return ([[context(name), {"pooled_output": None}]],)  # as core CLIPTextEncode: Flux 2 has none

    nodes.NODE_CLASS_MAPPINGS[CONDITIONING_NODE] = ConditioningNode
    try:
        yield
    finally:
        nodes.NODE_CLASS_MAPPINGS.pop(CONDITIONING_NODE, None)


def graph(unet_name: str) -> dict:
    """Nodes 1 (UNETLoader), 2 / 3 (the seeded contexts), 4 (core's Flux 2 latent)."""
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": unet_name, "weight_dtype": "default"}},
        "2": {"class_type": CONDITIONING_NODE, "inputs": {"name": "positive"}},
        "3": {"class_type": CONDITIONING_NODE, "inputs": {"name": "negative"}},
        "4": {"class_type": LATENT[0], "inputs": {**LATENT[1], "batch_size": 1}},
    }
