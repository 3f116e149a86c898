"""The checks every added joint family goes through: the families built as files by ``tiny_files.py``
(tests/test_family_flux2.py, test_family_chroma.py, test_family_hv15.py: graphs of tiny_files.graph) and the
held models of ``tiny_loaded.py`` (test_family_zimage.py, test_family_hidream.py, test_family_qwen_edit.py:
graphs of :func:`held_graph`). Node ids: 1 model, 2 / 3 prompts, 4 latent; run by ComfyUI's real executor,
samplers and the pack's nodes.

* truncation exact: the window over all steps is core KSampler bit for bit (the sampler node and the model
  patch under core KSampler), and a truncated window equals eq. 9 written step by step with core's own
  functions (tests/eq9_reference.py), which differs from plain CFG;
* the rows: the diffusion model runs exactly the expected batch rows, and the node's report counts them;
* the refusals of a joint family: text cache (both modes) and the K/V patch, with the family's reason and
  the fix, naming the node;
* the capture: sampling with it is sampling without it, bit for bit; its maps against the joint softmax's
  renormalised image-query x text-key block; the view's token roles and class weights.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from eq9_reference import Eq9Reference
from test_families import WINDOW_ALL, _count_rows, _samples, ksampler, truncated

__all__ = ["WINDOW_ALL", "ksampler", "truncated", "_samples", "pack_module", "held_graph",
           "window_over_all_steps_is_core", "truncated_window_is_eq9", "runs_the_expected_rows",
           "truncated_window_rows_and_eq9", "joint_refusals", "capture_beside_joint_calls", "capture_while_watched",
           "renormalised_block",
           "CAPTURE", "view", "template_roles", "check_class_shares", "check_maps_and_view_roles"]

CAPTURE = {"record_uncond": True, "step_stride": 1, "max_tokens": 77, "max_grid": 64, "keep_layers": True,
           "memory_limit_mb": 1024.0}


def pack_module(name: str):
    """The pack's module ``name`` as ComfyUI loaded it (the custom-nodes package, not this checkout's)."""
    import importlib

    import nodes

    base = nodes.NODE_CLASS_MAPPINGS["TruncatedCFGSampler"].__module__.rsplit(".", 1)[0]
    return importlib.import_module(f"{base}.{name}")


def held_graph(model: str, clip: str, prompt="a photo of a cat", negative="", size=64) -> dict:
    """1 = the held model, 9 = the held CLIP, 2 / 3 = core CLIPTextEncode of the prompt / negative, 4 = core
    EmptySD3LatentImage (16 channels)."""
    return {
        "1": {"class_type": "ShapeFirstTestHeldModel", "inputs": {"name": model}},
        "9": {"class_type": "ShapeFirstTestHeldCLIP", "inputs": {"name": clip}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["9", 0]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["9", 0]}},
        "4": {"class_type": "EmptySD3LatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
    }


def window_over_all_steps_is_core(comfy, g: dict, steps: int = 2, cfg: float = 4.0):
    """TruncatedCFGSampler and TruncatedCFGModel under core KSampler, window over every step, are core
    KSampler bit for bit; and cfg acts (cfg 1 differs). Returns the run."""
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
    assert (out - _samples(r, "7")).abs().max() > 1e-4  # guidance acts: cfg is not 1
    return r


def _check_eq9(r, got, steps: int, cfg: float, end: float, seed: int, exact: bool):
    """``got`` (sampled from r's model 1, prompts 2 / 3, latent 4, guidance over the first ``end`` of the
    steps) equals eq. 9 written out (core CFG, then core calc_cond_batch on the unconditional branch alone):
    bit for bit where ``exact``, else within 1e-5 of its range; and that reference differs from plain CFG."""
    import comfy.sample as comfy_sample
    import comfy.samplers as comfy_samplers

    model = r.output_value("1", 0)
    latent = comfy_sample.fix_empty_latent_channels(model, _samples(r, "4"))
    sigmas = comfy_samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", steps)

    def reference(k):
        ref = Eq9Reference(comfy_samplers, model, r.output_value("2"), r.output_value("3"), cfg, k=k, tail="uncond",
                           schedule=sigmas.tolist())
        return ref.guider.sample(comfy_sample.prepare_noise(latent, seed), latent,
                                 comfy_samplers.sampler_object("euler"), sigmas, seed=seed)

    want = reference(int(steps * end)).to(got.dtype)
    if exact:
        assert torch.equal(got, want), (got - want).abs().max()
    else:
        assert torch.allclose(got, want, rtol=0, atol=1e-5 * want.abs().max().item()), (got - want).abs().max()
    assert (reference(steps) - want).abs().max() > 1e-4  # the reference's tail is not plain CFG


def truncated_window_is_eq9(comfy, g: dict, steps: int, cfg: float, end: float = 0.5, seed: int = 11):
    """The TruncatedCFGSampler node of a graph, window over the first ``end`` of the steps: eq. 9 (within
    1e-5 of its range)."""
    g = dict(g)
    g["5"] = truncated(steps=steps, seed=seed, cfg=cfg, window={**WINDOW_ALL, "guidance_end": end})
    r = comfy.run(g, outputs=["1", "2", "3", "4", "5"])
    _check_eq9(r, _samples(r, "5"), steps, cfg, end, seed, exact=False)


def runs_the_expected_rows(comfy, g: dict, steps: int, cfg: float, expected: list, end: float = 0.5,
                           seed: int = 1):
    """The truncated sampler's model calls (batch rows per call) and its report. Returns the run of the
    graph's loaders and the sampler node's output."""
    import nodes

    r = comfy.run(g, outputs=["1", "2", "3", "4"])
    model, calls = _count_rows(r.output_value("1", 0))
    out = nodes.NODE_CLASS_MAPPINGS["TruncatedCFGSampler"].execute(
        model=model, seed=seed, steps=steps, cfg=cfg, sampler_name="euler", scheduler="simple",
        positive=r.output_value("2"), negative=r.output_value("3"), latent_image=r.output_value("4"), denoise=1.0,
        guidance_start=0.0, guidance_end=end)
    assert calls == expected
    guided = int(round(steps * end))
    report = out.ui["shapefirst_guidance"][0]
    assert report["rows_computed"] == sum(calls) and report["skipped_passes"] == steps - guided
    return r, out


def truncated_window_rows_and_eq9(comfy, g: dict, expected_calls: list, steps=2, cfg=5.0, seed=11):
    """TruncatedCFGSampler with the window over the first half runs exactly ``expected_calls`` (batch rows per
    call), as the node's report counts them, and its output is eq. 9 bit for bit. Returns the report."""
    r, out = runs_the_expected_rows(comfy, g, steps, cfg, expected_calls, seed=seed)
    _check_eq9(r, out.result[0]["samples"], steps, cfg, 0.5, seed, exact=True)
    return out.ui["shapefirst_guidance"][0]


def joint_refusals(model, label: str):
    """The text cache (both modes) and the K/V patch refuse a joint-attention model, through their nodes, with
    the reason and the fix; ``label`` is how the message names the model ("Z-Image, NextDiT")."""
    import nodes

    node, name = nodes.NODE_CLASS_MAPPINGS["TruncatedCFGModel"], re.escape(label)
    with pytest.raises(ValueError, match=rf"^TruncatedCFGModel: text_cache 'tail_output' does not apply to this model "
                                         rf"\({name}\): joint attention: text and image tokens share one "
                                         rf"softmax.*\. Set text_cache to 'off'\.$"):
        node.execute(model, **WINDOW_ALL, text_cache="tail_output")
    with pytest.raises(ValueError, match=rf"^TruncatedCFGModel: text_cache 'keys_values' does not apply to this model "
                                         rf"\({name}\): keys_values applies to UNet cross-attention.*"):
        node.execute(model, **WINDOW_ALL, text_cache="keys_values")
    with pytest.raises(ValueError, match=rf"^EOSSwapKVPatch: EOS Swap K/V Patch does not apply to this model "
                                         rf"\({name}\): joint attention: the text tokens are projected "
                                         rf"to Keys and Values inside every block.*remove it and use EOS Swap "
                                         rf"Conditioning"):
        nodes.NODE_CLASS_MAPPINGS["EOSSwapKVPatch"].execute(model)


def capture_beside_joint_calls(comfy, g: dict, steps: int, cfg: float, capture: dict):
    """Samples the graph's model with Attention Map Capture over the test's own attention override installed
    first (the capture chains it), and checks the result is sampling without the capture bit for bit.
    Returns the capture's run, the prompt and negative conditionings, and per joint call what it handed to
    attention (after the q/k norms and RoPE): (cond_or_uncond, "block_type.block_index", q, k) in float64."""
    import comfy.sample as comfy_sample
    import nodes

    r = comfy.run(g, outputs=["1", "2", "3", "4"])
    model, pos, neg = r.output_value("1", 0), r.output_value("2"), r.output_value("3")
    seen = []

    def observe(func, *args, **kwargs):
        to = kwargs["transformer_options"]
        seen.append((list(to["cond_or_uncond"]), f"{to['block_type']}.{to['block_index']}", args[0].double().clone(),
                     args[1].double().clone()))
        return func(*args, **kwargs)

    first = model.clone()
    first.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = observe
    captured, rec = nodes.NODE_CLASS_MAPPINGS["AttentionMapCapture"].execute(first, **capture).args
    latent = r.output_value("4")["samples"]
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(2))
    a = comfy_sample.sample(captured, noise, steps, cfg, "euler", "simple", pos, neg, latent, seed=1, disable_pbar=True)
    b = comfy_sample.sample(model, noise, steps, cfg, "euler", "simple", pos, neg, latent, seed=1, disable_pbar=True)
    assert torch.equal(a, b)
    return rec.run, pos, neg, seen


def capture_while_watched(comfy, loaders: dict, context_module, patches: list, monkeypatch):
    """Runs ``loaders`` (a graph of the model 1, prompts 2 / 3, latent 4), then Attention Map Capture on its
    model under core KSampler (one step) while ``patches`` ((owner, name, replacement), set through
    ``monkeypatch`` and undone after) watch what the layers hand to attention and a forward hook on
    ``context_module`` keeps the context of each model call; sampling with the capture is core KSampler's
    without it, bit for bit. Returns the capture, the prompt's and the negative's contexts (core
    CLIPTextEncode's) and the contexts the model was called with (float64, in call order)."""
    g = dict(loaders)
    g["5"] = {"class_type": "AttentionMapCapture", "inputs": {"model": ["1", 0], **CAPTURE}}
    g["7"] = ksampler(model=("5", 0), steps=1)
    r0 = comfy.run(loaders, outputs=["2", "3"])
    positive, negative = r0.output_value("2")[0][0], r0.output_value("3")[0][0]
    contexts = []
    handle = context_module.register_forward_hook(lambda m, i, o: contexts.append(i[0].detach().double().clone()))
    for owner, name, replacement in patches:
        monkeypatch.setattr(owner, name, replacement)
    try:
        r = comfy.run(g, fresh_cache=False, outputs=["7"])
    finally:
        handle.remove()
        monkeypatch.undo()
    captured, capture = r.output_value("7")["samples"], r.output_value("5", 1)  # before the next run's cache
    plain = comfy.run({**loaders, "6": ksampler(steps=1)}, fresh_cache=False, outputs=["6"])
    assert torch.equal(captured, plain.output_value("6")["samples"])
    return capture, positive, negative, contexts


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
    d = ui["shapefirst_attention"][0]
    assert [t["role"] for t in d["tokens"]] == roles
    means = run.token_means[0][0][0].double()
    for role in sorted(set(roles)):
        want = sum(means[i].item() for i, x in enumerate(roles) if x == role)
        assert d["class_shares"][role][0] == pytest.approx(want, abs=2e-3) and want > 0


def check_maps_and_view_roles(capture, clip, prompt: str, keep_prefix: bool, rows: int):
    """The capture's maps (cond, image 0) sum to 1 over the image; the view's token roles, position by position
    against core's encode of ``prompt`` (``rows`` rows; ``keep_prefix``: the encoder keeps the chat
    template's prefix), one per captured row, its class weights the sums of the token means."""
    run = capture.run
    sums = run.maps[0][0].float().sum(1)
    assert torch.allclose(sums, torch.ones_like(sums), atol=2e-3)
    roles = template_roles(clip, prompt, keep_prefix=keep_prefix)
    assert len(roles) == rows
    check_class_shares(run, view(capture, clip, prompt), roles)
