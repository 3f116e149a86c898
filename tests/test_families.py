"""Tier 2: the other CFG model families (SD3 MMDiT, Wan 2.1 video, the Wan 2.2 expert pair).

Tiny seeded models of the real architectures (devtools/families.py), loaded by core UNETLoader
and VAELoader and run through ComfyUI's executor; the text encoder is ComfyUI's own class at one
layer (families_fixtures.py says why). Each family: it loads as the right model class, core
KSampler samples with cfg > 1, TruncatedCFGSampler with the window over all steps is core KSampler
bit for bit, a truncated window equals a step-by-step reference of eq. 9 written in the test, and
the diffusion model runs exactly the expected rows. Flux, Lumina 2 and Qwen-Image are built at
their real width (detection fixes it) and tested in test_families_dit.py; Chroma and Z-Image are
not built (devtools/families.py says why).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from eq9_reference import Eq9Reference

pytestmark = pytest.mark.comfy

WINDOW_ALL = {"guidance_start": 0.0, "guidance_end": 1.0, "tail": "uncond", "window": "fixed",
              "adaptive_threshold": 0.1}
# family -> (model_base class, supported_models class, text encoder, VAE, VAE class, latent node inputs)
SPECS = {
    "sd3": ("SD3", "SD3", "sd3", "taesd3", "TAESD",
            ("EmptySD3LatentImage", {"width": 128, "height": 128})),
    "wan21_t2v": ("WAN21", "WAN21_T2V", "wan", "wan21", "WanVAE",
                  ("EmptyHunyuanLatentVideo", {"width": 64, "height": 64, "length": 5})),
}
FAMILIES = list(SPECS)


def base(names, family, prompt="a photo of a cat", negative="", batch=1) -> dict:
    """Nodes 1-4 as graphs.base (model, positive, negative, latent), 8 = VAE, 9 = text encoder."""
    _, _, te, vae, _, (latent_node, latent_inputs) = SPECS[family]
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": names[family], "weight_dtype": "default"}},
        "9": {"class_type": "ShapeFirstTestFamilyTextEncoder", "inputs": {"kind": te}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["9", 0]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["9", 0]}},
        "4": {"class_type": latent_node, "inputs": {**latent_inputs, "batch_size": batch}},
        "8": {"class_type": "VAELoader", "inputs": {"vae_name": names[f"vae:{vae}"]}},
    }


def ksampler(model=("1", 0), latent=("4", 0), seed=7, steps=3, cfg=4.0, sampler="euler", scheduler="simple",
             positive=("2", 0), negative=("3", 0)) -> dict:
    return {"class_type": "KSampler", "inputs": {
        "model": list(model), "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler,
        "scheduler": scheduler, "positive": list(positive), "negative": list(negative),
        "latent_image": list(latent), "denoise": 1.0}}


def truncated(window=None, **kw) -> dict:
    node = ksampler(**kw)
    node["class_type"] = "TruncatedCFGSampler"
    node["inputs"].update(window or WINDOW_ALL)
    return node


def _samples(r, node):
    return r.output_value(node)["samples"]


def test_every_tiny_file_is_seeded_and_rebuilds_identically(comfy, family_models, runtime_paths):
    """Every tensor is set from the seed: no constructor-left memory (which may be finite garbage)."""
    import safetensors.torch

    from devtools import families

    models = Path(runtime_paths["models"])
    builds = [(f, families.diffusion_state_dict, models / "diffusion_models" / family_models[f])
              for f in families.FAMILIES if f not in families.FULL_WIDTH]
    builds += [(v, families.vae_state_dict, models / "vae" / family_models[f"vae:{v}"]) for v in families.VAES]
    for name, build, path in builds:
        on_disk, again = safetensors.torch.load_file(str(path)), build(name)
        assert on_disk.keys() == again.keys(), name
        assert all(torch.equal(on_disk[k], again[k]) for k in on_disk), name
    a, b = (families.build_text_encoder("sd3").cond_stage_model.state_dict() for _ in range(2))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("family", FAMILIES)
def test_loads_as_the_family_class(comfy, family_models, family):
    model_class, config_class, _, _, vae_class, _ = SPECS[family]
    r = comfy.run(base(family_models, family), outputs=["1", "2", "4", "8"])
    model, vae = r.output_value("1", 0), r.output_value("8", 0)
    assert type(model.model).__name__ == model_class
    assert type(model.model.model_config).__name__ == config_class
    assert type(vae.first_stage_model).__name__ == vae_class and vae.latent_channels == 16
    cond = r.output_value("2")[0][0]
    assert torch.isfinite(cond).all() and cond.abs().max() > 0
    assert _samples(r, "4").ndim == (5 if family.startswith("wan") else 4)


@pytest.mark.parametrize("family", FAMILIES)
def test_core_ksampler_samples_and_decodes(comfy, family_models, family):
    g = base(family_models, family)
    g["5"] = ksampler()
    g["6"] = {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["8", 0]}}
    g["12"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a red bicycle by the sea", "clip": ["9", 0]}}
    g["7"] = ksampler(positive=("12", 0))
    r = comfy.run(g, outputs=["4", "5", "6", "7"])
    latent, out = _samples(r, "4"), _samples(r, "5")
    assert out.shape == latent.shape and torch.isfinite(out).all()
    images = r.output_value("6")
    assert torch.isfinite(images).all() and images.shape[-1] == 3
    # video: 2 latent frames decode to 1 + 4 frames, 8x upscaled, as a batch of images
    assert images.shape == ((5, 64, 64, 3) if family.startswith("wan") else (1, 128, 128, 3))
    # the prompt reaches the model: another prompt, another result
    assert (_samples(r, "7") - out).abs().max() > 1e-4


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m", "heun"])
def test_window_over_all_steps_is_core_ksampler(comfy, family_models, family, sampler):
    g = base(family_models, family, batch=2)
    g["5"] = ksampler(sampler=sampler)
    g["6"] = truncated(sampler=sampler)
    r = comfy.run(g, outputs=["5", "6"])
    assert torch.equal(_samples(r, "5"), _samples(r, "6"))


_Eq9Reference = Eq9Reference  # the reference written in tests/eq9_reference.py


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("tail", ["uncond", "cond"])
def test_truncated_window_matches_a_step_by_step_reference_of_eq9(comfy, family_models, family, tail):
    import comfy.sample as comfy_sample
    import comfy.samplers as comfy_samplers

    steps, end, seed, cfg = 4, 0.5, 11, 5.0
    g = base(family_models, family)
    g["5"] = truncated(steps=steps, seed=seed, cfg=cfg, window={**WINDOW_ALL, "guidance_end": end, "tail": tail})
    g["6"] = truncated(steps=steps, seed=seed, cfg=cfg)
    r = comfy.run(g, outputs=["1", "2", "3", "4", "5", "6"])
    model, latent = r.output_value("1", 0), _samples(r, "4")
    sigmas = comfy_samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", steps)
    ref = _Eq9Reference(comfy_samplers, model, r.output_value("2"), r.output_value("3"), cfg,
                        k=int(steps * end), tail=tail, schedule=sigmas.tolist())
    want = ref.guider.sample(comfy_sample.prepare_noise(latent, seed), latent, comfy_samplers.sampler_object("euler"),
                             sigmas, seed=seed)
    got = _samples(r, "5")
    assert torch.allclose(got, want.to(got.dtype), rtol=0, atol=1e-5 * want.abs().max().item()), \
        (got - want).abs().max()
    assert (_samples(r, "6") - got).abs().max() > 1e-4  # and the truncation changed the result


def _count_rows(model):
    """A clone of ``model`` whose diffusion-model calls are counted (batch rows per call).

    Counted at core's APPLY_MODEL wrapper (model_base), which every family passes through: SD3's
    MMDiT, unlike the UNet, Wan and Flux, does not run DIFFUSION_MODEL wrappers in 0.3.75."""
    import comfy.patcher_extension as pe

    calls = []

    def counting(executor, *args, **kwargs):
        calls.append(int(args[0].shape[0]))
        return executor(*args, **kwargs)

    m = model.clone()
    m.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, "test.count", counting)
    return m, calls


@pytest.mark.parametrize("family", FAMILIES)
def test_the_model_runs_exactly_the_expected_rows(comfy, family_models, family):
    import nodes

    r = comfy.run(base(family_models, family, batch=2), outputs=["1", "2", "3", "4"])
    model, calls = _count_rows(r.output_value("1", 0))
    steps, end, batch = 4, 0.5, 2
    out = nodes.NODE_CLASS_MAPPINGS["TruncatedCFGSampler"].execute(
        model=model, seed=1, steps=steps, cfg=4.0, sampler_name="euler", scheduler="simple",
        positive=r.output_value("2"), negative=r.output_value("3"), latent_image=r.output_value("4"), denoise=1.0,
        guidance_start=0.0, guidance_end=end)
    guided = int(round(steps * end))
    assert calls == [2 * batch] * guided + [batch] * (steps - guided)
    report = out.ui["shapefirst_guidance"][0]
    assert report["rows_computed"] == sum(calls) and report["skipped_passes"] == steps - guided


# ---------------------------------------------------------------- Wan 2.2: two experts
def _wan22(names, batch=1) -> dict:
    g = base(names, "wan21_t2v", batch=batch)
    g["1"]["inputs"]["unet_name"] = names["wan22_high_noise"]
    g["11"] = {"class_type": "UNETLoader", "inputs": {"unet_name": names["wan22_low_noise"], "weight_dtype": "default"}}
    return g


def test_wan22_experts_load_as_two_wan_models(comfy, family_models):
    r = comfy.run(_wan22(family_models), outputs=["1", "11"])
    high, low = r.output_value("1", 0), r.output_value("11", 0)
    for m in (high, low):
        assert type(m.model).__name__ == "WAN21" and type(m.model.model_config).__name__ == "WAN21_T2V"
    a, b = high.model.diffusion_model.state_dict(), low.model.diffusion_model.state_dict()
    assert a.keys() == b.keys() and not torch.equal(a["head.head.weight"], b["head.head.weight"])


def _advanced(model, latent, start, end, add_noise, leftover, cfg=3.5, positive=("2", 0), steps=4):
    return {"class_type": "KSamplerAdvanced", "inputs": {
        "model": list(model), "add_noise": add_noise, "noise_seed": 5, "steps": steps, "cfg": cfg,
        "sampler_name": "euler", "scheduler": "simple", "positive": list(positive), "negative": ["3", 0],
        "latent_image": list(latent), "start_at_step": start, "end_at_step": end,
        "return_with_leftover_noise": leftover}}


def test_wan22_two_expert_chain_samples(comfy, family_models):
    g = _wan22(family_models)
    g["5"] = _advanced(("1", 0), ("4", 0), 0, 2, "enable", "enable")
    g["6"] = _advanced(("11", 0), ("5", 0), 2, 4, "disable", "disable")
    g["7"] = _advanced(("11", 0), ("4", 0), 0, 4, "enable", "disable")  # the low-noise expert alone
    r = comfy.run(g, outputs=["6", "7"])
    out = _samples(r, "6")
    assert out.shape == (1, 16, 2, 8, 8) and torch.isfinite(out).all()
    assert (out - _samples(r, "7")).abs().max() > 1e-4


def _chain_parts(g):
    """20-24: 4 simple-schedule sigmas split after step 2 (high-noise expert: [0], low-noise: [1]),
    seeded noise for the first stage, none for the second, euler."""
    g["20"] = {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "simple", "steps": 4,
                                                          "denoise": 1.0}}
    g["21"] = {"class_type": "SplitSigmas", "inputs": {"sigmas": ["20", 0], "step": 2}}
    g["22"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": 5}}
    g["23"] = {"class_type": "DisableNoise", "inputs": {}}
    g["24"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
    return g


def test_wan22_truncated_guidance_on_the_expert_chain(comfy, family_models, caplog):
    """Guidance on the high-noise expert only (eq. 9 with the window = its steps): the low-noise expert's
    truncated guider equals core CFGGuider at cfg 1 on the empty prompt, bit for bit."""
    g = _chain_parts(_wan22(family_models))

    def guider(node, model, cfg=3.5, positive=("2", 0), window=None):
        inputs = {"model": [model, 0], "positive": list(positive), "negative": ["3", 0], "cfg": cfg}
        if window is None:
            g[node] = {"class_type": "CFGGuider", "inputs": inputs}
        else:
            g[node] = {"class_type": "TruncatedCFGGuider", "inputs": {**inputs, **window}}

    def sample(node, noise, guider_node, sigmas, latent):
        g[node] = {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": [noise, 0], "guider": [guider_node, 0], "sampler": ["24", 0], "sigmas": sigmas,
            "latent_image": list(latent)}}

    guider("30", "1")  # high-noise expert, core CFG
    guider("31", "1", window=WINDOW_ALL)  # high-noise expert, truncated guider, window = all its steps
    sample("40", "22", "30", ["21", 0], ("4", 0))
    sample("41", "22", "31", ["21", 0], ("4", 0))
    guider("32", "11", cfg=1.0, positive=("3", 0))  # reference: the empty prompt alone, no CFG
    guider("33", "11", window={**WINDOW_ALL, "guidance_end": 0.0})  # truncated: no step guided
    guider("34", "11")  # plain CFG on the low-noise expert too
    sample("42", "23", "32", ["21", 1], ("40", 0))
    sample("43", "23", "33", ["21", 1], ("40", 0))
    sample("44", "23", "34", ["21", 1], ("40", 0))
    with caplog.at_level("INFO", logger="shapefirst"):
        r = comfy.run(g, outputs=["40", "41", "42", "43", "44"])
    assert torch.equal(_samples(r, "40"), _samples(r, "41"))
    assert torch.equal(_samples(r, "42"), _samples(r, "43"))
    assert (_samples(r, "44") - _samples(r, "43")).abs().max() > 1e-4
    lines = [rec.getMessage() for rec in caplog.records if rec.getMessage().startswith("TruncatedCFG:")]
    assert any("2 steps, 2 model evaluations, 2 guided, 0 conditional passes skipped, 0.0%" in m for m in lines), lines
    assert any("2 steps, 2 model evaluations, 0 guided, 2 conditional passes skipped, 50.0%" in m for m in lines), lines


def test_wan22_experts_run_exactly_the_expected_rows(comfy, family_models):
    import nodes

    r = comfy.run(_chain_parts(_wan22(family_models, batch=2)),
                  outputs=["1", "11", "2", "3", "4", "21", "22", "23", "24"])
    high, high_calls = _count_rows(r.output_value("1", 0))
    low, low_calls = _count_rows(r.output_value("11", 0))
    node = nodes.NODE_CLASS_MAPPINGS
    conds = {"positive": r.output_value("2"), "negative": r.output_value("3"), "cfg": 3.5}
    guided = node["TruncatedCFGGuider"].execute(model=high, **conds, **WINDOW_ALL).args[0]
    tail = node["TruncatedCFGGuider"].execute(model=low, **conds, **{**WINDOW_ALL, "guidance_end": 0.0}).args[0]
    sampler, first, second = r.output_value("24"), r.output_value("21", 0), r.output_value("21", 1)
    mid = node["SamplerCustomAdvanced"].execute(noise=r.output_value("22"), guider=guided, sampler=sampler,
                                                sigmas=first, latent_image=r.output_value("4")).args[0]
    out = node["SamplerCustomAdvanced"].execute(noise=r.output_value("23"), guider=tail, sampler=sampler,
                                                sigmas=second, latent_image=mid).args[0]
    assert high_calls == [4, 4] and low_calls == [2, 2]  # batch 2: cond + uncond, then the uncond rows only
    assert out["samples"].shape == (2, 16, 2, 8, 8) and torch.isfinite(out["samples"]).all()
