"""Tier 2: Qwen-Image-Edit, read through the Qwen-Image description (the same network class): reference
latents (core ReferenceLatent, as TextEncodeQwenImageEdit(Plus) and the edit templates attach them to BOTH
prompts) are patchified and appended after the image tokens in every joint call, [text T; image N;
reference R], and cropped from the output.

The model is ComfyUI's own Qwen-Image class at 128 wide (1 head of 128, one block, a 64-wide context),
loaded by the host's loader with detection replaced (``tiny_loaded.py``; core detection fixes the 3584-wide
context and the 3072 width: the real-width file is tested in test_families_dit.py). Text: core's Qwen-Image
encoder class (Qwen2.5-VL transformer at width 64, its chat template; ``text_encoders.qwen_image``). The
reference is a 96 px latent (36 tokens), the image 64 px (16 tokens), so a reading that took the image as
"everything after the text" would be visibly wrong.

Truncated guidance keeps each prompt's references (the tail's unconditional prediction still sees the input
image when the negative carries it, as in core's templates); the capture reads the image queries [T, T + N)
on the text keys [0, T) only, the references left out, checked against the softmax of the q and k the block
hands to attention (after its q/k norms and RoPE, read by wrapping the module's ``apply_rope1``).
"""

from __future__ import annotations

import pytest
import torch

import text_encoders
from family_checks import (capture_while_watched, check_maps_and_view_roles, held_graph, joint_refusals, ksampler,
                           pack_module, renormalised_block, truncated, truncated_window_rows_and_eq9,
                           window_over_all_steps_is_core)
from tiny_loaded import held, tiny_model

pytestmark = pytest.mark.comfy

TINY = {"image_model": "qwen_image", "in_channels": 64, "num_layers": 1, "num_attention_heads": 1,
        "attention_head_dim": 128, "joint_attention_dim": 64}
N_IMG, N_REF = 16, 36  # 64 px image, 96 px reference: (8 / 2)^2, (12 / 2)^2 tokens


@pytest.fixture(scope="module")
def qwen_edit(comfy):
    model = tiny_model("QwenImage", TINY, seed=406)
    reference = torch.randn(1, 16, 1, 12, 12, generator=torch.Generator().manual_seed(3))  # a Wan 2.1 VAE latent
    with held(models={"qwen_edit": model}, clips={"qwen_image": text_encoders.qwen_image()},
              latents={"reference": {"samples": reference}}):
        yield model


def _edit_graph(prompt="make the cat blue", negative="", negative_reference=True) -> dict:
    """held_graph() with core ReferenceLatent on the prompt (and on the negative, as core's templates do)."""
    g = held_graph("qwen_edit", "qwen_image", prompt=prompt, negative=negative)
    g["12"], g["13"] = g["2"], g["3"]
    g["14"] = {"class_type": "ShapeFirstTestHeldLatent", "inputs": {"name": "reference"}}
    g["2"] = {"class_type": "ReferenceLatent", "inputs": {"conditioning": ["12", 0], "latent": ["14", 0]}}
    if negative_reference:
        g["3"] = {"class_type": "ReferenceLatent", "inputs": {"conditioning": ["13", 0], "latent": ["14", 0]}}
    return g


def test_the_description_reads_the_edit_model_as_qwen_image(comfy, qwen_edit):
    network = pack_module("model_families").describe(qwen_edit)
    assert network.family.name == "Qwen-Image" and type(qwen_edit.model).__name__ == "QwenImage"
    for feature in ("truncation", "capture"):
        assert network.why_not(feature) is None, feature
    joint_refusals(qwen_edit, "Qwen-Image, QwenImageTransformer2DModel")
    r = comfy.run(_edit_graph(), outputs=["2", "3"])
    for node in ("2", "3"):  # core's ReferenceLatent put the reference on both prompts
        (ref,) = r.output_value(node)[0][1]["reference_latents"]
        assert ref.shape == (1, 16, 1, 12, 12)


def test_truncated_guidance_with_reference_latents_is_core_and_eq9(comfy, qwen_edit):
    g = _edit_graph()
    r = window_over_all_steps_is_core(comfy, g)
    # the reference acts: the same graph without it samples another image
    plain = comfy.run({**held_graph("qwen_edit", "qwen_image", prompt="make the cat blue"), "5": ksampler(steps=2)},
                      outputs=["5"])
    assert (plain.output_value("5")["samples"] - r.output_value("5")["samples"]).abs().max() > 1e-4
    # prompts of different token counts: separate calls, cond and uncond on the guided step, uncond after
    truncated_window_rows_and_eq9(comfy, g, expected_calls=[1, 1, 1])


def test_capture_reads_text_and_image_tokens_and_leaves_the_references_out(comfy, qwen_edit, monkeypatch):
    import comfy.ldm.qwen_image.model as qwen

    original = qwen.apply_rope1
    seen = []

    def apply_rope1(x, freqs):
        out = original(x, freqs)
        seen.append(out.detach().double().clone())
        return out

    prompt = "make the cat blue"
    capture, positive, negative, contexts = capture_while_watched(
        comfy, _edit_graph(prompt), qwen_edit.model.diffusion_model.txt_norm, [(qwen, "apply_rope1", apply_rope1)],
        monkeypatch)
    run = capture.run
    lengths = {0: positive.shape[1], 1: negative.shape[1]}
    assert lengths[0] != lengths[1]
    assert run.model_kind == "joint" and run.grid == (4, 4) and run.layer_names == ["double.0"]
    assert run.token_count == lengths and run.steps(0) == run.steps(1) == [0]
    assert len(contexts) == 2 and len(seen) == 4  # one call per branch: the joint query, then the joint key
    for call, context in enumerate(contexts):
        branch = 0 if context.shape[1] == lengths[0] else 1
        assert torch.equal(context[0].float(), (positive, negative)[branch][0].float())
        text = lengths[branch]
        q, k = seen[2 * call], seen[2 * call + 1]
        assert q.shape == k.shape == (1, 1, text + N_IMG + N_REF, 128)  # the references follow the image
        want, share = renormalised_block(q, k, (0, text), (text, N_IMG))
        got = run.layers[branch][0]["double.0"][0].double()
        ref = want[0].transpose(0, 1).reshape(text, 4, 4)
        assert torch.allclose(got, ref, rtol=1e-3, atol=2e-5), (branch, (got - ref).abs().max())
        assert share.max() < 0.99
    # Qwen-Image cuts the chat template's prefix from its rows
    check_maps_and_view_roles(capture, text_encoders.HeldCLIP.CLIPS["qwen_image"], prompt, False, lengths[0])


def test_a_negative_without_the_references_is_warned_about_when_the_tail_keeps_it(comfy, qwen_edit, caplog):
    """A negative without the input image's reference latents (plain CLIPTextEncode, ConditioningZeroOut):
    the uncond tail would sample without the input image. One warning naming the fix; none with the
    references on both prompts (core's templates) or with the cond tail."""
    def warnings(g, tail):
        g["6"] = truncated(steps=2, window={"guidance_start": 0.0, "guidance_end": 0.5, "tail": tail,
                                            "window": "fixed", "adaptive_threshold": 0.1})
        caplog.clear()
        with caplog.at_level("WARNING", logger="shapefirst"):
            comfy.run(g, outputs=["6"])
        return [m for m in caplog.messages if "input image" in m]

    (message,) = warnings(_edit_graph(negative_reference=False), "uncond")
    assert message.startswith("TruncatedCFGSampler: the positive conditioning carries the input image (reference "
                              "latents) and the negative none") and "set tail to 'cond'" in message
    assert warnings(_edit_graph(), "uncond") == []
    assert warnings(_edit_graph(negative_reference=False), "cond") == []
