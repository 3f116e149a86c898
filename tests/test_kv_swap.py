"""Tier 2: Keys-only / Values-only EOS swaps (Appendix G) through EOSSwapKVPatch in a real ComfyUI.

Checks the projections at a real cross-attention layer (K = to_k of one context, V = to_v of the
other), exact equality with plain CLIPTextEncode + KSampler when A = B, and that the negative
prompt keeps its own context even when its tensor equals prompt A's.
"""

from __future__ import annotations

import pytest
import torch

from devtools.harness import GraphError
from eos_reference import BIRD, CHAIR, END, OPTS, SKYLINE, reference_swap

pytestmark = pytest.mark.comfy


def kv_graph(ckpt, a, b, negative, apply_to, batch=1, steps=3, seed=5):
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": a, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": batch}},
        "5": {"class_type": "EOSSwapConditioning", "inputs": {
            "clip": ["1", 1], "prompt_a": a, "prompt_b": b, **dict(OPTS, apply_to=apply_to)}},
        "6": {"class_type": "EOSSwapKVPatch", "inputs": {"model": ["1", 0]}},
        "7": {"class_type": "KSampler", "inputs": {
            "model": ["6", 0], "seed": seed, "steps": steps, "cfg": 6.0, "sampler_name": "euler", "scheduler": "normal",
            "positive": ["5", 0], "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0}},
        "8": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": seed, "steps": steps, "cfg": 6.0, "sampler_name": "euler", "scheduler": "normal",
            "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0}},
        "9": {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": "tests/kv"}},
        "10": {"class_type": "SaveLatent", "inputs": {"samples": ["8", 0], "filename_prefix": "tests/kv_plain"}},
    }


@pytest.mark.parametrize("apply_to", ["keys only", "values only"])
@pytest.mark.parametrize("batch,negative", [(1, ""), (2, ", ".join(["a grey blurry photo, low quality"] * 12))])
def test_a_equals_b_reproduces_plain_sampling_exactly(comfy, sd15_ckpt, apply_to, batch, negative):
    r = comfy.run(kv_graph(sd15_ckpt, SKYLINE, SKYLINE, negative, apply_to, batch=batch), fresh_cache=False)
    swapped, plain = r.output_value("7")["samples"], r.output_value("8")["samples"]
    assert torch.equal(swapped, plain), f"max diff {(swapped - plain).abs().max()}"
    assert r.output_value("3", 0)[0][0].shape[1] == (77 if not negative else 154)


def test_a_different_b_changes_the_image(comfy, sd15_ckpt):
    r = comfy.run(kv_graph(sd15_ckpt, BIRD, SKYLINE, "", "values only"), fresh_cache=False)
    assert not torch.equal(r.output_value("7")["samples"], r.output_value("8")["samples"])


def _capture_middle_attention(model):
    """A clone whose middle-block cross-attention records the projected K and V per batch chunk."""
    from comfy.ldm.modules.attention import optimized_attention

    seen = []

    def replace(q, k, v, extra_options):
        seen.append((k.clone(), v.clone(), list(extra_options["cond_or_uncond"])))
        return optimized_attention(q, k, v, extra_options["n_heads"])

    m = model.clone()
    m.set_model_attn2_replace(replace, "middle", 0, 0)
    return m, seen


@pytest.mark.parametrize("apply_to", ["keys only", "values only"])
def test_keys_and_values_are_projected_from_two_contexts_and_the_negative_is_untouched(comfy, sd15_ckpt, apply_to):
    import nodes

    long_negative = ", ".join([BIRD + " on a branch"] * 10)  # 2 chunks: the positive is repeated to 154 tokens
    r = comfy.run(kv_graph(sd15_ckpt, BIRD, CHAIR, BIRD, apply_to), fresh_cache=False)  # negative text = A
    a_enc = r.output_value("2", 0)[0][0]
    clip = r.output_value("1", 1)
    b_enc = clip.encode_from_tokens_scheduled(clip.tokenize(CHAIR))[0][0]
    ids = [[[int(t) for t, _ in c] for c in clip.tokenize(p)["l"]] for p in (BIRD, CHAIR)]
    swapped = reference_swap(a_enc, b_enc, ids[0], ids[1])
    keys_ctx, values_ctx = (swapped, a_enc) if apply_to == "keys only" else (a_enc, swapped)
    negatives = {"same as A": r.output_value("3", 0),
                 "long": clip.encode_from_tokens_scheduled(clip.tokenize(long_negative))}
    patched = r.output_value("6", 0)
    attn2 = patched.model.diffusion_model.middle_block[1].transformer_blocks[0].attn2
    for name, negative in negatives.items():
        neg = negative[0][0]
        tokens = neg.shape[1]
        recorder, seen = _capture_middle_attention(patched)
        with torch.inference_mode():
            nodes.common_ksampler(recorder, 1, 2, 6.0, "euler", "normal", r.output_value("5", 0), negative,
                                  {"samples": torch.zeros(2, 4, 8, 8)})
        assert len(seen) == 2, name
        with torch.no_grad():
            def proj(layer, ctx):
                ctx = ctx.repeat(1, tokens // ctx.shape[1], 1).to(attn2.to_k.weight.dtype)
                return layer(ctx)[0]
            want = {0: (proj(attn2.to_k, keys_ctx), proj(attn2.to_v, values_ctx)),
                    1: (proj(attn2.to_k, neg), proj(attn2.to_v, neg))}
            wrong_v = proj(attn2.to_v, keys_ctx)
        for k, v, chunks in seen:
            assert k.shape[1] == tokens and len(chunks) == 2 and k.shape[0] == 4  # cond + uncond, batch 2
            for i, c in enumerate(chunks):
                for row in (2 * i, 2 * i + 1):
                    assert torch.allclose(k[row], want[c][0], rtol=1e-4, atol=1e-4), (name, c, "keys")
                    assert torch.allclose(v[row], want[c][1], rtol=1e-4, atol=1e-4), (name, c, "values")
            cond_row = 2 * chunks.index(0)
            assert (v[cond_row] - wrong_v).abs().max() > 1e-2  # keys and values really differ


def test_without_a_kv_conditioning_the_patched_model_samples_exactly_as_before(comfy, sd15_ckpt):
    g = kv_graph(sd15_ckpt, BIRD, CHAIR, "", "keys only")
    g["7"]["inputs"]["positive"] = ["2", 0]  # plain CLIPTextEncode through the patched model
    r = comfy.run(g, fresh_cache=False)
    assert torch.equal(r.output_value("7")["samples"], r.output_value("8")["samples"])


def test_the_users_model_is_cloned_and_patching_twice_adds_nothing(comfy, sd15_ckpt):
    import comfy.patcher_extension as pe

    g = kv_graph(sd15_ckpt, BIRD, CHAIR, "", "keys only")
    g["11"] = {"class_type": "EOSSwapKVPatch", "inputs": {"model": ["6", 0]}}
    g["7"]["inputs"]["model"] = ["11", 0]
    r = comfy.run(g, fresh_cache=False)
    original, once, twice = (r.output_value(n, 0) for n in ("1", "6", "11"))

    def attn2_patches(m):
        return m.model_options.get("transformer_options", {}).get("patches", {}).get("attn2_patch", [])

    assert not attn2_patches(original) and not original.get_all_wrappers(pe.WrappersMP.CALC_COND_BATCH)
    assert len(attn2_patches(once)) == len(attn2_patches(twice)) == 1
    assert len(twice.get_all_wrappers(pe.WrappersMP.CALC_COND_BATCH)) == 1


def test_a_kv_conditioning_changed_downstream_is_left_alone_with_a_warning(comfy, sd15_ckpt, caplog):
    g = kv_graph(sd15_ckpt, BIRD, CHAIR, "", "values only")
    g["11"] = {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["5", 0]}}
    g["7"]["inputs"]["negative"] = ["11", 0]  # a common negative: the positive, zeroed (keeps the dict)
    g["12"] = {"class_type": "KSampler", "inputs": dict(g["7"]["inputs"], model=["1", 0])}  # same, unpatched
    g["13"] = {"class_type": "SaveLatent", "inputs": {"samples": ["12", 0], "filename_prefix": "tests/kv_zero"}}
    g["5"]["inputs"]["prompt_b"] = BIRD  # A = B: the positive swap is neutral, so only the negative could differ
    with caplog.at_level("WARNING", logger="shapefirst"):
        r = comfy.run(g, fresh_cache=False)
    assert torch.equal(r.output_value("7")["samples"], r.output_value("12")["samples"])  # zeros stay zeros
    warnings = [m for m in caplog.messages if "was changed after that node" in m]
    assert len(warnings) == 1 and warnings[0].startswith("EOSSwapKVPatch: a conditioning from EOSSwapConditioning")


def test_sdxl_values_only_with_a_equals_b_is_exact(comfy, sdxl_ckpt):
    r = comfy.run(kv_graph(sdxl_ckpt, BIRD, BIRD, "", "values only", steps=2), fresh_cache=False)
    assert torch.equal(r.output_value("7")["samples"], r.output_value("8")["samples"])
    assert r.output_value("5", 0)[0][0].shape == (1, 77, 2048)
    assert END in [int(t) for t, _ in r.output_value("1", 1).tokenize(BIRD)["l"][0]]


def test_values_only_inside_a_step_window(comfy, sd15_ckpt):
    """values only for the first half: inside the window the cond's Values are the swap and its Keys
    are A; outside, plain A on both sides (the window's other entry is core-style plain A)."""
    import nodes

    g = kv_graph(sd15_ckpt, BIRD, CHAIR, "", "values only")
    g["5"]["inputs"]["end_percent"] = 0.5
    r = comfy.run(g, fresh_cache=False)
    a_enc = r.output_value("2", 0)[0][0]
    clip = r.output_value("1", 1)
    b_enc = clip.encode_from_tokens_scheduled(clip.tokenize(CHAIR))[0][0]
    ids = [[[int(t) for t, _ in c] for c in clip.tokenize(p)["l"]] for p in (BIRD, CHAIR)]
    swapped = reference_swap(a_enc, b_enc, ids[0], ids[1])
    seen = []

    def after_ours(n, context, value, extra_options):  # runs after the K/V patch in the same list
        if extra_options.get("block") == ("middle", 0):
            i = extra_options["cond_or_uncond"].index(0)
            per = context.shape[0] // len(extra_options["cond_or_uncond"])
            seen.append((float(extra_options["sigmas"][0]), context[i * per].clone(), value[i * per].clone()))
        return n, context, value

    recorder = r.output_value("6", 0).clone()
    recorder.set_model_attn2_patch(after_ours)
    with torch.inference_mode():
        nodes.common_ksampler(recorder, 2, 4, 6.0, "euler", "normal", r.output_value("5", 0), r.output_value("3", 0),
                              {"samples": torch.zeros(1, 4, 8, 8)})
    boundary = recorder.get_model_object("model_sampling").percent_to_sigma(0.5)
    inside = [s >= boundary for s, _, _ in seen]
    assert any(inside) and not all(inside)
    for (sigma, keys, values), within in zip(seen, inside):
        assert torch.equal(keys, a_enc[0])
        assert torch.equal(values, (swapped if within else a_enc)[0]), sigma
