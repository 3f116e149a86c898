"""Tier 2: AttentionMapCapture on the other supported UNets (SD2.x, SDXL) and on PixArt.

SD2.x and SDXL run from tiny random-weight checkpoints through ComfyUI's graph executor.
PixArt has no loadable tiny checkpoint: the test samples the tiny seeded PixArt of
``tiny_pixart.py`` with ComfyUI's sampler and conditioning tensors in place of T5 outputs.
"""

from __future__ import annotations

import math

import pytest
import torch

import graphs
from tiny_pixart import tiny_pixart

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


def test_pixart_cross_attention_is_captured_through_an_object_patch(comfy):
    import comfy.sample
    import nodes
    from comfy.ldm.pixart.blocks import MultiHeadCrossAttention

    pixart = tiny_pixart()
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


def _tiny_flux():
    import comfy.model_patcher as mp
    import comfy.supported_models as sm
    from devtools.hosts import host_unet

    unet = {"image_model": "flux", "guidance_embed": False, "in_channels": 16, "out_channels": 16, "vec_in_dim": 32,
            "context_in_dim": 32, "hidden_size": 64, "mlp_ratio": 2.0, "num_heads": 4, "depth": 1,
            "depth_single_blocks": 1, "axes_dim": [4, 6, 6], "theta": 10000, "patch_size": 2, "qkv_bias": True}
    config = sm.Flux(host_unet(unet))  # newer ComfyUI's FluxParams also require txt_ids_dims
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.diffusion_model.named_parameters():
            # RMS-norm scales of q and k at 1 (not near 0): attention far from uniform over the tokens
            qk_norm = "query_norm" in name or "key_norm" in name
            p.copy_(torch.ones(p.shape) if qk_norm else torch.randn(p.shape, generator=g) * 0.05)
    return mp.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def test_flux_joint_attention_image_to_text_probabilities(comfy):
    import comfy.sample
    import nodes

    flux = _tiny_flux()
    text, (h, w) = 6, (8, 12)  # latent 8x12, patch 2: 4x6 = 24 image tokens
    seen = []

    def observe(func, *args, **kwargs):  # the test's own override, installed first: the capture chains it
        q, k = args[0], args[1]
        seen.append((list(kwargs["transformer_options"]["cond_or_uncond"]), q.double().clone(), k.double().clone()))
        return func(*args, **kwargs)

    first = flux.clone()
    first.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = observe
    out = nodes.NODE_CLASS_MAPPINGS["AttentionMapCapture"].execute(first, **{**CAPTURE, "keep_layers": True})
    captured, rec = out.args
    g = torch.Generator().manual_seed(1)
    pos = [[torch.randn(1, text, 32, generator=g), {"pooled_output": torch.randn(1, 32, generator=g)}]]
    neg = [[torch.randn(1, text, 32, generator=g), {"pooled_output": torch.randn(1, 32, generator=g)}]]
    latent = torch.zeros(1, 16, h, w)
    noise = torch.randn(latent.shape, generator=g)
    a = comfy.sample.sample(captured, noise, 2, 3.0, "euler", "normal", pos, neg, latent, seed=1, disable_pbar=True)
    b = comfy.sample.sample(flux, noise, 2, 3.0, "euler", "normal", pos, neg, latent, seed=1, disable_pbar=True)
    assert torch.equal(a, b)  # sampling with the capture is bit-identical to sampling the plain model

    run = rec.run
    assert run.model_kind == "joint" and run.grid == (4, 6) and len(run.layer_names) == 2  # 1 double + 1 single
    assert run.token_count == {0: text, 1: text} and run.steps(0) == run.steps(1) == [0, 1]
    assert len(seen) == 2 * 2  # two joint calls per evaluation (cond and uncond batched), two steps
    n_img = (h // 2) * (w // 2)
    for i, (chunks, q, k) in enumerate(seen):
        step, layer = i // 2, run.layer_names[i % 2]
        # the full joint softmax over [text; image] keys from the layer's own q and k, per head ...
        joint = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)  # (B, H, L, L)
        block = joint[:, :, text:text + n_img, :text]  # ... its image-query x text-key block ...
        want = (block / block.sum(-1, keepdim=True)).mean(1)  # ... renormalised over text, mean of heads
        for ci, branch in enumerate(chunks):
            got = run.layers[branch][step][layer][0].double()  # (text, 4, 6)
            ref = want[ci].transpose(0, 1).reshape(text, h // 2, w // 2)
            assert torch.allclose(got, ref, rtol=1e-3, atol=1e-5), (step, layer, branch, (got - ref).abs().max())
    for branch in (0, 1):
        for step in (0, 1):
            sums = run.maps[branch][step].float().sum(1)
            assert torch.allclose(sums, torch.ones_like(sums), atol=1e-3)  # a distribution over text per pixel
    assert not torch.allclose(run.maps[0][0].float(), run.maps[1][0].float(), atol=1e-2)  # prompts differ
    assert run.maps[0][0].float().std() > 1e-2  # not uniform over the text tokens
