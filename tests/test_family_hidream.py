"""Tier 2: HiDream, read through its description, and truncated guidance under core's DualCFGGuider (the
guider of HiDream's E1 edit templates: cfg_conds 3, cfg_cond2_negative 1.5).

Core detection gives every HiDream file one fixed config (16 double + 32 single blocks, 2560 wide, 4
experts: about 17 B parameters; checked here on meta tensors), so the model is ComfyUI's own HiDream class
at 128 wide (1 head of 128, one double and one single block, 2 experts), loaded by the host's loader with
detection replaced (``tiny_loaded.py``). Text: core's HiDream encoders (CLIP-L and CLIP-G give the pooled
vector, T5 the context rows, Llama every hidden layer), each reduced through its ``<name>_model_config``,
T5 and Llama padded to 8 tokens instead of 128.

DualCFGGuider evaluates [negative, middle (cond2), positive (cond1)] and combines regular
n + cfg2 (m - n) + cfg1 (p - m), or nested n + cfg2 (m + cfg1 (p - m) - n). Outside the window the
truncation computes one branch and returns it in the three slots, so both guidance terms are 0: eq. 9
with both text branches dropped. The reference here is core's Guider_DualCFG whose tail steps call core
calc_cond_batch on the kept branch alone.
"""

from __future__ import annotations

import pytest
import torch

from family_checks import (held_graph, joint_refusals, pack_module, truncated_window_rows_and_eq9,
                           window_over_all_steps_is_core)
from guidance_events import reports
from test_families import _count_rows
from tiny_loaded import detected_on_meta, held, tiny_model

pytestmark = [pytest.mark.comfy, pytest.mark.usefixtures("browser_events")]

WIDTH, POOLED, TOKENS = 64, (32, 32), 8
TINY = {"image_model": "hidream", "attention_head_dim": 128, "axes_dims_rope": [64, 32, 32],
        "caption_channels": [WIDTH, WIDTH], "max_resolution": [128, 128], "in_channels": 16, "llama_layers": [0, 1],
        "num_attention_heads": 1, "num_routed_experts": 2, "num_activated_experts": 1, "num_layers": 1,
        "num_single_layers": 1, "out_channels": 16, "patch_size": 2, "text_emb_dim": sum(POOLED)}
# what core detection returns for every HiDream file (model_detection: nothing read from the shapes)
REAL = {**TINY, "caption_channels": [4096, 4096], "num_attention_heads": 20, "num_routed_experts": 4,
        "num_activated_experts": 2, "num_layers": 16, "num_single_layers": 32, "text_emb_dim": 2048,
        "llama_layers": list(range(32)) + [31] * 16}
STEPS = 4
PROMPTS = {"2": "a photo of a cat", "13": "a photo of a dog", "3": "blurry"}  # cond1, cond2, negative


def hidream_clip(seed=405):
    """core's hidream_clip + HiDreamTokenizer at reduced sizes (CLIP-G keeps 3 layers: it reads the penultimate)."""
    import comfy.text_encoders.hidream as hd

    from devtools.families import seeded_clip

    def clip(width):
        return {"hidden_size": width, "intermediate_size": 2 * width, "num_attention_heads": 1,
                "num_hidden_layers": 3, "projection_dim": width}

    options = {"clip_l_model_config": clip(POOLED[0]), "clip_g_model_config": clip(POOLED[1]),
               "t5xxl_model_config": {"d_model": WIDTH, "num_layers": 1, "d_ff": 2 * WIDTH, "num_heads": 2,
                                      "d_kv": WIDTH // 2},
               "llama_model_config": {"hidden_size": WIDTH, "intermediate_size": 2 * WIDTH, "num_hidden_layers": 2,
                                      "num_attention_heads": 2, "num_key_value_heads": 1}}
    return seeded_clip(hd.hidream_clip(), hd.HiDreamTokenizer, options,
                       {"t5xxl_min_length": TOKENS, "llama_min_length": TOKENS}, seed)


@pytest.fixture(scope="module")
def hidream(comfy):
    model = tiny_model("HiDream", TINY, seed=405)
    with held(models={"hidream": model}, clips={"hidream": hidream_clip()}):
        yield model


def test_core_detects_hidream_and_the_description_reads_it(comfy, hidream):
    import nodes

    found, config = detected_on_meta("HiDream", REAL)
    assert found == "HiDream" and config == REAL
    assert type(hidream.model.model_config).__name__ == "HiDream"
    network = pack_module("model_families").describe(hidream)
    assert network.family.name == "HiDream" and network.why_not("truncation") is None
    joint_refusals(hidream, "HiDream, HiDreamImageTransformer2DModel")
    with pytest.raises(ValueError, match=r"^AttentionMapCapture: Attention Map Capture does not apply to this model "
                                         r"\(HiDream, HiDreamImageTransformer2DModel\): its joint attention puts the "
                                         r"image tokens first and then the rows of two text encoders .*Connect an "):
        nodes.NODE_CLASS_MAPPINGS["AttentionMapCapture"].execute(hidream, record_uncond=False, step_stride=1,
                                                                 max_tokens=77, max_grid=64, keep_layers=False,
                                                                 memory_limit_mb=1024.0)


def test_ksampler_truncation_is_core_over_all_steps_and_eq9_in_a_window(comfy, hidream):
    """The I1 templates: KSampler cfg 5. T5 and Llama rows padded to the same length: core batches cond and
    uncond into one call of 2 rows on the guided step, the uncond row alone after."""
    g = held_graph("hidream", "hidream")
    window_over_all_steps_is_core(comfy, g, cfg=5.0)
    truncated_window_rows_and_eq9(comfy, g, expected_calls=[2, 1])


def _dual(g, model, name, cfg1, cfg2, style):
    g[f"{name}g"] = {"class_type": "DualCFGGuider", "inputs": {
        "model": list(model), "cond1": ["2", 0], "cond2": ["13", 0], "negative": ["3", 0], "cfg_conds": cfg1,
        "cfg_cond2_negative": cfg2, "style": style}}
    g[f"{name}s"] = {"class_type": "BasicScheduler", "inputs": {"model": list(model), "scheduler": "simple",
                                                                "steps": STEPS, "denoise": 1.0}}
    g[name] = {"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": ["n", 0], "guider": [f"{name}g", 0], "sampler": ["k", 0], "sigmas": [f"{name}s", 0],
        "latent_image": ["4", 0]}}


def _dual_graph(window: dict) -> dict:
    g = held_graph("hidream", "hidream", prompt=PROMPTS["2"], negative=PROMPTS["3"])
    g["13"] = {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPTS["13"], "clip": ["9", 0]}}
    g["n"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": 5}}
    g["k"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
    g["5"] = {"class_type": "TruncatedCFGModel", "inputs": {
        "model": ["1", 0], "guidance_start": 0.0, "guidance_end": 1.0, "tail": "uncond", "window": "fixed",
        "adaptive_threshold": 0.1, **window}}
    return g


@pytest.mark.parametrize("style", ["regular", "nested"])
def test_dual_cfg_window_over_all_steps_is_core_dual_cfg_bit_for_bit(comfy, hidream, style):
    g = _dual_graph({})
    _dual(g, ("1", 0), "10", 3.0, 1.5, style)
    _dual(g, ("5", 0), "20", 3.0, 1.5, style)
    r = comfy.run(g, outputs=["10", "20"])
    assert torch.equal(r.output_value("10")["samples"], r.output_value("20")["samples"])
    (report,) = reports(r, "5")
    assert report["skipped_passes"] == 0 and report["rows_computed"] == report["rows_full_cfg"] == 3 * STEPS
    assert "inside the guidance window" in report["note"]
    # the curve: per step the combined guidance against the negative's prediction
    assert [p["step"] for p in report["curve"]] == list(range(STEPS))
    assert all(p["rms_uncond"] > 0 and 0 < p["ratio"] < 10 for p in report["curve"])


@pytest.mark.parametrize("style,tail,cfg2,keep,rows", [
    ("regular", "uncond", 1.5, "negative", [3, 3, 1, 1]),
    ("regular", "cond", 1.5, "positive", [3, 3, 1, 1]),
    ("nested", "uncond", 1.5, "negative", [3, 3, 1, 1]),
    ("nested", "cond", 1.5, "positive", [3, 3, 1, 1]),
    # cfg_cond2_negative 1: core leaves the negative out (regular style); the middle is then the unguided branch
    ("regular", "uncond", 1.0, "middle", [2, 2, 1, 1]),
])
def test_dual_cfg_truncated_window_is_the_core_only_reference(comfy, hidream, style, tail, cfg2, keep, rows):
    k = STEPS // 2
    g = _dual_graph({"guidance_end": 0.5, "tail": tail})
    _dual(g, ("5", 0), "20", 3.0, cfg2, style)
    _dual(g, ("1", 0), "10", 3.0, cfg2, style)
    r = comfy.run(g, outputs=["1", "2", "3", "4", "13", "10", "20"])
    got, plain = r.output_value("20")["samples"], r.output_value("10")["samples"]
    want = _dual_cfg(r, r.output_value("1", 0), keep, k, cfg2=cfg2, nested=style == "nested")
    assert torch.equal(got, want), (got - want).abs().max()
    assert (got - plain).abs().max() > 1e-4  # the tail is not DualCFG
    (report,) = reports(r, "5")
    assert report["rows_computed"] == sum(rows) and report["rows_full_cfg"] == rows[0] * STEPS
    assert report["skipped_passes"] == (rows[0] - 1) * (STEPS - k) and report["guided_evaluations"] == k


@pytest.mark.parametrize("tail,keep", [("cond", "positive"), ("uncond", "negative")])
def test_e1_layout_input_image_on_cond1_and_cond2_only(comfy, hidream, caplog, tail, keep):
    """HiDream E1.1's template: cond1 and cond2 carry the input image (InstructPixToPixConditioning's
    concat_latent_image, concatenated to the latent on the width axis), the guider's negative is the prompt
    without it; core then runs the negative alone and [middle, positive] together. The truncated window is
    the core-only reference bit for bit with either tail; tail 'uncond' (the negative, without the image) is
    warned about, tail 'cond' is not."""
    import node_helpers

    import nodes

    g = _dual_graph({})
    r = comfy.run(g, outputs=["1", "2", "3", "4", "13"])
    image = {"concat_latent_image": torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(7))}
    conds = {"2": node_helpers.conditioning_set_values(r.output_value("2"), image),
             "13": node_helpers.conditioning_set_values(r.output_value("13"), image), "3": r.output_value("3")}

    class Held:  # the run's outputs with the image-conditioned prompts, for _dual_cfg
        def output_value(self, node, index=0):
            return conds[node] if node in conds else r.output_value(node, index)

    patched = nodes.NODE_CLASS_MAPPINGS["TruncatedCFGModel"].execute(
        r.output_value("1", 0), guidance_start=0.0, guidance_end=0.5, tail=tail, window="fixed",
        adaptive_threshold=0.1).result[0]
    counted, calls = _count_rows(patched)
    with caplog.at_level("WARNING", logger="shapefirst"):
        got = _dual_cfg(Held(), counted)  # core's DualCFGGuider on the patched model
    # guided steps: the negative alone, then [middle, positive] (only they carry the image); the tail: one row
    assert sorted(calls) == [1] * (STEPS // 2 + STEPS - STEPS // 2) + [2] * (STEPS // 2)
    want = _dual_cfg(Held(), r.output_value("1", 0), keep=keep, k=STEPS // 2)
    assert torch.equal(got, want), (got - want).abs().max()
    without_image = _dual_cfg(r, r.output_value("1", 0), keep=keep, k=STEPS // 2)
    assert (without_image - want).abs().max() > 1e-4  # the input image acts
    warned = [m for m in caplog.messages if "input image" in m]
    if tail == "uncond":
        (message,) = warned
        assert message.startswith("TruncatedCFGModel: the middle and positive conditionings carry the input image "
                                  "(an InstructPix2Pix image) and the negative none")
    else:
        assert warned == []


def _dual_cfg(r, model, keep=None, k=STEPS, cfg1=3.0, cfg2=1.5, nested=False):
    """Core Guider_DualCFG on ``model`` with the prompts of ``r`` (cfg of the E1 templates); with ``keep``, the
    core-only reference of truncation: its steps from ``k`` on compute core calc_cond_batch of the ``keep``
    branch alone."""
    import comfy.sample
    import comfy.samplers
    import comfy_extras.nodes_custom_sampler as ncs

    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", STEPS)
    schedule = sigmas.tolist()

    class Reference(ncs.Guider_DualCFG):
        def predict_noise(self, x, timestep, model_options={}, seed=None):
            step = min(range(len(schedule)), key=lambda i: abs(schedule[i] - float(timestep[0])))
            if keep is None or step < k:
                return super().predict_noise(x, timestep, model_options, seed)
            return comfy.samplers.calc_cond_batch(self.inner_model, [self.conds[keep]], x, timestep,
                                                  model_options)[0]

    guider = Reference(model)
    guider.set_conds(r.output_value("2"), r.output_value("13"), r.output_value("3"))
    guider.set_cfg(cfg1, cfg2, nested=nested)
    latent = comfy.sample.fix_empty_latent_channels(model, r.output_value("4")["samples"])
    return guider.sample(comfy.sample.prepare_noise(latent, 5), latent, comfy.samplers.sampler_object("euler"),
                         sigmas, seed=5)
