"""Tier 2: HunyuanVideo 1.5 (core's templates: CFGGuider cfg 6 on video latents), read through its
description, on the tiny file of tests/tiny_hv15.py loaded by core UNETLoader and sampled by core's samplers.

Its double blocks attend jointly over image and text tokens; ComfyUI 0.3.75 builds them flipped
([image; text] in each joint call), 0.33.0 [text; image]. The description reads the order from the
network; the test checks it against the values the block itself projects for its image and its text.
Truncated guidance is exact; the text cache and the K/V patch are refused (joint attention), the capture
too (the joint text also holds the image prompt's and quoted text's tokens, in numbers the conditioning
does not give).
"""

from __future__ import annotations

import pytest
import torch

import family_checks as checks
import tiny_hv15
from tiny_files import clip_node, detected, graph, loaded_as_saved

pytestmark = pytest.mark.comfy

STEPS, CFG = 2, 6.0
PROMPT = "a cat walks on the grass"  # 6 tokens + the template's 5 closing ones; "" becomes " " (1 + 5)


@pytest.fixture(scope="module")
def hv15(comfy, runtime_paths):
    name = tiny_hv15.ensure(runtime_paths["models"])
    with clip_node(tiny_hv15.text_encoder):
        yield graph(name, tiny_hv15.LATENT, prompt=PROMPT)


def test_core_detects_and_loads_the_file_as_hunyuan_video_15(comfy, hv15, runtime_paths):
    import comfy.utils as comfy_utils
    import folder_paths

    path = folder_paths.get_full_path("diffusion_models", hv15["1"]["inputs"]["unet_name"])
    sd = comfy_utils.load_torch_file(path)
    assert detected(sd) == ("HunyuanVideo15", tiny_hv15.unet())
    r = comfy.run(hv15, outputs=["1", "2", "3", "4"])
    model = r.output_value("1", 0)
    assert type(model.model).__name__ == "HunyuanVideo15"
    assert loaded_as_saved(model, sd)
    pos, neg = r.output_value("2")[0][0], r.output_value("3")[0][0]
    assert pos.shape == (1, 11, tiny_hv15.CONTEXT) and neg.shape == (1, 6, tiny_hv15.CONTEXT)
    assert r.output_value("4")["samples"].shape == (1, 32, 2, 4, 4)


def test_the_description_reads_the_joint_order_from_the_network(comfy, hv15):
    """The description's text and image spans of the double block's joint call hold exactly the Values the
    block projected from its text and from its image (read by hooks on its own qkv projections)."""
    import comfy.sample as comfy_sample

    r = comfy.run(hv15, outputs=["1", "2", "3", "4"])
    model = r.output_value("1", 0)
    network = checks.pack_module("model_families").describe(model)
    block = network.net.double_blocks[0]
    flipped = getattr(block, "flipped_img_txt", None)
    assert network.family.name == "HunyuanVideo 1.5" and network.label == "HunyuanVideo 1.5, HunyuanVideo"
    assert network.family.joint.order == (("image", "text") if flipped else ("text", "image"))
    values, calls = {}, []

    def keep(part):
        def hook(module, args, out):
            heads = block.num_heads
            values[part] = out.view(out.shape[0], out.shape[1], 3, heads, -1).permute(2, 0, 3, 1, 4)[2].clone()
        return hook

    def observe(func, *args, **kwargs):
        if kwargs.get("transformer_options", {}).get("block_type") == "double":
            calls.append((args[2].clone(), dict(values)))
        return func(*args, **kwargs)

    m = model.clone()
    m.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = observe
    handles = [block.img_attn.qkv.register_forward_hook(keep("image")),
               block.txt_attn.qkv.register_forward_hook(keep("text"))]
    try:
        latent = r.output_value("4")["samples"]
        comfy_sample.sample(m, torch.randn(latent.shape, generator=torch.Generator().manual_seed(3)), 1, CFG, "euler",
                            "simple", r.output_value("2"), r.output_value("3"), latent, seed=1, disable_pbar=True)
    finally:
        for h in handles:
            h.remove()
    assert len(calls) == 2  # cond and uncond: different token counts, separate calls
    for v, own in calls:
        text, image = own["text"].shape[2], own["image"].shape[2]
        assert image == 2 * 4 * 4 and v.shape[2] == text + image
        (t0, tn), (i0, n) = network.family.joint.spans(text, image)
        assert torch.equal(v[:, :, t0:t0 + tn], own["text"]) and torch.equal(v[:, :, i0:i0 + n], own["image"])


def test_window_over_all_steps_is_core_ksampler(comfy, hv15):
    checks.window_over_all_steps_is_core(comfy, hv15, STEPS, CFG)


def test_truncated_window_matches_a_step_by_step_reference_of_eq9(comfy, hv15):
    checks.truncated_window_is_eq9(comfy, hv15, STEPS, CFG)


def test_the_model_runs_exactly_the_expected_rows(comfy, hv15):
    # prompts of different token counts: core runs cond and uncond as separate one-row calls
    checks.runs_the_expected_rows(comfy, hv15, STEPS, CFG, expected=[1, 1, 1])


def test_text_cache_kv_patch_and_capture_are_refused_with_the_reason(comfy, hv15):
    import nodes

    model = comfy.run(hv15, outputs=["1"]).output_value("1", 0)
    checks.joint_refusals(model, "HunyuanVideo 1.5, HunyuanVideo")
    with pytest.raises(ValueError, match=r"^AttentionMapCapture: Attention Map Capture does not apply to this model "
                                         r"\(HunyuanVideo 1\.5, HunyuanVideo\): its joint text holds the image "
                                         r"prompt's and the quoted text's \(glyph\) tokens .*\. Connect an .* "
                                         r"model\.$"):
        nodes.NODE_CLASS_MAPPINGS["AttentionMapCapture"].execute(model, **checks.CAPTURE)


def test_eos_swap_refuses_hunyuan_video_15_s_tokenizer_with_the_reason(comfy, hv15):
    """Its tokenizer (video chat template, byT5 glyph tokens for quoted text) is not described: the swap
    refuses rather than read its rows as another family's."""
    import nodes

    with pytest.raises(ValueError, match=r"^EOSSwapConditioning: clip has a tokenizer this node does not know "
                                         r"\(HunyuanVideo15Tokenizer\); \[SOS\]/\[EOS\] positions are only defined"):
        nodes.NODE_CLASS_MAPPINGS["EOSSwapConditioning"].execute(tiny_hv15.text_encoder(), prompt_a="a cat",
                                                                 prompt_b="a dog")
