"""Tier 2: the CFG families whose detection fixes a full width (Flux dev with true CFG, Lumina 2,
Qwen-Image).

Only the depth of these models is free, so devtools/families.py builds them at the real width
with the fewest blocks detection accepts (Flux: one double block, no single block, 389 M
parameters; Lumina 2: one layer and the four refiners, 422 M; Qwen-Image: one block, 380 M; fp16
files of about 800 MB, run in fp32 on the CPU). Each evaluation takes up to seconds, so every test
is one sampler, two steps, batch 1 and a 64 px image (4 x 4 = 16 image tokens; Flux's prompt padded
to 8 T5 tokens): it loads as the right model class, TruncatedCFGSampler, and TruncatedCFGModel
under core KSampler, with the window over all steps are core KSampler at cfg > 1 bit for bit, a
truncated window equals the step-by-step reference of eq. 9 written in test_families.py, and the
diffusion model runs exactly the expected rows. Flux dev's guidance embedding is detected
(guidance_in), so the graph sets FluxGuidance on both prompts, as a user running true CFG with Flux
dev does. Qwen-Image's text encoder is a seeded stand-in on core's tokenizer (ComfyUI's Qwen2.5-VL
class cannot be built small; devtools/families.py says why): it gives the 3584-wide context the
model reads and the real token counts, not a language model's meaning. On this joint-attention
model the text cache is refused with its fix.
"""

from __future__ import annotations

import pytest
import torch

from test_families import WINDOW_ALL, _count_rows, _Eq9Reference, _samples, ksampler, truncated

pytestmark = pytest.mark.comfy

# family -> (model_base class, supported_models class, text encoder, VAE, VAE class, latent node inputs)
SPECS = {
    "flux": ("Flux", "Flux", "flux", "taesd3", "TAESD", ("EmptySD3LatentImage", {"width": 64, "height": 64})),
    "lumina2": ("Lumina2", "Lumina2", "lumina2", "taesd3", "TAESD",
                ("EmptySD3LatentImage", {"width": 64, "height": 64})),
    # Qwen-Image: the Wan 2.1 VAE; the text encoder is a seeded stand-in (devtools/families.py says why)
    "qwen_image": ("QwenImage", "QwenImage", "qwen_image", "wan21", "WanVAE",
                   ("EmptySD3LatentImage", {"width": 64, "height": 64})),
}
# calls of one guided step then one tail step, batch 1: Flux pads both prompts to the same T5 length, so
# core batches cond and uncond in one call; Lumina 2 and Qwen-Image do not pad and core runs prompts of
# different token counts as separate calls
EXPECTED_CALLS = {"flux": [2, 1], "lumina2": [1, 1, 1], "qwen_image": [1, 1, 1]}
# context rows of base()'s prompts: Qwen-Image keeps the prompt's tokens and the template's 5 closing ones
CONTEXT_TOKENS = {"qwen_image": (5 + 5, 5)}  # "a photo of a cat" is 5 tokens, the empty negative none
GUIDANCE_EMBED = {"flux"}  # Flux dev: FluxGuidance sets the distilled guidance of both prompts
FAMILIES = list(SPECS)
STEPS = 2


@pytest.fixture(autouse=True)
def _release_models():
    """Each run loads its ~1.6 GB fp32 model afresh: let core unload it after every test, or the
    copies pile up in ComfyUI's list of loaded models."""
    yield
    import gc

    import comfy.model_management as mm

    mm.unload_all_models()
    gc.collect()
    mm.soft_empty_cache()


def base(names, family, prompt="a photo of a cat", negative="", batch=1) -> dict:
    """Nodes 1-4 as test_families.base (Flux dev: positive and negative through FluxGuidance), 8 = VAE,
    9 = text encoder."""
    _, _, te, vae, _, (latent_node, latent_inputs) = SPECS[family]
    g = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": names[family], "weight_dtype": "default"}},
        "9": {"class_type": "ShapeFirstTestFamilyTextEncoder", "inputs": {"kind": te}},
        "12": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["9", 0]}},
        "13": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["9", 0]}},
        "4": {"class_type": latent_node, "inputs": {**latent_inputs, "batch_size": batch}},
        "8": {"class_type": "VAELoader", "inputs": {"vae_name": names[f"vae:{vae}"]}},
    }
    for node, text in (("2", "12"), ("3", "13")):
        if family in GUIDANCE_EMBED:
            g[node] = {"class_type": "FluxGuidance", "inputs": {"conditioning": [text, 0], "guidance": 3.5}}
        else:
            g[node] = g[text]
    return g


def _check_depth(family, model):
    """The real width with the fewest blocks detection accepts."""
    net = model.model.diffusion_model
    if family == "flux":
        assert net.hidden_size == 3072 and len(net.double_blocks) == 1 and len(net.single_blocks) == 0
        assert model.model.model_config.unet_config["guidance_embed"]  # Flux dev, not schnell
    elif family == "lumina2":
        assert net.dim == 2304 and len(net.layers) == 1
        assert len(net.noise_refiner) == 2 and len(net.context_refiner) == 2  # not detected: always 2
    elif family == "qwen_image":
        assert net.inner_dim == 3072 and len(net.transformer_blocks) == 1
        assert net.txt_in.in_features == 3584  # the class's fixed context width, not detected


@pytest.mark.parametrize("family", FAMILIES, scope="module")  # one family at a time
def test_loads_as_the_family_class(comfy, full_width_models, family):
    model_class, config_class, _, _, vae_class, _ = SPECS[family]
    r = comfy.run(base(full_width_models, family), outputs=["1", "2", "3", "4", "8"])
    model, vae = r.output_value("1", 0), r.output_value("8", 0)
    assert type(model.model).__name__ == model_class
    assert type(model.model.model_config).__name__ == config_class
    assert type(vae.first_stage_model).__name__ == vae_class and vae.latent_channels == 16
    _check_depth(family, model)
    cond, extra = r.output_value("2")[0]
    assert torch.isfinite(cond).all() and cond.abs().max() > 0
    if family in CONTEXT_TOKENS:  # prompts of different token counts give contexts of different lengths
        uncond = r.output_value("3")[0][0]
        assert (cond.shape[1], uncond.shape[1]) == CONTEXT_TOKENS[family]
        assert cond.shape[2] == uncond.shape[2] == model.model.diffusion_model.txt_in.in_features
        assert "attention_mask" not in extra  # as core's Qwen-Image encoder: nothing padded, no mask
    assert extra.get("guidance") == (3.5 if family in GUIDANCE_EMBED else None)
    assert _samples(r, "4").shape == (1, 16, 8, 8)


@pytest.mark.parametrize("family", FAMILIES, scope="module")  # one family at a time
def test_window_over_all_steps_is_core_ksampler(comfy, full_width_models, family):
    g = base(full_width_models, family)
    g["5"] = ksampler(steps=STEPS)
    g["6"] = truncated(steps=STEPS)
    g["7"] = ksampler(steps=STEPS, cfg=1.0)
    g["10"] = {"class_type": "TruncatedCFGModel", "inputs": {"model": ["1", 0], **WINDOW_ALL}}
    g["11"] = ksampler(model=("10", 0), steps=STEPS)  # the model patch under core KSampler
    r = comfy.run(g, outputs=["5", "6", "7", "11"])
    out = _samples(r, "5")
    assert torch.isfinite(out).all()
    assert torch.equal(out, _samples(r, "6"))
    assert torch.equal(out, _samples(r, "11"))
    assert (out - _samples(r, "7")).abs().max() > 1e-4  # cfg 4 is not cfg 1: guidance acts


@pytest.mark.parametrize("family", FAMILIES, scope="module")  # one family at a time
def test_truncated_window_matches_a_step_by_step_reference_of_eq9(comfy, full_width_models, family):
    import comfy.sample as comfy_sample
    import comfy.samplers as comfy_samplers

    end, seed, cfg = 0.5, 11, 5.0
    g = base(full_width_models, family)
    g["5"] = truncated(steps=STEPS, seed=seed, cfg=cfg, window={**WINDOW_ALL, "guidance_end": end})
    r = comfy.run(g, outputs=["1", "2", "3", "4", "5"])
    model = r.output_value("1", 0)
    latent = comfy_sample.fix_empty_latent_channels(model, _samples(r, "4"))  # as core's samplers (Qwen-Image: 5-D)
    sigmas = comfy_samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", STEPS)
    ref = _Eq9Reference(comfy_samplers, model, r.output_value("2"), r.output_value("3"), cfg,
                        k=int(STEPS * end), tail="uncond", schedule=sigmas.tolist())
    want = ref.guider.sample(comfy_sample.prepare_noise(latent, seed), latent, comfy_samplers.sampler_object("euler"),
                             sigmas, seed=seed)
    got = _samples(r, "5")
    assert torch.allclose(got, want.to(got.dtype), rtol=0, atol=1e-5 * want.abs().max().item()), \
        (got - want).abs().max()
    # and the reference is not plain CFG: its last step used the unconditional prediction alone
    full = _Eq9Reference(comfy_samplers, model, r.output_value("2"), r.output_value("3"), cfg,
                         k=STEPS, tail="uncond", schedule=sigmas.tolist())
    plain = full.guider.sample(comfy_sample.prepare_noise(latent, seed), latent,
                               comfy_samplers.sampler_object("euler"), sigmas, seed=seed)
    assert (plain - want).abs().max() > 1e-4


@pytest.mark.parametrize("family", FAMILIES, scope="module")  # one family at a time
def test_the_model_runs_exactly_the_expected_rows(comfy, full_width_models, family):
    import nodes

    r = comfy.run(base(full_width_models, family), outputs=["1", "2", "3", "4"])
    model, calls = _count_rows(r.output_value("1", 0))
    out = nodes.NODE_CLASS_MAPPINGS["TruncatedCFGSampler"].execute(
        model=model, seed=1, steps=STEPS, cfg=4.0, sampler_name="euler", scheduler="simple",
        positive=r.output_value("2"), negative=r.output_value("3"), latent_image=r.output_value("4"), denoise=1.0,
        guidance_start=0.0, guidance_end=0.5)
    assert calls == EXPECTED_CALLS[family]  # cond + uncond rows on the guided step, the uncond row alone after
    report = out.ui["shapefirst_guidance"][0]
    assert report["rows_computed"] == 3 and report["skipped_passes"] == 1


@pytest.mark.parametrize("family", ["qwen_image"])  # joint attention (SD3 and Flux: test_text_cache.py)
def test_text_cache_is_refused_with_the_fix(comfy, full_width_models, family):
    import nodes

    from devtools.harness import GraphError

    model = nodes.UNETLoader().load_unet(full_width_models[family], "default")[0]
    with pytest.raises(ValueError, match=r"^TruncatedCFGModel: text_cache 'tail_output' does not apply to this model "
                                         r"\(Qwen-Image, QwenImageTransformer2DModel\): joint attention: .*\. Set "
                                         r"text_cache to 'off'\.$"):
        nodes.NODE_CLASS_MAPPINGS["TruncatedCFGModel"].execute(model, **WINDOW_ALL, text_cache="tail_output")
    with pytest.raises(ValueError, match=r"^TruncatedCFGModel: text_cache 'keys_values' does not apply to this model "
                                         r".*: keys_values applies to UNet cross-attention .*Set text_cache to 'off'\.$"):
        nodes.NODE_CLASS_MAPPINGS["TruncatedCFGModel"].execute(model, **WINDOW_ALL, text_cache="keys_values")
    g = base(full_width_models, family)  # the sampler node, through the executor: refused before sampling
    g["5"] = truncated(steps=STEPS, window={**WINDOW_ALL, "guidance_end": 0.5, "text_cache": "tail_output"})
    with pytest.raises(GraphError, match=r"TruncatedCFGSampler: text_cache 'tail_output' does not apply to this model "
                                         r"\(Qwen-Image"):
        comfy.run(g, outputs=["5"])


def test_qwen_image_stand_in_encoder_is_seeded_and_follows_the_tokens(comfy):
    """The stand-in text encoder (not a language model): the same seed gives the same table, and each
    context row follows its own token: one word changed changes one row."""
    from devtools import families

    a, b = families.build_text_encoder("qwen_image"), families.build_text_encoder("qwen_image")
    assert torch.equal(a.cond_stage_model.table, b.cond_stage_model.table)
    cat = a.encode_from_tokens(a.tokenize("a photo of a cat"))
    dog = b.encode_from_tokens(b.tokenize("a photo of a dog"))
    assert cat.shape == dog.shape == (1, 10, 3584)
    changed = [i for i in range(cat.shape[1]) if not torch.equal(cat[0, i], dog[0, i])]
    assert changed == [4]  # "a photo of a" and the template's closing tokens are the same rows
