"""Tier 2: Wan 2.1 image-to-video, read through its description: the capture, the text cache and the K/V
patch on a tiny seeded I2V network (tests/tiny_wan_i2v.py) sampled by core's sampler.

Each block's cross-attention first attends to the start image's 257 CLIP-vision tokens (its own k_img /
v_img projections), then to the text (k / v of the embedded text), and adds the two. The text's part is
a cross-attention like text-to-video's, so every feature applies to it: the capture reads the text's
call (the second), the text cache reuses the layer's output in the tail, the K/V patch takes V of the
text from the Values context and leaves the image branch alone. References are the layers' own q, k
and v read by forward hooks, or core sampling.
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from tiny_wan_i2v import TEXT_WIDTH, conditioning, latent, tiny_wan_i2v

pytestmark = pytest.mark.comfy

STEPS, CFG = 4, 5.0
CAPTURE = {"record_uncond": True, "step_stride": 1, "max_tokens": 77, "max_grid": 64, "keep_layers": True,
           "memory_limit_mb": 1024.0, "frame_stride": 2}


def _pack(name: str):
    import nodes

    base = nodes.NODE_CLASS_MAPPINGS["TruncatedCFGSampler"].__module__.rsplit(".", 1)[0]
    return importlib.import_module(f"{base}.{name}")


def _node(name: str):
    import nodes

    return nodes.NODE_CLASS_MAPPINGS[name]


@pytest.fixture(scope="module")
def i2v(comfy):
    g = torch.Generator().manual_seed(5)
    model = tiny_wan_i2v()
    image = torch.randn(1, 257, 1280, generator=g)
    texts = {name: torch.randn(1, n, TEXT_WIDTH, generator=g) for name, n in (("a", 8), ("b", 8), ("neg", 5))}
    noise = torch.randn(latent().shape, generator=g)
    return model, image, texts, noise


def _sample(model, positive, negative, noise, steps=STEPS):
    import comfy.sample

    return comfy.sample.sample(model, noise, steps, CFG, "euler", "normal", positive, negative, latent(), seed=1,
                               disable_pbar=True)


def test_the_description_reads_wan_image_to_video(i2v):
    model, *_ = i2v
    network = _pack("model_families").describe(model)
    assert network.family.name == "Wan 2.1 image-to-video"
    assert network.layers == ["blocks.0.cross_attn", "blocks.1.cross_attn"]
    for feature in ("truncation", "text_cache", "capture", "kv_patch"):
        assert network.why_not(feature) is None, feature
    assert "UNet cross-attention" in network.why_not("keys_values")


@pytest.mark.parametrize("with_image", [True, False])
def test_capture_reads_the_text_call_of_each_block(i2v, with_image):
    """The capture's maps are softmax(q k^T) of the text's own call (q after norm_q, k after norm_k of the
    embedded text), per kept frame; the CLIP-vision call is not mixed in, also when the conditioning holds no
    image features (core then runs both calls over the text). Sampling with the capture is bit-identical."""
    model, image, texts, noise = i2v
    features = image if with_image else None
    pos, neg = conditioning(texts["a"], features), conditioning(texts["neg"], features)
    plain = _sample(model, pos, neg, noise, steps=2)
    captured, rec = _node("AttentionMapCapture").execute(model, **CAPTURE).args
    dm = model.model.diffusion_model
    seen = []
    hooks = [h for b in dm.blocks for h in (
        b.cross_attn.norm_q.register_forward_hook(lambda m, i, o: seen.append(("q", o.detach().double()))),
        b.cross_attn.norm_k.register_forward_hook(lambda m, i, o: seen.append(("k", o.detach().double()))))]
    try:
        got = _sample(captured, pos, neg, noise, steps=2)
    finally:
        for h in hooks:
            h.remove()
    assert torch.equal(got, plain)
    run = rec.run
    assert run.model_kind == "video" and run.frames == [0, 2] and run.layer_names == ["blocks.0", "blocks.1"]
    assert run.token_count == {0: 8, 1: 5}
    heads = dm.blocks[0].cross_attn.num_heads
    for step in range(2):  # per step: q, k of block 0, then of block 1 (cond and uncond: separate calls, 8 vs 5)
        calls = seen[step * 8:(step + 1) * 8]
        for call in range(2):  # cond first in ComfyUI's order
            for j, layer in enumerate(run.layer_names):
                (_, q), (_, k) = calls[call * 4 + 2 * j:call * 4 + 2 * j + 2]
                if k.shape[1] != 8:
                    continue  # the uncond call (5 tokens), checked through the cond one
                b, n, c = q.shape
                qh, kh = q.view(b, n, heads, c // heads), k.view(b, 8, heads, c // heads)
                probs = torch.softmax(torch.einsum("bnhd,bkhd->bhnk", qh, kh) / math.sqrt(c // heads), -1).mean(1)
                for entry, f in enumerate((0, 2)):
                    ref = probs[0, f * 16:(f + 1) * 16].transpose(0, 1).reshape(8, 4, 4)
                    mine = run.layers[0][step][layer][entry].double()
                    assert torch.allclose(mine, ref, rtol=1e-3, atol=2e-5), (step, layer, f)


def test_the_tail_cache_reuses_the_layer_output_in_the_tail(i2v):
    model, image, texts, noise = i2v
    pos, neg = conditioning(texts["a"], image), conditioning(texts["neg"], image)
    patch = _pack("truncated_cfg_patch")
    window = patch.GuidanceWindow(end=0.5, cfg=CFG)
    exact = patch.patch_model(model, window)[0]
    cached = patch.patch_model(model, window)[0]
    _pack("text_cache").attach(cached, "tail_output", "test")
    calls = []
    hooks = [b.cross_attn.q.register_forward_hook(lambda *_: calls.append(1)) for b in model.model.diffusion_model.blocks]
    try:
        a = _sample(exact, pos, neg, noise)
        n_exact = len(calls)
        calls.clear()
        b = _sample(cached, pos, neg, noise)
    finally:
        for h in hooks:
            h.remove()
    blocks, k = 2, STEPS // 2  # cond and uncond separate calls (8 and 5 tokens) while guided
    assert n_exact == blocks * (2 * k + (STEPS - k)) and len(calls) == blocks * 2 * k
    drift = (b - a).abs().mean().item()
    assert 0 < drift < 0.1 * a.abs().mean().item()


def _kv(keys, values):
    return {_pack("eos_swap").KV_KEY: {"keys": keys, "values": values, "mode": "keys only"}}


def test_kv_patch_with_a_equal_to_b_samples_exactly_as_plain(i2v):
    model, image, texts, noise = i2v
    a = texts["a"]
    plain = _sample(model, conditioning(a, image), conditioning(texts["neg"], image), noise)
    patched = _node("EOSSwapKVPatch").execute(model).args[0]
    swapped = _sample(patched, conditioning(a, image, _kv(a, a.clone())), conditioning(texts["neg"], image), noise)
    assert torch.equal(swapped, plain)


def test_kv_patch_takes_the_texts_values_from_the_values_context_and_leaves_the_image_branch(i2v):
    """In the positive's rows block 0's k projects the embedded Keys context and its v the embedded Values
    context; k_img / v_img project the start image's features as without the patch; the negative's k and v
    both read its own text."""
    model, image, texts, noise = i2v
    dm = model.model.diffusion_model
    a, b = texts["a"], texts["b"]
    patched = _node("EOSSwapKVPatch").execute(model).args[0]
    block = dm.blocks[0].cross_attn
    seen = {}
    hooks = [getattr(block, name).register_forward_hook(
        lambda m, i, o, name=name: seen.setdefault(name, []).append(i[0].detach().clone()))
        for name in ("k", "v", "k_img", "v_img")]
    try:
        _sample(patched, conditioning(a, image, _kv(a, b)), conditioning(texts["neg"], image), noise, steps=1)
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        embedded = {name: dm.text_embedding(t) for name, t in texts.items()}
        features = dm.img_emb(image)
    (k_pos, k_neg), (v_pos, v_neg) = seen["k"], seen["v"]  # cond then uncond (8 and 5 tokens: two calls)
    assert torch.equal(k_pos, embedded["a"]) and torch.equal(v_pos, embedded["b"])
    assert torch.equal(k_neg, embedded["neg"]) and torch.equal(v_neg, embedded["neg"])
    for name in ("k_img", "v_img"):
        assert all(torch.equal(x, features) for x in seen[name]), name
