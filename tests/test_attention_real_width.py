"""Tier 2: Attention Map Capture on Flux dev, Qwen-Image and Lumina 2 at their real widths, through real graphs.

Core detection fixes these families' widths, so each test model is one block at the real width
(full_width_models in families_fixtures.py), loaded by core UNETLoader and sampled by core KSampler. The
reference probabilities are computed here from the q and k the block hands to attention (after its q/k
norms and rotary embedding, kept by wrapping the host's own function), never from the capture's code.
"""

from __future__ import annotations

import math

import pytest
import torch

from attention_checks import CAPTURE, VIEW, branch_rows
from test_families import ksampler

pytestmark = pytest.mark.comfy


# ---------------------------------------------------------------- Flux dev at its real width (joint attention)
def test_flux_real_width_double_block_capture_equals_the_joint_softmax(comfy, full_width_models, monkeypatch):
    """One double block 3072 wide (24 heads of 128), 1 step, batch 1, 64 px: 8 T5 tokens + 16 image
    tokens. q and k are read where the block hands them to attention: after its q/k norm and the
    rotary embedding (``comfy.ldm.flux.math.apply_rope``, wrapped here to keep its outputs)."""
    import gc

    import comfy.ldm.flux.math as flux_math
    import comfy.model_management as mm

    from test_families_dit import base as dit_base

    g = dit_base(full_width_models, "flux")  # "a photo of a cat": both prompts fit the 8 T5 tokens
    g["5"] = {"class_type": "AttentionMapCapture", "inputs": {"model": ["1", 0], **CAPTURE}}
    g["7"] = ksampler(model=("5", 0), steps=1)
    loaders = {k: v for k, v in g.items() if k not in ("5", "7")}
    seen = []
    original = flux_math.apply_rope

    def apply_rope(xq, xk, freqs_cis):
        q, k = original(xq, xk, freqs_cis)
        seen.append((q.detach().double().clone(), k.detach().double().clone()))
        return q, k

    try:
        r0 = comfy.run(loaders, outputs=["1", "2", "3"])
        dm = r0.output_value("1", 0).model.diffusion_model
        contexts = []
        handle = dm.txt_in.register_forward_hook(lambda m, i, o: contexts.append(i[0].detach().double().clone()))
        monkeypatch.setattr(flux_math, "apply_rope", apply_rope)
        try:
            r = comfy.run(g, fresh_cache=False, outputs=["7"])
        finally:
            handle.remove()
            monkeypatch.undo()
        run, captured = r.output_value("5", 1).run, r.output_value("7")["samples"]
        plain = comfy.run(loaders | {"6": ksampler(steps=1)}, fresh_cache=False, outputs=["6"])
        assert torch.equal(captured, plain.output_value("6")["samples"])  # bit-identical with the capture

        text, n_img = 8, 16
        assert run.model_kind == "joint" and run.grid == (4, 4) and len(run.layer_names) == 1
        assert run.token_count == {0: text, 1: text} and run.steps(0) == run.steps(1) == [0]
        assert len(seen) == len(contexts) == 1  # one double block, one call (cond and uncond batched)
        q, k = seen[0]  # (B, 24, 8 + 16, 128)
        assert q.shape[1:] == (24, text + n_img, 128)
        joint = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(128), dim=-1)
        block = joint[:, :, text:, :text]
        want = (block / block.sum(-1, keepdim=True)).mean(1)  # renormalised over text, mean of heads
        rows = branch_rows(contexts[0], r0.output_value("2")[0][0], r0.output_value("3")[0][0])
        assert sorted(rows) == [0, 1]
        for branch, row in rows.items():
            got = run.layers[branch][0][run.layer_names[0]][0].double()
            ref = want[row].transpose(0, 1).reshape(text, 4, 4)
            assert torch.allclose(got, ref, rtol=1e-3, atol=2e-5), (branch, (got - ref).abs().max())
    finally:
        mm.unload_all_models()  # the ~1.6 GB fp32 model: let core drop it before the next test
        gc.collect()
        mm.soft_empty_cache()


# ---------------------------------------------------------------- Qwen-Image and Lumina 2 at their real width
def _full_width_capture(comfy, names, family, hook, context_module, view=False):
    """One real-width family sampled 1 step at 64 px with and without the capture (cfg 4, the empty
    negative): returns (run, positive, negative, kept q/k, contexts per model call, ui, diffusion model).
    ``hook(seen)`` installs the test's q/k reader and returns its undo."""
    import gc

    import comfy.model_management as mm

    from test_families_dit import base as dit_base

    g = dit_base(names, family)
    g["5"] = {"class_type": "AttentionMapCapture", "inputs": {"model": ["1", 0], **CAPTURE}}
    g["7"] = ksampler(model=("5", 0), steps=1)
    if view:
        g["10"] = {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["8", 0]}}
        g["11"] = {"class_type": "AttentionMapView", "inputs": {
            "capture": ["5", 1], "images": ["10", 0], "clip": ["9", 0], "prompt": "a photo of a cat", **VIEW}}
    loaders = {k: v for k, v in g.items() if k not in ("5", "7", "10", "11")}
    seen, contexts = [], []
    try:
        r0 = comfy.run(loaders, outputs=["1", "2", "3"])
        dm = r0.output_value("1", 0).model.diffusion_model
        handle = getattr(dm, context_module).register_forward_hook(
            lambda m, i, o: contexts.append(i[0].detach().double().clone()))
        undo = hook(seen)
        try:
            r = comfy.run(g, fresh_cache=False, outputs=["7"] + (["11"] if view else []))
        finally:
            handle.remove()
            undo()
        run, captured, ui = r.output_value("5", 1).run, r.output_value("7")["samples"], r.ui
        positive, negative = r0.output_value("2")[0][0], r0.output_value("3")[0][0]
        plain = comfy.run(loaders | {"6": ksampler(steps=1)}, fresh_cache=False, outputs=["6"])
        assert torch.equal(captured, plain.output_value("6")["samples"])  # sampling with the capture: bit-identical
        return run, positive, negative, seen, contexts, ui, dm
    finally:
        mm.unload_all_models()  # the ~1.6 GB fp32 model: let core drop it before the next test
        gc.collect()
        mm.soft_empty_cache()


def _renormalised_text_block(q, k, text):
    """q, k: (B, H, text + image, d) as handed to attention -> (B, image, text): per head the joint
    softmax's image-query x text-key block divided by its row sum, then the mean of heads."""
    joint = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    block = joint[:, :, text:, :text]
    return (block / block.sum(-1, keepdim=True)).mean(1), block.sum(-1)


def test_qwen_image_real_width_joint_capture_equals_the_joint_softmax_and_view_classes(
        comfy, full_width_models, monkeypatch):
    """One block 3072 wide (24 heads of 128), 1 step, 64 px (16 image tokens after the 2x2 patches of the
    (1, 16, 1, 8, 8) latent): text first in the joint sequence. q and k are read where the block hands
    them to attention: after its RMS q/k norms and the rotary embedding (``apply_rope1`` of the model's
    module, wrapped here to keep its outputs; it is called for the joint query, then the joint key). The
    view's class weights follow the chat template's roles."""
    import comfy.ldm.qwen_image.model as qwen

    from shapefirst.tokens import EOS, SEM

    original = qwen.apply_rope1

    def hook(seen):
        def apply_rope1(x, freqs):
            out = original(x, freqs)
            seen.append(out.detach().double().clone())
            return out

        monkeypatch.setattr(qwen, "apply_rope1", apply_rope1)
        return monkeypatch.undo

    run, positive, negative, seen, contexts, ui, dm = _full_width_capture(
        comfy, full_width_models, "qwen_image", hook, "txt_norm", view=True)
    n_img = 16
    lengths = {0: positive.shape[1], 1: negative.shape[1]}
    assert lengths == {0: 10, 1: 5}  # the prompt's 5 tokens + the template's 5 closing ones; the empty prompt's 5
    assert run.model_kind == "joint" and run.grid == (4, 4) and run.layer_names == ["double.0"]
    assert run.frames == [] and run.batch == 1  # the 5-D latent of one frame is an image, not a video
    assert run.token_count == lengths and run.steps(0) == run.steps(1) == [0]
    assert len(seen) == 2 * len(contexts) == 4  # prompts of different lengths: one call per branch, q then k
    for call, context in enumerate(contexts):
        branch = 0 if torch.equal(context[0].float(), positive[0].float()) else 1
        assert torch.equal(context[0].float(), (positive, negative)[branch][0].float())
        q, k = seen[2 * call], seen[2 * call + 1]  # (1, 24, text + 16, 128)
        text = lengths[branch]
        assert q.shape == k.shape == (1, 24, text + n_img, 128)
        want, share = _renormalised_text_block(q, k, text)
        got = run.layers[branch][0]["double.0"][0].double()
        ref = want[0].transpose(0, 1).reshape(text, 4, 4)
        assert got.shape[0] == text
        assert torch.allclose(got, ref, rtol=1e-3, atol=2e-5), (branch, (got - ref).abs().max())
        assert share.max() < 0.99  # the image keys take part of the joint softmax: renormalising matters
    sums = run.maps[0][0].float().sum(1)
    assert torch.allclose(sums, torch.ones_like(sums), atol=2e-3)
    # the view on the Wan-VAE-decoded image: the chat template's rows (the prefix is cut by ComfyUI): the
    # prompt's tokens SEM, the closing <|im_end|>\n<|im_start|>assistant\n EOS; class weights = sums of token means
    d = ui["11"]["shapefirst_attention"][0]
    roles = [t["role"] for t in d["tokens"]]
    assert roles == [SEM] * 5 + [EOS] * 5
    means = run.token_means[0][0][0].double()
    for role in (SEM, EOS):
        want = sum(means[i].item() for i, x in enumerate(roles) if x == role)
        assert d["class_shares"][role][0] == pytest.approx(want, abs=2e-3) and want > 0


def test_lumina2_real_width_joint_layer_capture_equals_the_joint_softmax_and_view_classes(
        comfy, full_width_models, monkeypatch):
    """One joint layer 2304 wide (24 query heads of 96, 8 key/value heads), 1 step, 64 px. The two
    context-refiner layers attend the text alone and the two noise-refiner layers the image alone: not
    joint, not recorded. q and k are read after the layer's q/k RMS norms and the rotary embedding
    (``apply_rope`` of the model's module, or newer ComfyUI's fused ``rms_rope1``, wrapped here); the key
    heads are repeated to the query heads as the layer does before attention (head h reads key head h // 3).
    The joint layers get no mask (the model passes none to them). The view's class weights are the sums of the token means per Gemma role."""
    import comfy.ldm.lumina.model as lumina

    from shapefirst.tokens import SEM, SOS

    kitchen = getattr(getattr(lumina, "comfy", None), "quant_ops", None)
    kitchen = getattr(kitchen, "ck", None)  # newer ComfyUI: norm and RoPE fused, q then k (8 != 24 heads)
    originals = {"apply_rope": lumina.apply_rope,
                 "rms_rope1": getattr(kitchen, "rms_rope1", None) if kitchen is not None else None}
    singles = []

    def hook(seen):
        def apply_rope(xq, xk, freqs_cis):
            q, k = originals["apply_rope"](xq, xk, freqs_cis)
            seen.append((q.detach().double().clone(), k.detach().double().clone()))
            return q, k

        def rms_rope1(x, *args, **kwargs):
            out = originals["rms_rope1"](x, *args, **kwargs)
            singles.append(out.detach().double().clone())
            if len(singles) == 2:
                seen.append(tuple(singles))
                singles.clear()
            return out

        monkeypatch.setattr(lumina, "apply_rope", apply_rope)
        if originals["rms_rope1"] is not None:
            monkeypatch.setattr(kitchen, "rms_rope1", rms_rope1)
        return monkeypatch.undo

    run, positive, negative, seen, contexts, ui, dm = _full_width_capture(
        comfy, full_width_models, "lumina2", hook, "cap_embedder", view=True)
    n_img = 16
    lengths = {0: positive.shape[1], 1: negative.shape[1]}
    assert lengths[0] > lengths[1] >= 1
    assert run.model_kind == "joint" and run.grid == (4, 4) and len(run.layer_names) == 1  # the joint layer only
    assert run.token_count == lengths and run.steps(0) == run.steps(1) == [0]
    per_call = len(dm.context_refiner) + len(dm.noise_refiner) + len(dm.layers)
    assert len(seen) == per_call * len(contexts) and len(contexts) == 2  # one model call per branch
    layer = run.layer_names[0]
    for call, context in enumerate(contexts):
        branch = 0 if torch.equal(context[0].float(), positive[0].float()) else 1
        assert torch.equal(context[0].float(), (positive, negative)[branch][0].float())
        text = lengths[branch]
        calls = seen[call * per_call:(call + 1) * per_call]
        assert [q.shape[1] for q, _ in calls] == [text] * 2 + [n_img] * 2 + [text + n_img]  # refiners, then joint
        q, k = calls[-1]  # (1, text + 16, 24, 96), (1, text + 16, 8, 96)
        assert q.shape[2] == 24 and k.shape[2] == 8
        k = k.repeat_interleave(3, dim=2)
        want, share = _renormalised_text_block(q.transpose(1, 2), k.transpose(1, 2), text)
        got = run.layers[branch][0][layer][0].double()
        ref = want[0].transpose(0, 1).reshape(text, 4, 4)
        assert torch.allclose(got, ref, rtol=1e-3, atol=2e-5), (branch, (got - ref).abs().max())
        assert share.max() < 0.99
    d = ui["11"]["shapefirst_attention"][0]
    roles = [t["role"] for t in d["tokens"]]
    assert roles == [SOS] + [SEM] * (lengths[0] - 1)  # Gemma: <bos>, the prompt; nothing padded here
    means = run.token_means[0][0][0].double()
    for role in (SOS, SEM):
        want = sum(means[i].item() for i, x in enumerate(roles) if x == role)
        assert d["class_shares"][role][0] == pytest.approx(want, abs=2e-3) and want > 0


def test_qwen_image_padded_text_tokens_get_the_mask_the_model_applies(comfy, full_width_models, monkeypatch):
    """The positive prompt's last 3 tokens marked as padding (``attention_mask`` in the conditioning, as
    an encoder that pads a batch gives it). The capture applies exactly the mask the model hands to its
    joint attention call, read here by wrapping the module's ``optimized_attention_masked`` (with its q and
    k, after RoPE): newer ComfyUI turns it into an additive key mask, so those tokens get probability 0
    and the rest is renormalised over the kept tokens; 0.3.75's Qwen-Image passes no mask, so the padded
    tokens keep their weight there, as in the model. Core's sampler; sampling bit-identical."""
    import gc

    import comfy.ldm.qwen_image.model as qwen
    import comfy.model_management as mm
    import comfy.sample as comfy_sample
    import nodes

    from test_families_dit import base as dit_base

    g = dit_base(full_width_models, "qwen_image")
    try:
        r0 = comfy.run(g, outputs=["1", "2", "3", "4"])
        model, (cond, extra) = r0.output_value("1", 0), r0.output_value("2")[0]
        text, padded = cond.shape[1], 3
        mask = torch.ones(1, text, dtype=torch.long)
        mask[0, -padded:] = 0
        positive = [[cond, {**extra, "attention_mask": mask}]]
        latent = comfy_sample.fix_empty_latent_channels(model, r0.output_value("4")["samples"])
        patched, rec = nodes.NODE_CLASS_MAPPINGS["AttentionMapCapture"].execute(model, **CAPTURE).result
        original, calls = qwen.optimized_attention_masked, []

        def attention(q, k, v, heads, mask=None, **kwargs):
            calls.append((q.detach().double().clone(), k.detach().double().clone(),
                          None if mask is None else mask.detach().double().clone()))
            return original(q, k, v, heads, mask, **kwargs)

        def sample(m):
            noise = comfy_sample.prepare_noise(latent, 3)
            return comfy_sample.sample(m, noise, 1, 4.0, "euler", "simple", positive, r0.output_value("3"), latent,
                                       seed=3, disable_pbar=True)

        monkeypatch.setattr(qwen, "optimized_attention_masked", attention)
        captured = sample(patched)
        monkeypatch.undo()
        assert torch.equal(captured, sample(model))  # sampling with the capture: bit-identical
        run = rec.run
        assert run.token_count[0] == text and mask.sum() == text - padded
        (q, k, m), = [c for c in calls if c[0].shape[2] == text + 16]  # the positive prompt's joint call
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if m is not None:
            assert m.shape == (1, 1, text + 16)
            scores = scores + m[:, None]
        block = torch.softmax(scores, dim=-1)[:, :, text:, :text]
        want = (block / block.sum(-1, keepdim=True)).mean(1)[0].transpose(0, 1).reshape(text, 4, 4)
        got = run.layers[0][0]["double.0"][0].double()
        assert torch.allclose(got, want, rtol=1e-3, atol=2e-5), (got - want).abs().max()
        if m is not None:  # the model masks the padded tokens: so does the capture, exactly
            assert torch.all(got[-padded:] == 0) and torch.all(got[:-padded] > 0)
        else:  # the model attends to them: so does the capture
            assert got[-padded:].sum(0).min() > 1e-3
    finally:
        mm.unload_all_models()
        gc.collect()
        mm.soft_empty_cache()
