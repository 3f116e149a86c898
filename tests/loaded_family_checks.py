"""Checks shared by the tests of the families built by ``tiny_loaded.py`` (Z-Image, HiDream, Qwen-Image-Edit):
graphs of held models and CLIPs (core CLIPTextEncode, core latents, core samplers, the pack's nodes, through
ComfyUI's executor), truncated guidance against core and against eq. 9 written out step by step, and the
joint-softmax reference of a capture read from the q and k a layer hands to attention."""

from __future__ import annotations

import math

import torch

from eq9_reference import Eq9Reference
from test_families import WINDOW_ALL, _count_rows, _samples, ksampler, truncated

__all__ = ["WINDOW_ALL", "ksampler", "truncated", "_samples", "graph", "check_window_over_all_steps_is_core",
           "check_truncated_window", "renormalised_block", "CAPTURE", "view", "template_roles", "check_class_shares",
           "check_joint_refusals"]

CAPTURE = {"record_uncond": True, "step_stride": 1, "max_tokens": 77, "max_grid": 64, "keep_layers": True,
           "memory_limit_mb": 1024.0}


def graph(model: str, clip: str, prompt="a photo of a cat", negative="", size=64) -> dict:
    """1 = the held model, 9 = the held CLIP, 2 / 3 = core CLIPTextEncode of the prompt / negative, 4 = core
    EmptySD3LatentImage (16 channels)."""
    return {
        "1": {"class_type": "ShapeFirstTestHeldModel", "inputs": {"name": model}},
        "9": {"class_type": "ShapeFirstTestHeldCLIP", "inputs": {"name": clip}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["9", 0]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["9", 0]}},
        "4": {"class_type": "EmptySD3LatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
    }


def check_window_over_all_steps_is_core(comfy, g: dict, steps=2, cfg=4.0):
    """TruncatedCFGSampler and TruncatedCFGModel under core KSampler, window over every step, are core
    KSampler bit for bit; and cfg acts (cfg 1 differs)."""
    g = dict(g)
    g["5"] = ksampler(steps=steps, cfg=cfg)
    g["6"] = truncated(steps=steps, cfg=cfg)
    g["7"] = ksampler(steps=steps, cfg=1.0)
    g["10"] = {"class_type": "TruncatedCFGModel", "inputs": {"model": ["1", 0], **WINDOW_ALL}}
    g["11"] = ksampler(model=("10", 0), steps=steps, cfg=cfg)
    r = comfy.run(g, outputs=["5", "6", "7", "11"])
    out = _samples(r, "5")
    assert torch.isfinite(out).all()
    assert torch.equal(out, _samples(r, "6"))
    assert torch.equal(out, _samples(r, "11"))
    assert (out - _samples(r, "7")).abs().max() > 1e-4  # guidance acts
    return r


def check_truncated_window(comfy, g: dict, expected_calls: list, steps=2, cfg=5.0, seed=11):
    """TruncatedCFGSampler with the window over the first half equals eq. 9 written out (core CFG, then core
    calc_cond_batch on the unconditional branch alone), differs from plain CFG, and the model runs exactly
    ``expected_calls`` (batch rows per call), as the node's report counts them."""
    import comfy.sample as comfy_sample
    import comfy.samplers as comfy_samplers
    import nodes

    r = comfy.run(g, outputs=["1", "2", "3", "4"])
    model, positive, negative = r.output_value("1", 0), r.output_value("2"), r.output_value("3")
    counted, calls = _count_rows(model)
    out = nodes.NODE_CLASS_MAPPINGS["TruncatedCFGSampler"].execute(
        model=counted, seed=seed, steps=steps, cfg=cfg, sampler_name="euler", scheduler="simple",
        positive=positive, negative=negative, latent_image=r.output_value("4"), denoise=1.0,
        guidance_start=0.0, guidance_end=0.5)
    assert calls == expected_calls
    report = out.ui["shapefirst_guidance"][0]
    assert report["rows_computed"] == sum(calls) and report["skipped_passes"] == steps - steps // 2
    got = out.result[0]["samples"]
    latent = comfy_sample.fix_empty_latent_channels(model, _samples(r, "4"))
    sigmas = comfy_samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", steps)

    def eq9(k):
        ref = Eq9Reference(comfy_samplers, model, positive, negative, cfg, k=k, tail="uncond",
                           schedule=sigmas.tolist())
        return ref.guider.sample(comfy_sample.prepare_noise(latent, seed), latent,
                                 comfy_samplers.sampler_object("euler"), sigmas, seed=seed)

    want = eq9(steps // 2)
    assert torch.equal(got, want.to(got.dtype)), (got - want).abs().max()
    assert (eq9(steps) - want).abs().max() > 1e-4  # the reference's tail is not plain CFG
    return report


def renormalised_block(q, k, text: tuple[int, int], image: tuple[int, int]):
    """q, k: (B, H, joint tokens, d) as handed to attention -> ((B, image, text) the joint softmax's
    image-query x text-key block divided by its row sum, mean of heads; the block's row sums)."""
    joint = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    block = joint[:, :, image[0]:image[0] + image[1], text[0]:text[0] + text[1]]
    return (block / block.sum(-1, keepdim=True)).mean(1), block.sum(-1)


def view(capture, clip, prompt: str, size=64) -> dict:
    """The ui of Attention Map View on ``capture`` (after its sampling run) over a blank picture: its token
    labels and roles come from the CLIP, its class weights from the capture, independently of the picture."""
    import nodes

    out = nodes.NODE_CLASS_MAPPINGS["AttentionMapView"].execute(
        capture=capture, images=torch.zeros(1, size, size, 3), clip=clip, prompt=prompt, branch="cond",
        tokens="auto", steps="auto", batch_index=0, cell_size=32, edge_size=64, canny_low=0.1, canny_high=0.2,
        edge_tolerance=1, filename_prefix="tests/attention_family")
    return out.ui


def template_roles(clip, prompt: str, keep_prefix: bool) -> list:
    """Roles of an LLM chat template's rows, from the tokenizer ComfyUI wraps applied to the template's parts
    and the prompt on their own: the prefix [SOS] (when the encoder keeps it), the prompt SEM, the closing EOS."""
    from shapefirst.tokens import EOS, SEM, SOS

    tok = clip.tokenizer
    sub = getattr(tok, tok.clip)
    before, after = tok.llama_template.split("{}")

    def count(text):
        return len(sub.tokenizer(text, add_special_tokens=False)["input_ids"])

    return [SOS] * (count(before) if keep_prefix else 0) + [SEM] * count(prompt) + [EOS] * count(after)


def check_class_shares(run, ui: dict, roles: list):
    """The view's roles are ``roles``, its class weights the sums of the capture's token means per role (cond,
    image 0, step 0)."""
    import pytest

    d = ui["shapefirst_attention"][0]
    assert [t["role"] for t in d["tokens"]] == roles
    means = run.token_means[0][0][0].double()
    for role in sorted(set(roles)):
        want = sum(means[i].item() for i, x in enumerate(roles) if x == role)
        assert d["class_shares"][role][0] == pytest.approx(want, abs=2e-3) and want > 0


def check_joint_refusals(model, label: str):
    """The text cache and the K/V patch refuse a joint-attention model, through their nodes, with the reason
    and the fix; ``label`` is how the message names the model ("Z-Image, NextDiT")."""
    import re

    import nodes
    import pytest

    window = {k: v for k, v in WINDOW_ALL.items()}
    with pytest.raises(ValueError, match=rf"^TruncatedCFGModel: text_cache 'tail_output' does not apply to this model "
                                         rf"\({re.escape(label)}\): joint attention: text and image tokens share one "
                                         rf"softmax.*\. Set text_cache to 'off'\.$"):
        nodes.NODE_CLASS_MAPPINGS["TruncatedCFGModel"].execute(model, **window, text_cache="tail_output")
    with pytest.raises(ValueError, match=rf"^EOSSwapKVPatch: EOS Swap K/V Patch does not apply to this model "
                                         rf"\({re.escape(label)}\): joint attention: the text tokens are projected "
                                         rf"to Keys and Values inside every block.*remove it and use EOS Swap "
                                         rf"Conditioning"):
        nodes.NODE_CLASS_MAPPINGS["EOSSwapKVPatch"].execute(model)
