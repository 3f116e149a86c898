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
from attention_checks import CAPTURE, VIEW, branch_rows
from test_families import base, ksampler

pytestmark = pytest.mark.comfy

PROMPT = "a square coaster next to a round mug"
OTHER = "a red bicycle by the sea"
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
        rows = branch_rows(hooks.contexts[step], positive, negative)
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
        rows = branch_rows(hooks.contexts[step], positive, negative)
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


def test_wan_view_refuses_a_single_picture_for_a_video_capture(comfy, family_models):
    g = _wan_graph(family_models)
    g["12"] = {"class_type": "ImageFromBatch", "inputs": {"image": ["10", 0], "batch_index": 0, "length": 1}}
    g["11"] = {"class_type": "AttentionMapView", "inputs": {
        "capture": ["5", 1], "images": ["12", 0], "clip": ["9", 0], "prompt": PROMPT, **VIEW}}
    with pytest.raises(GraphError, match=r"AttentionMapView: the IMAGE input holds 1 image but the captured run "
                                         r"sampled 1 video of 3 latent frames\. Connect the decoded frames"):
        comfy.run(g)


