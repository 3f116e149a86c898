"""Tier 2: Z-Image, read through its description: ComfyUI's own NextDiT with ``pad_tokens_multiple`` 32
(learned pad tokens after the prompt and after the image tokens, inside the joint attention), at dim 256
(2 heads of 128, one joint layer and core's two context- and two noise-refiner layers), loaded by the
host's loader with detection replaced (``tiny_loaded.py``: core detects only the 3840-wide layout as
Z-Image, checked here on meta tensors). Text: core's Z-Image encoder class (Qwen3, chat template) at
width 64 (``text_encoders.z_image``). Graphs run through ComfyUI's executor with core CLIPTextEncode,
EmptySD3LatentImage and KSampler.

The capture reads only the joint layer's calls, whose sequence is [prompt T; pads to T_pad; image N; pads
to N_pad]: image queries [T_pad, T_pad + N), prompt keys [0, T). The refiners' text-only (T_pad) and
image-only (N_pad) calls are not joint and are skipped. References are the q and k the layer hands to
attention (after its q/k norms and RoPE), read by wrapping the model module's ``apply_rope`` (ComfyUI 0.33.0:
the fused ``rms_rope``).
"""

from __future__ import annotations

import pytest
import torch

import text_encoders
from family_checks import (capture_while_watched, check_maps_and_view_roles, held_graph, joint_refusals, pack_module,
                           renormalised_block, truncated_window_rows_and_eq9, window_over_all_steps_is_core)
from tiny_loaded import detected_on_meta, held, tiny_model

pytestmark = pytest.mark.comfy

PAD = 32
TINY = {"image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 256, "cap_feat_dim": 64, "n_layers": 1,
        "qk_norm": True, "n_heads": 2, "n_kv_heads": 2, "axes_dims": [32, 48, 48], "axes_lens": [1536, 512, 512],
        "rope_theta": 256.0, "ffn_dim_multiplier": 8.0 / 3.0, "z_image_modulation": True, "time_scale": 1000.0,
        "pad_tokens_multiple": PAD}  # below dim 256 core's final layer (min_mod 256) and its blocks disagree
# Z-Image Turbo's layout as core detects it (dim 3840 selects Z-Image; 30 layers, 2560-wide Qwen3-4B context)
REAL = {**TINY, "dim": 3840, "n_heads": 30, "n_kv_heads": 30, "n_layers": 30, "cap_feat_dim": 2560}


@pytest.fixture(scope="module")
def zimage(comfy):
    model = tiny_model("ZImage", TINY, seed=404)
    with held(models={"zimage": model}, clips={"z_image": text_encoders.z_image()}):
        yield model


def test_core_detects_the_real_layout_as_z_image_and_the_description_reads_it(zimage):
    found, config = detected_on_meta("ZImage", REAL)
    assert found == "ZImage" and config["pad_tokens_multiple"] == PAD and config["dim"] == 3840
    assert type(zimage.model.model_config).__name__ == "ZImage"
    network = pack_module("model_families").describe(zimage)
    assert network.family.name == "Z-Image" and network.text_pad() == PAD
    for feature in ("truncation", "capture"):
        assert network.why_not(feature) is None, feature
    assert network.why_not("text_cache").startswith("joint attention: text and image tokens share one softmax")
    assert network.why_not("kv_patch").startswith("joint attention: the text tokens are projected")


def test_capture_reads_the_padded_joint_layer_only_and_equals_its_softmax(comfy, zimage, monkeypatch):
    """One step, cfg 4, 64 px: 16 image tokens padded to 32; the prompt's rows padded to 32. Per model call the
    layers attend over T_pad (context refiners), 32 (noise refiners), T_pad + 32 (the joint layer); only the
    last is recorded, and its maps equal the joint softmax's image x prompt block renormalised over the
    prompt (the pad keys excluded). Sampling with the capture is core KSampler bit for bit."""
    import comfy.ldm.lumina.model as lumina

    # q and k after the norms and RoPE: apply_rope (0.3.75), or newer ComfyUI's fused rms_rope (equal heads)
    kitchen = getattr(getattr(getattr(lumina, "comfy", None), "quant_ops", None), "ck", None)
    originals = {"apply_rope": lumina.apply_rope, "rms_rope": getattr(kitchen, "rms_rope", None)}
    seen = []

    def keep(name):
        def wrapped(xq, xk, *args, **kwargs):
            q, k = originals[name](xq, xk, *args, **kwargs)
            seen.append((q.detach().double().clone(), k.detach().double().clone()))
            return q, k

        return wrapped

    prompt = "a square coaster next to a round mug"
    dm = zimage.model.diffusion_model
    patches = [(lumina, "apply_rope", keep("apply_rope"))]
    if originals["rms_rope"] is not None:
        patches.append((kitchen, "rms_rope", keep("rms_rope")))
    capture, positive, negative, contexts = capture_while_watched(
        comfy, held_graph("zimage", "z_image", prompt=prompt), dm.cap_embedder, patches, monkeypatch)
    run = capture.run
    lengths = {0: positive.shape[1], 1: negative.shape[1]}
    assert lengths[0] % PAD and lengths[1] % PAD and lengths[0] != lengths[1]  # both padded, differently
    assert run.model_kind == "joint" and run.grid == (4, 4) and len(run.layer_names) == 1  # the joint layer only
    assert run.token_count == lengths and run.steps(0) == run.steps(1) == [0]  # the prompt's rows, no pads
    per_call = len(dm.context_refiner) + len(dm.noise_refiner) + len(dm.layers)
    assert len(contexts) == 2 and len(seen) == per_call * len(contexts)  # one model call per branch
    layer, n_img, n_pad = run.layer_names[0], 16, PAD
    for call in range(2):
        context = contexts[call]
        branch = 0 if context.shape[1] == lengths[0] else 1
        assert torch.equal(context[0].float(), (positive, negative)[branch][0].float())
        text = lengths[branch]
        text_pad = -(-text // PAD) * PAD
        calls = seen[call * per_call:(call + 1) * per_call]
        assert [q.shape[1] for q, _ in calls] == [text_pad] * 2 + [n_pad] * 2 + [text_pad + n_pad]
        q, k = calls[-1]  # (1, T_pad + 32, 2, 128)
        want, share = renormalised_block(q.transpose(1, 2), k.transpose(1, 2), (0, text), (text_pad, n_img))
        got = run.layers[branch][0][layer][0].double()
        ref = want[0].transpose(0, 1).reshape(text, 4, 4)
        assert torch.allclose(got, ref, rtol=1e-3, atol=2e-5), (branch, (got - ref).abs().max())
        assert share.max() < 0.99  # the pads and the image take part of the softmax: renormalising matters
        # reading the unpadded layout ([T; N]) would give other maps: the padding is what makes them right
        wrong, _ = renormalised_block(q.transpose(1, 2), k.transpose(1, 2), (0, text), (text, n_img))
        assert (wrong[0].transpose(0, 1).reshape(text, 4, 4) - ref).abs().max() > 1e-3
    # Z-Image keeps the chat template's prefix in its rows
    check_maps_and_view_roles(capture, text_encoders.HeldCLIP.CLIPS["z_image"], prompt, True, lengths[0])


def test_truncated_guidance_is_core_over_all_steps_and_eq9_in_a_window(comfy, zimage):
    g = held_graph("zimage", "z_image")
    window_over_all_steps_is_core(comfy, g)
    # prompts of different token counts run as separate calls: cond and uncond on the guided step, uncond after
    truncated_window_rows_and_eq9(comfy, g, expected_calls=[1, 1, 1])


def test_text_cache_and_kv_patch_are_refused_with_the_reason(comfy, zimage):
    joint_refusals(zimage, "Z-Image, NextDiT")
