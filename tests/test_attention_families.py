"""Tier 2: Attention Map Capture, View and Compare on the DiT families, through real graphs.

The tiny seeded SD3 (MMDiT, joint attention over [text; image] tokens) and Wan 2.1 (cross-attention
over the tokens of a 5-D video latent) of devtools/families.py, loaded by core UNETLoader, encoded by
core CLIPTextEncode with the family's own text encoder (families_fixtures.py), sampled by core
KSampler. The reference probabilities are computed here from the q and k each layer produced,
read by forward hooks on the layer's own modules (SD3: ``attn.ln_q`` / ``attn.ln_k`` of the context
and image blocks, i.e. the projections after MMDiT's q/k norm; Wan: ``cross_attn.norm_q`` /
``norm_k``), never from the capture's code.
"""

from __future__ import annotations

import math

import pytest
import torch

from devtools.harness import GraphError
from test_families import base, ksampler

pytestmark = pytest.mark.comfy

PROMPT = "a square coaster next to a round mug"
OTHER = "a red bicycle by the sea"
CAPTURE = {"record_uncond": True, "step_stride": 1, "max_tokens": 77, "max_grid": 64, "keep_layers": True,
           "memory_limit_mb": 1024.0}
VIEW = {"branch": "cond", "tokens": "auto", "steps": "auto", "batch_index": 0, "cell_size": 32, "edge_size": 64,
        "canny_low": 0.1, "canny_high": 0.2, "edge_tolerance": 1, "filename_prefix": "tests/attention_dit"}
STEPS = 2


class QKHooks:
    """Forward hooks on the modules whose outputs are a layer's q and k; keeps them per call."""

    def __init__(self, pairs, context_module):
        self.calls, self.contexts, self.handles = [], [], []
        for layer, (mq, mk) in enumerate(pairs):
            self.handles.append(mq.register_forward_hook(lambda m, i, o, l=layer: self._keep(l, "q", o)))
            self.handles.append(mk.register_forward_hook(lambda m, i, o, l=layer: self._keep(l, "k", o)))
        self.handles.append(context_module.register_forward_hook(
            lambda m, i, o: self.contexts.append(i[0].detach().double().clone())))

    def _keep(self, layer, what, out):
        self.calls.append((layer, what, out.detach().double().clone()))

    def remove(self):
        for h in self.handles:
            h.remove()


def _softmax_heads(q, k):
    """Per head softmax(q k^T / sqrt(d)): q (B, N, H, d), k (B, K, H, d) -> (B, H, N, K), float64."""
    d = q.shape[-1]
    return torch.softmax(torch.einsum("bnhd,bkhd->bhnk", q, k) / math.sqrt(d), dim=-1)


def _branch_rows(contexts, positive, negative):
    """{branch: batch row} of one model call, told apart by the text context each row carries."""
    rows = {}
    for row in range(contexts.shape[0]):
        for branch, cond in ((0, positive), (1, negative)):
            if torch.equal(contexts[row].float(), cond[0].float()):
                rows[branch] = row
    return rows


# ---------------------------------------------------------------- SD3 (MMDiT, joint attention)
LOADERS = ("1", "2", "3", "4", "8", "9")  # model, positive, negative, latent, VAE, text encoder


def _loaders(g):
    return {k: v for k, v in g.items() if k in LOADERS}


def _plain_samples(comfy, g):
    """Core KSampler on the plain model, same seed, in the same cache (the loaders are not rerun)."""
    r = comfy.run(_loaders(g) | {"6": ksampler(steps=STEPS)}, fresh_cache=False, outputs=["6"])
    return r.output_value("6")["samples"]


def _sd3_graph(names, prompt=PROMPT, capture=None, view=True):
    g = base(names, "sd3", prompt=prompt)
    g["4"]["inputs"].update(width=64, height=64)  # latent 8x8, patch 2: 4x4 = 16 image tokens
    g["5"] = {"class_type": "AttentionMapCapture", "inputs": {"model": ["1", 0], **CAPTURE, **(capture or {})}}
    g["7"] = ksampler(model=("5", 0), steps=STEPS)
    if view:
        g["10"] = {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["8", 0]}}
        g["11"] = {"class_type": "AttentionMapView", "inputs": {
            "capture": ["5", 1], "images": ["10", 0], "clip": ["9", 0], "prompt": prompt, **VIEW}}
    return g


def test_sd3_joint_capture_equals_the_renormalised_block_of_the_joint_softmax(comfy, family_models):
    g = _sd3_graph(family_models, view=False)
    r0 = comfy.run(_loaders(g), outputs=["1", "2", "3"])
    dm = r0.output_value("1", 0).model.diffusion_model
    blocks = list(dm.joint_blocks)
    pairs = []
    for b in blocks:  # per block: context q/k, then image q/k, in the order MMDiT computes them
        pairs += [(b.context_block.attn.ln_q, b.context_block.attn.ln_k), (b.x_block.attn.ln_q, b.x_block.attn.ln_k)]
    hooks = QKHooks(pairs, dm.context_embedder)
    try:
        r = comfy.run(g, fresh_cache=False, outputs=["7"])
    finally:
        hooks.remove()
    run, captured = r.output_value("5", 1).run, r.output_value("7")["samples"]
    assert torch.equal(captured, _plain_samples(comfy, g))  # sampling with the capture: bit-identical
    text, n_img, heads = 77, 16, blocks[0].x_block.attn.num_heads
    assert run.model_kind == "joint" and run.grid == (4, 4) and len(run.layer_names) == len(blocks) == 2
    assert run.token_count == {0: text, 1: text} and run.steps(0) == run.steps(1) == [0, 1]
    per_call = 4 * len(blocks)  # q and k of the context and the image block of every joint block
    assert len(hooks.calls) == per_call * STEPS and len(hooks.contexts) == STEPS  # cond + uncond: one call
    positive, negative = r0.output_value("2")[0][0], r0.output_value("3")[0][0]
    for step in range(STEPS):
        calls = hooks.calls[step * per_call:(step + 1) * per_call]
        rows = _branch_rows(hooks.contexts[step], positive, negative)
        assert sorted(rows) == [0, 1]
        for j, layer in enumerate(run.layer_names):
            (_, _, cq), (_, _, ck), (_, _, xq), (_, _, xk) = calls[4 * j:4 * j + 4]
            assert cq.shape[1] == text and xq.shape[1] == n_img and cq.shape[2] == heads
            joint = _softmax_heads(torch.cat([cq, xq], 1), torch.cat([ck, xk], 1))  # (B, H, 93, 93)
            block = joint[:, :, text:, :text]  # image queries x text keys of the joint softmax
            share = block.sum(-1, keepdim=True)  # the part of each query's attention that goes to text
            want = (block / share).mean(1)  # renormalised over the text tokens per head, then the mean of heads
            raw = block.mean(1)
            for branch, row in rows.items():
                got = run.layers[branch][step][layer][0].double()  # (77, 4, 4)
                ref = want[row].transpose(0, 1).reshape(text, 4, 4)
                assert torch.allclose(got, ref, rtol=1e-3, atol=2e-5), (step, layer, branch, (got - ref).abs().max())
                # not the raw block: the image keys take a real share of the joint softmax here
                assert (got - raw[row].transpose(0, 1).reshape(text, 4, 4)).abs().max() > 1e-2
            assert share.min() < 0.9  # the text keys take only part of the joint softmax
    for branch in (0, 1):  # every pixel's map is a distribution over the 77 text tokens
        sums = run.maps[branch][1].float().sum(1)
        assert torch.allclose(sums, torch.ones_like(sums), atol=2e-3)
    assert not torch.allclose(run.maps[0][0].float(), run.maps[1][0].float(), atol=1e-3)  # prompts differ


def test_sd3_view_token_classes_follow_t5_roles_and_kl_of_two_prompts(comfy, family_models):
    from shapefirst.tokens import EOS, PAD, SEM

    g = _sd3_graph(family_models)
    b = _sd3_graph(family_models, prompt=OTHER)
    for nid in ("5", "7", "10", "11"):  # a second capture and run with another prompt, same seed
        g[f"2{nid}"] = b[nid]
    g["212"] = b["2"]
    g["27"]["inputs"]["positive"] = ["212", 0]
    g["27"]["inputs"]["model"] = ["25", 0]
    g["210"]["inputs"]["samples"] = ["27", 0]
    g["211"]["inputs"].update(capture=["25", 1], images=["210", 0])
    g["30"] = {"class_type": "AttentionMapCompare", "inputs": {
        "capture_a": ["5", 1], "images_a": ["10", 0], "capture_b": ["25", 1], "images_b": ["210", 0],
        "branch": "cond", "batch_index": 0, "filename_prefix": "tests/attention_dit_kl"}}
    r = comfy.run(g, outputs=["9"])
    clip = r.output_value("9", 0)
    d = r.ui["11"]["shapefirst_attention"][0]
    roles = [t["role"] for t in d["tokens"]]
    # T5 (SD3's tiny encoder is its T5 branch): no [SOS]; the words; </s> as [EOS]; padding to 77
    tokens = clip.tokenize(PROMPT, return_word_ids=True)["t5xxl"][0]
    n_words = sum(1 for t in tokens if t[2] > 0)
    assert roles == [SEM] * n_words + [EOS] + [PAD] * (77 - n_words - 1)
    assert tokens[n_words][0] == 1  # T5's </s>
    shares = d["class_shares"]
    assert set(shares) == {SEM, EOS, PAD}  # no SOS class at all
    run = r.output_value("5", 1).run
    for k, step in enumerate(d["steps"]):  # each class's weight: its tokens' maps, averaged over pixels
        means = run.maps[0][step][0].double().mean(dim=(-2, -1))
        for role in (SEM, EOS, PAD):
            want = sum(means[i].item() for i, x in enumerate(roles) if x == role)
            assert shares[role][k] == pytest.approx(want, abs=2e-3)
        assert sum(shares[c][k] for c in shares) == pytest.approx(1, abs=1e-3)
    assert d["selected_tokens"] == list(range(n_words + 1))  # auto: the words and [EOS] (no [SOS] here)
    assert r.output_value("11", 0).shape[1] == 18 + (n_words + 1) * (32 + 2)

    # KL per step between the two prompts' captures, recomputed here from the stored maps
    kl = r.ui["30"]["shapefirst_attention_kl"][0]
    other = r.output_value("25", 1).run
    assert kl["steps"] == [0, 1]
    for k, step in enumerate(kl["steps"]):
        p = run.maps[0][step][0].double().clamp_min(1e-12)
        q = other.maps[0][step][0].double().clamp_min(1e-12)
        p, q = p / p.sum(0), q / q.sum(0)
        want = (p * (p / q).log()).sum(0).mean().item()
        assert kl["kl_a_b"][k] == pytest.approx(want, rel=1e-2, abs=1e-5) and want > 1e-3


# ---------------------------------------------------------------- Wan 2.1 (cross-attention, video)
def _wan_graph(names, capture=None, length=9):
    g = base(names, "wan21_t2v", prompt=PROMPT)
    g["4"]["inputs"]["length"] = length  # 9 frames: 3 latent frames of 8x8, patch 2: 3 x 4x4 = 48 tokens
    g["5"] = {"class_type": "AttentionMapCapture", "inputs": {
        "model": ["1", 0], **CAPTURE, "frame_stride": 2, **(capture or {})}}
    g["7"] = ksampler(model=("5", 0), steps=STEPS)
    g["10"] = {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["8", 0]}}
    return g


def test_wan_cross_attention_per_kept_frame_equals_the_softmax_of_its_own_q_and_k(comfy, family_models):
    g = _wan_graph(family_models)
    r0 = comfy.run(_loaders(g), outputs=["1", "2", "3"])
    dm = r0.output_value("1", 0).model.diffusion_model
    hooks = QKHooks([(blk.cross_attn.norm_q, blk.cross_attn.norm_k) for blk in dm.blocks], dm.text_embedding)
    try:
        r = comfy.run(g, fresh_cache=False, outputs=["7"])
    finally:
        hooks.remove()
    run, captured = r.output_value("5", 1).run, r.output_value("7")["samples"]
    assert torch.equal(captured, _plain_samples(comfy, g))  # sampling with the capture: bit-identical
    text, frames, hw, heads = 512, 3, (4, 4), dm.blocks[0].cross_attn.num_heads
    assert run.model_kind == "video" and run.frames == [0, 2] and run.total_frames == frames
    assert run.videos == 1 and run.batch == 2 and run.grid == hw and run.layer_names == ["blocks.0", "blocks.1"]
    assert run.token_count == {0: text, 1: text} and run.steps(0) == [0, 1]
    assert run.maps[0][0].shape == (2, 77, 4, 4)  # (kept frames, max_tokens, grid)
    assert run.token_means[0][0].shape == (2, text)
    per_call = 2 * len(dm.blocks)
    assert len(hooks.calls) == per_call * STEPS and len(hooks.contexts) == STEPS
    positive, negative = r0.output_value("2")[0][0], r0.output_value("3")[0][0]
    for step in range(STEPS):
        calls = hooks.calls[step * per_call:(step + 1) * per_call]
        rows = _branch_rows(hooks.contexts[step], positive, negative)
        assert sorted(rows) == [0, 1]
        for j, layer in enumerate(run.layer_names):
            (_, _, q), (_, _, k) = calls[2 * j:2 * j + 2]  # (B, 48, C), (B, 512, C)
            b, n, c = q.shape
            assert n == frames * 16 and k.shape[1] == text
            probs = _softmax_heads(q.reshape(b, n, heads, c // heads), k.reshape(b, text, heads, c // heads)).mean(1)
            for branch, row in rows.items():
                for entry, f in enumerate((0, 2)):  # kept frames 0 and 2 of 3 (frame_stride 2)
                    ref = probs[row, f * 16:(f + 1) * 16].transpose(0, 1).reshape(text, 4, 4)
                    got = run.layers[branch][step][layer][entry].double()
                    assert torch.allclose(got, ref[:77], rtol=1e-3, atol=2e-5), (step, layer, branch, f)
                    means = run.token_means[branch][step][entry].double()
                    assert means.shape == (text,)
    sums = run.token_means[0][1].sum(-1)
    assert torch.allclose(sums, torch.ones_like(sums), atol=1e-4)  # all 512 positions: a distribution
    assert not torch.equal(run.maps[0][1][0], run.maps[0][1][1])  # frames differ


def test_wan_view_and_kl_on_video_captures(comfy, family_models):
    from shapefirst.tokens import EOS, PAD, SEM

    g = _wan_graph(family_models, capture={"max_tokens": 512})
    g["11"] = {"class_type": "AttentionMapView", "inputs": {
        "capture": ["5", 1], "images": ["10", 0], "clip": ["9", 0], "prompt": PROMPT, **VIEW, "batch_index": 1}}
    g["25"] = {"class_type": "AttentionMapCapture", "inputs": {
        "model": ["1", 0], **CAPTURE, "max_tokens": 512, "frame_stride": 2}}
    g["26"] = {"class_type": "CLIPTextEncode", "inputs": {"text": OTHER, "clip": ["9", 0]}}
    g["27"] = ksampler(model=("25", 0), steps=STEPS, positive=("26", 0))
    g["28"] = {"class_type": "VAEDecode", "inputs": {"samples": ["27", 0], "vae": ["8", 0]}}
    g["30"] = {"class_type": "AttentionMapCompare", "inputs": {
        "capture_a": ["5", 1], "images_a": ["10", 0], "capture_b": ["25", 1], "images_b": ["28", 0],
        "branch": "cond", "batch_index": 1, "filename_prefix": "tests/attention_dit_kl"}}
    r = comfy.run(g, outputs=["9"])
    d = r.ui["11"]["shapefirst_attention"][0]
    roles = [t["role"] for t in d["tokens"]]
    clip = r.output_value("9", 0)
    n_words = sum(1 for t in clip.tokenize(PROMPT, return_word_ids=True)["umt5xxl"][0] if t[2] > 0)
    assert roles == [SEM] * n_words + [EOS] + [PAD] * (512 - n_words - 1)  # umT5: no [SOS], padded to 512
    assert set(d["class_shares"]) == {SEM, EOS, PAD}
    # entry 1 = latent frame 2 of 3, drawn over decoded frame 8 of 9 (the same time)
    assert d["video"] == {"frames": [0, 2], "total_frames": 3, "videos": 1, "frame": 2, "image": 8}
    run = r.output_value("5", 1).run
    for k, step in enumerate(d["steps"]):
        means = run.token_means[0][step][1].double()
        for role in (SEM, EOS, PAD):
            want = sum(means[i].item() for i, x in enumerate(roles) if x == role)
            assert d["class_shares"][role][k] == pytest.approx(want, abs=1e-4)
    kl = r.ui["30"]["shapefirst_attention_kl"][0]
    other = r.output_value("25", 1).run
    for k, step in enumerate(kl["steps"]):
        p = run.maps[0][step][1].double().clamp_min(1e-12)
        q = other.maps[0][step][1].double().clamp_min(1e-12)
        p, q = p / p.sum(0), q / q.sum(0)
        want = (p * (p / q).log()).sum(0).mean().item()
        assert kl["kl_a_b"][k] == pytest.approx(want, rel=1e-2, abs=1e-5) and want > 1e-4


def test_wan_refusals_name_the_node_and_the_fix(comfy, family_models):
    g = _wan_graph(family_models, capture={"max_tokens": 512, "memory_limit_mb": 1.0, "frame_stride": 1},
                   length=33)  # 9 latent frames x 512 tokens x 16 px x 2 steps x 2 branches + layers
    with pytest.raises(GraphError, match=r"AttentionMapCapture: this run would store .* MB .*1 video x 9 kept "
                                         r"frames.*fewer video frames \(frame_stride\)"):
        comfy.run(g, outputs=["7"])
    g = _wan_graph(family_models)
    g["11"] = {"class_type": "AttentionMapView", "inputs": {
        "capture": ["5", 1], "images": ["10", 0], "clip": ["9", 0], "prompt": PROMPT, **VIEW, "batch_index": 2}}
    with pytest.raises(GraphError, match=r"AttentionMapView: batch_index 2 is outside the 2 recorded frames "
                                         r"\(1 video x latent frames \[0, 2\].*use an index in 0-1"):
        comfy.run(g)


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
        rows = _branch_rows(contexts[0], r0.output_value("2")[0][0], r0.output_value("3")[0][0])
        assert sorted(rows) == [0, 1]
        for branch, row in rows.items():
            got = run.layers[branch][0][run.layer_names[0]][0].double()
            ref = want[row].transpose(0, 1).reshape(text, 4, 4)
            assert torch.allclose(got, ref, rtol=1e-3, atol=2e-5), (branch, (got - ref).abs().max())
    finally:
        mm.unload_all_models()  # the ~1.6 GB fp32 model: let core drop it before the next test
        gc.collect()
        mm.soft_empty_cache()


def test_wan_view_refuses_a_single_picture_for_a_video_capture(comfy, family_models):
    g = _wan_graph(family_models)
    g["12"] = {"class_type": "ImageFromBatch", "inputs": {"image": ["10", 0], "batch_index": 0, "length": 1}}
    g["11"] = {"class_type": "AttentionMapView", "inputs": {
        "capture": ["5", 1], "images": ["12", 0], "clip": ["9", 0], "prompt": PROMPT, **VIEW}}
    with pytest.raises(GraphError, match=r"AttentionMapView: the IMAGE input holds 1 image but the captured run "
                                         r"sampled 1 video of 3 latent frames\. Connect the decoded frames"):
        comfy.run(g)


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
