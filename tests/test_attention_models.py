"""Tier 2: AttentionMapCapture on the other supported UNets (SD2.x, SDXL) and on PixArt.

SD2.x and SDXL run from tiny random-weight checkpoints through ComfyUI's graph executor.
PixArt has no loadable tiny checkpoint (its T5-XXL text encoder alone is 4.7 B parameters):
the test builds ComfyUI's own PixArt class at a tiny size with seeded weights and samples it
with ComfyUI's sampler and conditioning tensors in place of T5 outputs.
"""

from __future__ import annotations

import math

import pytest
import torch

import graphs

pytestmark = pytest.mark.comfy

CAPTURE = {"record_uncond": True, "step_stride": 1, "max_tokens": 77, "max_grid": 64, "keep_layers": False,
           "memory_limit_mb": 1024.0}


def _graph(ckpt, steps=2, size=64):
    g = graphs.base(ckpt, "a square coaster", "", size, size)
    g["5"] = {"class_type": "AttentionMapCapture", "inputs": {"model": ["1", 0], **CAPTURE}}
    g["6"] = graphs.ksampler(("1", 0), ("4", 0), steps=steps)
    g["7"] = graphs.ksampler(("5", 0), ("4", 0), steps=steps)
    g["8"] = {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": "tests/latent"}}
    return g


@pytest.mark.parametrize("kind,layers,grid", [
    ("sd2x", 4, (8, 8)),  # one level, like the tiny SD1.5: every layer at the latent's 8x8
    ("sdxl", 25, (4, 4)),  # transformers only at 1/2 (2+2 layers) and 1/4 (10+10) plus the middle block
])
def test_sd2x_and_sdxl_captures(comfy, request, kind, layers, grid):
    ckpt = request.getfixturevalue(f"{kind}_ckpt")
    r = comfy.run(_graph(ckpt), outputs=["6"])
    assert torch.equal(r.output_value("6")["samples"], r.output_value("7")["samples"])
    run = r.output_value("5", 1).run
    assert run.model_kind == "unet" and len(run.layer_names) == layers and run.grid == grid
    assert run.token_count == {0: 77, 1: 77} and run.steps(0) == run.steps(1) == [0, 1]
    for branch in (0, 1):
        for step in (0, 1):
            sums = run.maps[branch][step].float().sum(1)
            assert torch.allclose(sums, torch.ones_like(sums), atol=1e-3)


def _tiny_pixart():
    import comfy.model_patcher as mp
    import comfy.supported_models as sm

    config = sm.PixArtAlpha({"image_model": "pixart_alpha", "hidden_size": 64, "depth": 2, "num_heads": 4,
                             "patch_size": 2, "in_channels": 4, "caption_channels": 32, "model_max_length": 120,
                             "micro_condition": False})
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.diffusion_model.parameters():  # ComfyUI creates layers empty: seed every tensor
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return mp.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def test_pixart_cross_attention_is_captured_through_an_object_patch(comfy):
    import comfy.sample
    import nodes
    from comfy.ldm.pixart.blocks import MultiHeadCrossAttention

    pixart = _tiny_pixart()
    out = nodes.NODE_CLASS_MAPPINGS["AttentionMapCapture"].execute(pixart, **CAPTURE)
    captured, rec = out.args
    blocks = pixart.model.diffusion_model.blocks
    seen = []
    hooks = [b.cross_attn.register_forward_pre_hook(lambda m, args, i=i: seen.append((i, args[0].clone(), args[1].clone())))
             for i, b in enumerate(blocks)]
    g = torch.Generator().manual_seed(1)
    pos = [[torch.randn(1, 12, 32, generator=g), {}]]  # stand-ins for T5 outputs: 12 and 5 tokens
    neg = [[torch.randn(1, 5, 32, generator=g), {}]]
    latent = torch.zeros(1, 4, 64, 48)  # PixArt's position embedding needs latents of 48 px or more
    noise = torch.randn(latent.shape, generator=g)
    try:
        a = comfy.sample.sample(captured, noise, 2, 4.0, "euler", "normal", pos, neg, latent, seed=1, disable_pbar=True)
    finally:
        for h in hooks:
            h.remove()
    run = rec.run
    assert run.model_kind == "pixart" and run.layer_names == ["blocks.0", "blocks.1"] and run.grid == (32, 24)
    assert run.token_count == {0: 12, 1: 5} and run.steps(0) == run.steps(1) == [0, 1]
    # reference from the inputs each cross-attention saw; cond and uncond have different lengths, so
    # ComfyUI runs them as separate calls: tell them apart by their token count
    per = {}
    for i, x, cond in seen:
        module = blocks[i].cross_attn
        with torch.no_grad():
            q = module.q_linear(x).double()
            k = module.kv_linear(cond).view(1, -1, 2, module.num_heads, module.head_dim)[:, :, 0]
        k = k.reshape(x.shape[0], -1, q.shape[-1]).double()
        d = module.head_dim
        probs = sum(torch.softmax(q[..., h * d:(h + 1) * d] @ k[..., h * d:(h + 1) * d].transpose(1, 2) / math.sqrt(d), -1)
                    for h in range(module.num_heads)) / module.num_heads
        per.setdefault(k.shape[1], []).append(probs)
    for branch, length in ((0, 12), (1, 5)):
        calls = per[length]
        assert len(calls) == 2 * 2  # two blocks x two steps
        for step in (0, 1):
            ref = (calls[2 * step] + calls[2 * step + 1]) / 2  # both blocks are 32x24: plain mean
            want = ref.transpose(1, 2).reshape(1, length, 32, 24)
            assert torch.allclose(run.maps[branch][step].double(), want, rtol=1e-3, atol=1e-5)  # float16 store
    b = comfy.sample.sample(pixart, noise, 2, 4.0, "euler", "normal", pos, neg, latent, seed=1, disable_pbar=True)
    assert torch.equal(a, b)  # identical sampling, and sampling the plain model removed the object patches
    assert all(blk.cross_attn.forward.__func__ is MultiHeadCrossAttention.forward for blk in blocks)
