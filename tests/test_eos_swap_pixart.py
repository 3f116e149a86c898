"""Tier 2: EOSSwapConditioning with PixArt's T5 text encoder (no [SOS], no padding by default), and
the Keys-only / Values-only swap (EOSSwapKVPatch) sampled on a tiny PixArt.

No T5-XXL checkpoint can be built on a CPU, so this builds ComfyUI's own PixArt CLIP (real
PixArtTokenizer, real T5 classes) with one encoder layer through ComfyUI's
``t5xxl_model_config`` option, seeded random weights, and the real 4096-wide embeddings. The
K/V tests sample its conditionings with the tiny seeded PixArt of ``tiny_pixart.py`` (reading
4096-wide text) through ComfyUI's sampler, and check a block's cross-attention against a float64
reference built from the block's own layers.
"""

from __future__ import annotations

import math

import pytest
import torch

from eos_reference import BIRD, CHAIR
from tiny_pixart import tiny_pixart

pytestmark = pytest.mark.comfy


@pytest.fixture(scope="module")
def t5_clip(comfy):
    from devtools.seeding import seeded_init
    import comfy.sd as sd
    import comfy.text_encoders.pixart_t5 as pixart

    class Target:
        clip = pixart.PixArtT5XXL
        tokenizer = pixart.PixArtTokenizer
        params = {}

    config = {"num_layers": 1, "d_ff": 64, "num_heads": 2, "d_kv": 16}
    clip = sd.CLIP(target=Target, model_options={"t5xxl_model_config": config, "dtype": torch.float32})
    model = clip.cond_stage_model
    kept = tuple(n for n, _ in model.named_parameters() if n.endswith("logit_scale"))
    seeded_init(model, 7, keep=kept)  # the layer norms' gains are ones
    return clip


def _encode(clip, text):
    import nodes

    return nodes.CLIPTextEncode().encode(clip, text)[0][0][0]


def _swap(clip, a, b, **opts):
    import nodes

    node = nodes.NODE_CLASS_MAPPINGS["EOSSwapConditioning"]
    with torch.inference_mode():
        out = node.execute(clip, a, b, **opts)
    return out.args[0][0][0], out.args[1]


def _ids(clip, text):
    return [int(t) for t, _ in clip.tokenize(text)["t5xxl"][0]]


def test_t5_has_no_sos_and_its_single_eos_row_is_swapped(t5_clip):
    a, b = "A blue bird", "The sharp, angular edges of the city skyline pierced the clouds."
    ids_a, ids_b = _ids(t5_clip, a), _ids(t5_clip, b)
    assert ids_a[-1] == 1 and ids_a.count(1) == 1 and 0 not in ids_a  # ends with </s>, no padding, no start
    with torch.inference_mode():
        enc_a, enc_b = _encode(t5_clip, a), _encode(t5_clip, b)
    cond, table = _swap(t5_clip, a, b)
    n = len(ids_a) - 1
    assert cond.shape == enc_a.shape == (1, n + 1, 4096)
    assert torch.equal(cond[0, :n], enc_a[0, :n])  # every semantic row is A's (no [SOS] row)
    assert torch.equal(cond[0, n], enc_b[0, len(ids_b) - 1])  # A's </s> row <- B's </s> row
    assert "[SOS]" not in table.split("\n\n", 1)[1]


def test_t5_padding_from_a_minimum_length_counts_as_eos(t5_clip):
    clip = t5_clip.clone()
    clip.set_tokenizer_option("t5xxl_min_length", 12)
    a, b = "A blue bird", "A brown chair"
    ids_a, ids_b = _ids(clip, a), _ids(clip, b)
    assert len(ids_a) == 12 and ids_a[-1] == 0
    with torch.inference_mode():
        enc_a, enc_b = _encode(clip, a), _encode(clip, b)
    cond, _ = _swap(clip, a, b)
    ea, eb = ids_a.index(1), ids_b.index(1)
    assert torch.equal(cond[0, :ea], enc_a[0, :ea])
    assert torch.equal(cond[0, ea:], enc_b[0, eb:eb + 12 - ea])
    kept, _ = _swap(clip, a, b, padding_is_eos=False)
    assert torch.equal(kept[0, ea], enc_b[0, eb]) and torch.equal(kept[0, ea + 1:], enc_a[0, ea + 1:])


def test_sos_layouts_need_a_start_token(t5_clip):
    with pytest.raises(ValueError, match=r"EOSSwapConditioning: the layouts '77 x \[SOS\]' and .* need a \[SOS\] "
                                         r"token and fixed-length chunks, which the PixArt \(T5-XXL\) tokenizer does not have"):
        _swap(t5_clip, "A blue bird", "A brown chair", layout="77 x [SOS]")


# -- Keys-only / Values-only swap on PixArt (EOSSwapKVPatch) ----------------------------------------


@pytest.fixture(scope="module")
def pixart(comfy):
    return tiny_pixart(caption_channels=4096)  # reads the T5 rows of t5_clip


def _conditioning(clip, a, b, apply_to):
    import nodes

    with torch.inference_mode():
        return nodes.NODE_CLASS_MAPPINGS["EOSSwapConditioning"].execute(clip, a, b, apply_to=apply_to).args[0]


def _plain(clip, text):
    import nodes

    with torch.inference_mode():
        return nodes.CLIPTextEncode().encode(clip, text)[0]


def _kv_patch(model):
    import nodes

    return nodes.NODE_CLASS_MAPPINGS["EOSSwapKVPatch"].execute(model).args[0]


def _sample(model, positive, negative, steps=2):
    import comfy.sample

    latent = torch.zeros(1, 4, 48, 48)  # PixArt's position embedding needs latents of 48 px or more
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        return comfy.sample.sample(model, noise, steps, 4.0, "euler", "normal", positive, negative, latent, seed=1,
                                   disable_pbar=True)


@pytest.mark.parametrize("apply_to", ["keys only", "values only"])
@pytest.mark.parametrize("negative", ["", BIRD])  # 1 token: cond and uncond in two calls; A's length: one batch
def test_pixart_kv_swap_with_a_equals_b_reproduces_plain_sampling_exactly(t5_clip, pixart, apply_to, negative):
    kv_linear = pixart.model.diffusion_model.blocks[0].cross_attn.kv_linear
    calls = []
    hook = kv_linear.register_forward_hook(lambda *_: calls.append(1))
    try:
        swapped = _sample(_kv_patch(pixart), _conditioning(t5_clip, BIRD, BIRD, apply_to), _plain(t5_clip, negative))
        patched_calls, calls[:] = len(calls), []
        plain = _sample(pixart, _plain(t5_clip, BIRD), _plain(t5_clip, negative))
    finally:
        hook.remove()
    assert torch.equal(swapped, plain), f"max diff {(swapped - plain).abs().max()}"
    # the plain model: one kv_linear call per cross-attention call; the patched one adds the V pass of the
    # positive's call at each of the 2 steps
    assert patched_calls == len(calls) + 2


def _attend(module, x, keys, values):
    """float64 cross-attention of image rows ``x`` (N, C) over embedded text: K from ``keys``, V from ``values``."""
    h, d = module.num_heads, module.head_dim
    with torch.no_grad():
        q = module.q_linear(x).double()
        k = module.kv_linear(keys).view(keys.shape[0], 2, h * d)[:, 0].double()
        v = module.kv_linear(values).view(values.shape[0], 2, h * d)[:, 1].double()
    return torch.cat([torch.softmax(q[:, i * d:(i + 1) * d] @ k[:, i * d:(i + 1) * d].T / math.sqrt(d), -1)
                      @ v[:, i * d:(i + 1) * d] for i in range(h)], -1)


@pytest.mark.parametrize("apply_to", ["keys only", "values only"])
def test_pixart_keys_and_values_come_from_two_contexts_and_the_negative_reads_its_own(t5_clip, pixart, apply_to):
    """In block 1's cross-attention (one call: the negative has A's text, so A's length, and shares the
    batch; its rows are told from the positive's by ComfyUI's cond_or_uncond, never by their values)
    the positive row's kv_linear reads the embedded Keys context and then the embedded Values context,
    and its attention output is softmax(q K^T) V with K and V from those two; the negative row reads
    its own context for both."""
    import comfy.patcher_extension as pe

    net = pixart.model.diffusion_model
    module = net.blocks[1].cross_attn
    ids_a, ids_b = _ids(t5_clip, BIRD), _ids(t5_clip, CHAIR)
    with torch.inference_mode():
        enc_a, enc_b = _encode(t5_clip, BIRD), _encode(t5_clip, CHAIR)
    swapped = enc_a.clone()
    swapped[0, len(ids_a) - 1] = enc_b[0, len(ids_b) - 1]  # A's </s> row <- B's
    keys, values = (swapped, enc_a) if apply_to == "keys only" else (enc_a, swapped)
    seen = {"cross_attn": [], "kv_linear": [], "proj": []}
    hooks = [module.register_forward_pre_hook(lambda m, args: seen["cross_attn"].append(args[0].clone())),
             module.kv_linear.register_forward_pre_hook(lambda m, args: seen["kv_linear"].append(args[0].clone())),
             module.proj.register_forward_pre_hook(lambda m, args: seen["proj"].append(args[0].clone()))]
    order = []

    def record_order(executor, *args, **kwargs):
        order.append(list(args[5]["cond_or_uncond"]))  # (x, t, c_concat, c_crossattn, control, transformer_options)
        return executor(*args, **kwargs)

    recorder = _kv_patch(pixart).clone()
    recorder.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, "tests.order", record_order)
    try:
        _sample(recorder, _conditioning(t5_clip, BIRD, CHAIR, apply_to), _plain(t5_clip, BIRD), steps=1)
    finally:
        for h in hooks:
            h.remove()
    with torch.inference_mode():
        embed = {name: net.y_embedder(t.to(torch.float32), False)[0] for name, t in
                 (("keys", keys), ("values", values), ("neg", enc_a))}
    (x,), (out,), (chunks,) = seen["cross_attn"], seen["proj"], order
    assert x.shape[0] == 2 and sorted(chunks) == [0, 1]  # cond and uncond in one call, one row each
    assert len(seen["kv_linear"]) == 2  # the K pass and the V pass
    k_in, v_in = (t.view(2, -1, t.shape[-1]) for t in seen["kv_linear"])
    pos, neg = chunks.index(0), chunks.index(1)
    close = lambda a, b: torch.allclose(a.double(), b.double(), rtol=1e-4, atol=1e-5)
    assert close(k_in[pos], embed["keys"]) and close(v_in[pos], embed["values"])
    assert close(k_in[neg], embed["neg"]) and close(v_in[neg], embed["neg"])
    assert close(out[pos], _attend(module, x[pos], embed["keys"], embed["values"]))
    assert close(out[neg], _attend(module, x[neg], embed["neg"], embed["neg"]))
    wrong = _attend(module, x[pos], embed["keys"], embed["keys"])  # V from the Keys context
    assert (out[pos].double() - wrong).abs().max() > 1e-3  # K and V really come from two contexts


def test_pixart_patch_without_a_kv_conditioning_samples_as_before_and_leaves_the_users_model(t5_clip, pixart):
    import comfy.patcher_extension as pe
    from comfy.ldm.pixart.blocks import MultiHeadCrossAttention

    once = _kv_patch(pixart)
    twice = _kv_patch(once)
    _sample(twice, _conditioning(t5_clip, BIRD, CHAIR, "values only"), _plain(t5_clip, ""))  # a swap run first
    patched = _sample(twice, _plain(t5_clip, BIRD), _plain(t5_clip, ""))
    plain = _sample(pixart, _plain(t5_clip, BIRD), _plain(t5_clip, ""))
    assert torch.equal(patched, plain)  # nothing from the swap run is left; no K/V conditioning, no change
    blocks = pixart.model.diffusion_model.blocks
    assert not pixart.object_patches and not pixart.get_all_wrappers(pe.WrappersMP.APPLY_MODEL)
    assert not pixart.get_all_wrappers(pe.WrappersMP.CALC_COND_BATCH)
    assert all(blk.cross_attn.forward.__func__ is MultiHeadCrossAttention.forward for blk in blocks)
    assert sorted(twice.object_patches) == [f"diffusion_model.blocks.{i}.cross_attn.forward" for i in range(2)]
    assert len(twice.get_all_wrappers(pe.WrappersMP.APPLY_MODEL)) == 1
