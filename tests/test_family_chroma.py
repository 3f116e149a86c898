"""Tier 2: Chroma (core's template: CFG 3.5), read through its description, on the tiny Chroma of
tests/tiny_chroma.py: core UNETLoader with detection replaced for that file alone (core detection fixes a
modulation approximator a CPU cannot test), core's Chroma text encoder (T5) at width 64, core KSampler.

Core detection of a real-size Chroma file (meta tensors: no memory) picks the network class the
description names. Joint attention over [text; image] tokens as Flux: truncated guidance is exact, the
capture equals the renormalised image-query x text-key block of each joint call's own softmax (double
and single blocks), the text cache and the K/V patch are refused.
"""

from __future__ import annotations

import math

import pytest
import torch

import family_checks as checks
import tiny_chroma
from tiny_files import clip_node, detected, graph, loaded_as_saved, meta_state_dict, replaced_detection

pytestmark = pytest.mark.comfy

STEPS, CFG = 2, 3.5


@pytest.fixture(scope="module")
def chroma(comfy, runtime_paths):
    name = tiny_chroma.ensure(runtime_paths["models"])
    with clip_node(tiny_chroma.text_encoder), \
            replaced_detection(tiny_chroma.is_tiny, "Chroma", tiny_chroma.unet()) as replaced:
        yield graph(name, tiny_chroma.LATENT), replaced


def test_core_detection_of_a_real_size_chroma_picks_the_described_network(comfy):
    import comfy.model_patcher as mp
    import comfy.supported_models as sm

    name, config = detected(meta_state_dict("Chroma", tiny_chroma.full(), extra_norms=True))
    assert name == "Chroma" and config["hidden_dim"] == 5120 and config["hidden_size"] == 3072
    model = sm.Chroma(config).get_model({}, device="meta")
    patcher = mp.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
    network = checks.pack_module("model_families").describe(patcher)
    assert network.family is not None and network.family.name == "Chroma"
    assert network.why_not("capture") is None and network.why_not("truncation") is None


def test_the_loader_builds_the_tiny_chroma_from_its_file(comfy, chroma):
    import comfy.utils as comfy_utils
    import folder_paths

    g, replaced = chroma
    sd = comfy_utils.load_torch_file(folder_paths.get_full_path("diffusion_models", g["1"]["inputs"]["unet_name"]))
    replaced.clear()
    r = comfy.run(g, outputs=["1", "2", "3", "4"])
    assert replaced == ["Chroma"]  # core's loader, with this file's detection replaced
    model = r.output_value("1", 0)
    assert type(model.model).__name__ == "Chroma"
    assert loaded_as_saved(model, sd, extra_norms=True)
    assert r.output_value("2")[0][0].shape == (1, 8, tiny_chroma.CONTEXT)  # "a photo of a cat": 7 T5 pieces + </s>
    assert r.output_value("3")[0][0].shape == (1, 1, tiny_chroma.CONTEXT)  # "": </s> alone


def test_window_over_all_steps_is_core_ksampler(comfy, chroma):
    checks.window_over_all_steps_is_core(comfy, chroma[0], STEPS, CFG)


def test_truncated_window_matches_a_step_by_step_reference_of_eq9(comfy, chroma):
    checks.truncated_window_is_eq9(comfy, chroma[0], STEPS, CFG)


def test_the_model_runs_exactly_the_expected_rows(comfy, chroma):
    # T5 does not pad Chroma's prompts: different token counts, separate one-row calls in core
    checks.runs_the_expected_rows(comfy, chroma[0], STEPS, CFG, expected=[1, 1, 1])


def test_text_cache_and_kv_patch_are_refused_with_the_reason(comfy, chroma):
    checks.joint_refusals(comfy.run(chroma[0], outputs=["1"]).output_value("1", 0), "Chroma")


def test_capture_equals_the_renormalised_block_of_each_joint_softmax(comfy, chroma):
    """q and k as each joint call hands them to attention (after the q/k norms and RoPE), read by the test's
    own attention override installed first (the capture chains it); sampling with the capture is
    bit-identical to sampling without it."""
    run, pos, neg, seen = checks.capture_beside_joint_calls(comfy, chroma[0], STEPS, CFG, checks.CAPTURE)
    texts = {0: pos[0][0].shape[1], 1: neg[0][0].shape[1]}
    assert run.model_kind == "joint" and run.grid == (4, 4) and run.token_count == texts
    assert sorted(run.layer_names) == ["double.0", "single.0"]
    assert len(seen) == STEPS * 2 * 2  # per step: cond and uncond (separate calls), a double and a single block
    for i, (chunks, name, q, k) in enumerate(seen):
        (branch,) = chunks
        text, step = texts[branch], i // 4
        joint = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)  # (1, H, L, L)
        block = joint[:, :, text:text + 16, :text]  # [text; image]: image queries x text keys
        want = (block / block.sum(-1, keepdim=True)).mean(1)[0].transpose(0, 1).reshape(text, 4, 4)
        got = run.layers[branch][step][name][0].double()
        assert torch.allclose(got, want, rtol=1e-3, atol=1e-5), (step, name, branch, (got - want).abs().max())
    assert run.maps[0][0].float().std() > 1e-2  # not uniform over the text tokens


def test_view_roles_cover_every_row_of_core_s_chroma_encoding(comfy, chroma):
    """The attention view's token labels and roles for Chroma's T5 (the "pixart" text encoder of the
    descriptions): one per row of core's encoding, the prompt's words then T5's </s>."""
    import sys

    import nodes

    from shapefirst.tokens import EOS, SEM

    clip = tiny_chroma.text_encoder()
    text = "A blue bird"
    cond = clip.encode_from_tokens_scheduled(clip.tokenize(text))[0][0]
    view = sys.modules[nodes.NODE_CLASS_MAPPINGS["AttentionMapView"].__module__]
    labels, roles = view.prompt_tokens("AttentionMapView", clip, text)
    t5 = getattr(clip.tokenizer, clip.tokenizer.clip).tokenizer  # the Hugging Face tokenizer core wraps
    words = len(t5(text, add_special_tokens=False)["input_ids"])
    assert len(labels) == len(roles) == cond.shape[1] == words + 1
    assert roles == [SEM] * words + [EOS] and labels[-1] == "[EOS]"
