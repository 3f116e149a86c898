"""Tier 2: TruncatedCFGModel (the MODEL patch) with core sampler nodes, in a real ComfyUI (tiny SD1.5)."""

from __future__ import annotations

import pytest
import torch

import graphs
from devtools.harness import GraphError
from guidance_events import reports
from test_truncated_cfg_nodes import WINDOW_ALL, _controlnet, _Eq9Reference, truncated

pytestmark = [pytest.mark.comfy, pytest.mark.usefixtures("browser_events")]


def patch(model, **window):
    return {"class_type": "TruncatedCFGModel", "inputs": {"model": list(model), **{**WINDOW_ALL, **window}}}


def advanced(model, latent, start, end, add_noise=True, leftover=False, steps=8, seed=7, cfg=7.5, sampler="euler"):
    return {"class_type": "KSamplerAdvanced", "inputs": {
        "model": list(model), "add_noise": "enable" if add_noise else "disable", "noise_seed": seed, "steps": steps,
        "cfg": cfg, "sampler_name": sampler, "scheduler": "normal", "positive": ["2", 0], "negative": ["3", 0],
        "latent_image": list(latent), "start_at_step": start, "end_at_step": end,
        "return_with_leftover_noise": "enable" if leftover else "disable"}}


def custom_nodes(g, model, out, steps=3, guider=None):
    """SamplerCustom and SamplerCustomAdvanced (+ CFGGuider) on ``model``: nodes out, out+'a'."""
    g[f"{out}s"] = {"class_type": "BasicScheduler", "inputs": {"model": list(model), "scheduler": "karras",
                                                               "steps": steps, "denoise": 1.0}}
    g[f"{out}k"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "dpmpp_2m"}}
    g[f"{out}n"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": 5}}
    g[out] = {"class_type": "SamplerCustom", "inputs": {
        "model": list(model), "add_noise": True, "noise_seed": 5, "cfg": 6.0, "positive": ["2", 0],
        "negative": ["3", 0], "sampler": [f"{out}k", 0], "sigmas": [f"{out}s", 0], "latent_image": ["4", 0]}}
    g[f"{out}g"] = guider or {"class_type": "CFGGuider", "inputs": {
        "model": list(model), "positive": ["2", 0], "negative": ["3", 0], "cfg": 6.0}}
    g[f"{out}a"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": [f"{out}n", 0], "guider": [f"{out}g", 0], "sampler": [f"{out}k", 0], "sigmas": [f"{out}s", 0],
        "latent_image": ["4", 0]}}
    return [out, f"{out}a"]


def test_window_over_all_steps_is_every_core_sampler_bit_for_bit(comfy, sd15_ckpt):
    g = graphs.base(sd15_ckpt)
    g["5"] = patch(("1", 0))
    g["10"], g["20"] = graphs.ksampler(("1", 0), ("4", 0), steps=3), graphs.ksampler(("5", 0), ("4", 0), steps=3)
    g["11"], g["21"] = (advanced(m, ("4", 0), 0, 3, steps=3, sampler="heun") for m in (("1", 0), ("5", 0)))
    pairs = [("10", "20"), ("11", "21")] + list(zip(custom_nodes(g, ("1", 0), "12"), custom_nodes(g, ("5", 0), "22")))
    r = comfy.run(g, outputs=[x for p in pairs for x in p])
    for plain, ours in pairs:
        assert torch.equal(r.output_value(plain)["samples"], r.output_value(ours)["samples"]), (plain, ours)
    runs = reports(r, "5")
    assert len(runs) == 4 and all(rep["skipped_passes"] == 0 for rep in runs)
    assert "inside the guidance window" in runs[0]["note"]


def test_truncates_exactly_like_the_sampler_node_and_reports_to_its_own_node(comfy, sd15_ckpt):
    half = {"guidance_end": 0.5}
    g = graphs.base(sd15_ckpt)
    g["5"] = patch(("1", 0), **half)
    g["6"] = graphs.ksampler(("5", 0), ("4", 0), steps=6)
    g["7"] = truncated(("1", 0), ("4", 0), steps=6, window={**WINDOW_ALL, **half})
    r = comfy.run(g, outputs=["6", "7"])
    assert torch.equal(r.output_value("6")["samples"], r.output_value("7")["samples"])
    (report,) = reports(r, "5")
    sampler_report = dict(r.ui["7"]["shapefirst_guidance"][0])
    sampler_report.pop("settings")
    assert report == sampler_report
    assert (report["steps"], report["guided_evaluations"], report["skipped_passes"]) == (6, 3, 3)
    assert report["saved_fraction"] == pytest.approx(0.25) and len(report["curve"]) == 3


def _sigmas(comfy, sd15_ckpt, steps):
    import comfy.samplers as comfy_samplers

    r = comfy.run(graphs.base(sd15_ckpt), outputs=["1", "2", "3", "4"])
    model = r.output_value("1", 0)
    return r, model, comfy_samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", steps)


@pytest.mark.parametrize("tail", ["uncond", "cond"])
def test_sigma_window_matches_a_reference_of_eq9(comfy, sd15_ckpt, tail):
    import comfy.sample as comfy_sample
    import comfy.samplers as comfy_samplers

    steps, seed = 8, 11
    r, model, sigmas = _sigmas(comfy, sd15_ckpt, steps)
    low = float(sigmas[3] + sigmas[4]) / 2  # steps 0-3 have sigma >= low: guided
    g = graphs.base(sd15_ckpt)
    g["5"] = patch(("1", 0), window_units="sigma", sigma_low=low, sigma_high=1000.0, tail=tail)
    g["6"] = graphs.ksampler(("5", 0), ("4", 0), steps=steps, seed=seed, cfg=6.0)
    got = comfy.run(g, outputs=["6"]).output_value("6")["samples"]
    ref = _Eq9Reference(comfy_samplers, model, r.output_value("2"), r.output_value("3"), 6.0, k=4, tail=tail)
    ref.schedule = sigmas.tolist()
    latent = r.output_value("4")["samples"]
    want = ref.guider.sample(comfy_sample.prepare_noise(latent, seed), latent, comfy_samplers.sampler_object("euler"),
                             sigmas, seed=seed)
    assert torch.allclose(got, want.to(got.dtype), rtol=0, atol=1e-5 * want.abs().max().item()), \
        (got - want).abs().max()


def test_two_chained_advanced_samplers_with_sigma_units_equal_one_sampler(comfy, sd15_ckpt):
    _, _, sigmas = _sigmas(comfy, sd15_ckpt, 8)
    low = float(sigmas[5] + sigmas[6]) / 2  # guided: steps 0-5, across the chain's boundary at step 4
    g = graphs.base(sd15_ckpt)
    g["5"] = patch(("1", 0), window_units="sigma", sigma_low=low, sigma_high=1000.0)
    for model, one, hi, lo in ((("1", 0), "10", "11", "12"), (("5", 0), "20", "21", "22")):
        g[one] = advanced(model, ("4", 0), 0, 8)
        g[hi] = advanced(model, ("4", 0), 0, 4, leftover=True)  # the high-noise expert
        g[lo] = advanced(model, (hi, 0), 4, 10000, add_noise=False)  # then the low-noise one
    r = comfy.run(g, outputs=["10", "12", "20", "22"])
    out = {k: r.output_value(k)["samples"] for k in ("10", "12", "20", "22")}
    # core's own chain differs from one sampler only by the latent scale round trip between the two
    core_gap = (out["10"] - out["12"]).abs().max().item()
    ours_gap = (out["20"] - out["22"]).abs().max().item()
    if core_gap == 0:
        assert ours_gap == 0
    assert ours_gap <= max(10 * core_gap, 1e-6 * out["20"].abs().max().item()), (ours_gap, core_gap)
    assert (out["20"] - out["10"]).abs().max().item() > max(1e-3, 100 * ours_gap)  # the truncation acted
    runs = {(x["runs"], x["steps"], x["skipped_passes"]) for x in reports(r, "5")}
    assert (1, 8, 2) in runs and (2, 8, 2) in runs  # one sampler; the chain's two runs add up in one report


def _counting_unet(model):
    """A clone whose UNet forward (inside every DIFFUSION_MODEL wrapper, EasyCache's too) counts batch rows."""
    m = model.clone()
    unet = m.get_model_object("diffusion_model")
    original, calls = unet._forward, []

    def forward(x, *args, **kwargs):
        calls.append(int(x.shape[0]))
        return original(x, *args, **kwargs)

    m.add_object_patch("diffusion_model._forward", forward)
    return m, calls


def test_composes_with_easycache_and_counts_the_rows_really_computed(comfy, sd15_ckpt, caplog):
    import nodes

    r = comfy.run(graphs.base(sd15_ckpt), outputs=["1", "2", "3", "4"])
    counted, calls = _counting_unet(r.output_value("1", 0))
    ours = nodes.NODE_CLASS_MAPPINGS["TruncatedCFGModel"].execute(counted, **{**WINDOW_ALL, "guidance_end": 0.5})[0]
    cached = nodes.NODE_CLASS_MAPPINGS["EasyCache"].execute(ours, reuse_threshold=3.0, start_percent=0.0,
                                                            end_percent=1.0, verbose=False)[0]
    controller = ours.get_wrappers("calc_cond_batch", "shapefirst.truncated_cfg")[0].__self__
    with caplog.at_level("INFO"):
        nodes.common_ksampler(cached, 1, 10, 7.0, "euler", "normal", r.output_value("2"), r.output_value("3"),
                              r.output_value("4"))
    report = controller.report
    assert report.skipped_passes == 5 and report.evaluations == 10  # ours acted
    assert any("EasyCache - skipped" in m and not m.startswith("EasyCache - skipped 0/") for m in caplog.messages)
    assert report.rows_computed == sum(calls) < 15  # EasyCache skipped some of the 15 rows ours asked for
    assert report.saved_fraction == pytest.approx(1 - sum(calls) / 20)


@pytest.mark.parametrize("core_node,inputs", [("CFGZeroStar", {}), ("RescaleCFG", {"multiplier": 0.7})])
def test_composes_with_core_cfg_patches_and_a_controlnet(comfy, sd15_ckpt, sd15_controlnet, core_node, inputs):
    g = graphs.base(sd15_ckpt)
    g["10"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": sd15_controlnet}}
    g["11"] = {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0xC04020}}
    pos, neg = _controlnet(g, "10", "11")
    g["5"] = {"class_type": core_node, "inputs": {"model": ["1", 0], **inputs}}
    g["6"] = patch(("5", 0), guidance_end=0.5)
    g["7"] = graphs.ksampler(("6", 0), ("4", 0), steps=4, positive=pos, negative=neg)
    g["8"] = truncated(("5", 0), ("4", 0), steps=4, positive=pos, negative=neg,
                       window={**WINDOW_ALL, "guidance_end": 0.5})
    g["9"] = graphs.ksampler(("5", 0), ("4", 0), steps=4, positive=pos, negative=neg)
    r = comfy.run(g, outputs=["7", "8", "9"])
    assert torch.equal(r.output_value("7")["samples"], r.output_value("8")["samples"])
    assert not torch.equal(r.output_value("7")["samples"], r.output_value("9")["samples"])


def test_applied_twice_replaces_and_never_stacks(comfy, sd15_ckpt):
    import comfy.patcher_extension as pe

    g = graphs.base(sd15_ckpt)
    g["5"] = patch(("1", 0), guidance_end=0.2, tail="cond")
    g["6"] = patch(("5", 0), guidance_end=0.5)
    g["7"] = patch(("1", 0), guidance_end=0.5)
    g["8"], g["9"] = graphs.ksampler(("6", 0), ("4", 0), steps=6), graphs.ksampler(("7", 0), ("4", 0), steps=6)
    r = comfy.run(g, outputs=["6", "8", "9"])
    assert torch.equal(r.output_value("8")["samples"], r.output_value("9")["samples"])
    twice = r.output_value("6")
    for kind in (pe.WrappersMP.SAMPLER_SAMPLE, pe.WrappersMP.CALC_COND_BATCH, pe.WrappersMP.DIFFUSION_MODEL):
        assert len(twice.get_wrappers(kind, "shapefirst.truncated_cfg")) == 1
    assert reports(r, "5") == [] and [x["skipped_passes"] for x in reports(r, "6")] == [3]


@pytest.mark.parametrize("guider", [  # DualCFGGuider is truncated: test_family_hidream.py
    {"class_type": "PerpNegGuider", "inputs": {"model": None, "positive": ["2", 0], "negative": ["3", 0],
                                               "empty_conditioning": ["3", 0], "cfg": 6.0, "neg_scale": 1.0}},
])
def test_guiders_with_more_than_two_conds_are_left_exact_with_one_warning(comfy, sd15_ckpt, guider, caplog):
    g = graphs.base(sd15_ckpt)
    g["5"] = patch(("1", 0), guidance_end=0.3)
    outs = []
    for model, name in ((("1", 0), "10"), (("5", 0), "20")):
        gd = {"class_type": guider["class_type"], "inputs": {**guider["inputs"], "model": list(model)}}
        outs.append(custom_nodes(g, model, name, guider=gd)[1])
    with caplog.at_level("WARNING", logger="shapefirst"):
        r = comfy.run(g, outputs=outs)
    assert torch.equal(r.output_value(outs[0])["samples"], r.output_value(outs[1])["samples"])
    warnings = [m for m in caplog.messages if "more than two" in m or "conditionings (DualCFGGuider" in m]
    assert len(warnings) == 1 and warnings[0].startswith("TruncatedCFGModel:")
    (report,) = reports(r, "5")
    assert report["skipped_passes"] == 0 and "more than two conditionings" in report["note"]


def test_cfg_1_says_nothing_was_skipped_and_why(comfy, sd15_ckpt, caplog):
    g = graphs.base(sd15_ckpt)
    g["5"] = patch(("1", 0))
    g["6"] = graphs.ksampler(("5", 0), ("4", 0), steps=3, cfg=1.0)
    g["7"] = graphs.ksampler(("1", 0), ("4", 0), steps=3, cfg=1.0)
    with caplog.at_level("INFO", logger="shapefirst"):
        r = comfy.run(g, outputs=["6", "7"])
    assert torch.equal(r.output_value("6")["samples"], r.output_value("7")["samples"])
    (report,) = reports(r, "5")
    assert report["skipped_passes"] == 0 and report["saved_fraction"] == 0.0
    assert "3 of 3 evaluations ran one pass only (cfg = 1" in report["note"]
    assert any("there was no second pass to skip" in m for m in caplog.messages)


def test_each_evaluation_carries_its_tail_decision(comfy, sd15_ckpt):
    """transformer_options[TAIL_KEY] of every model call says what the patch decided for its evaluation:
    True exactly where the post-CFG hook sees one prediction in both slots (heun: 2 evaluations per step but
    the last, each evaluation's sigma read, the second of the last guided step already in the tail;
    dpmpp_2m: one per step, its step told by the sampler's callback)."""
    import comfy.patcher_extension as pe
    import nodes

    r = comfy.run(graphs.base(sd15_ckpt), outputs=["1", "2", "3", "4"])
    for sampler, evaluations, tails in (("heun", 5, 2), ("dpmpp_2m", 6, 3)):
        ours = nodes.NODE_CLASS_MAPPINGS["TruncatedCFGModel"].execute(r.output_value("1", 0), **{
            **WINDOW_ALL, "guidance_end": 0.5})[0]
        flags, skipped = [], []

        def apply_model(executor, *args, **kwargs):
            flags.append(args[5]["shapefirst.truncated_cfg.tail"])
            return executor(*args, **kwargs)

        def post_cfg(args):  # in the tail both slots hold the one computed prediction
            skipped.append(args["cond_denoised"] is args["uncond_denoised"])
            return args["denoised"]

        ours.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, "test.tail", apply_model)
        ours.set_model_sampler_post_cfg_function(post_cfg)
        steps = 3 if sampler == "heun" else 6
        nodes.common_ksampler(ours, 1, steps, 7.0, sampler, "normal", r.output_value("2"), r.output_value("3"),
                              r.output_value("4"))
        assert flags == skipped and len(flags) == evaluations and sum(flags) == tails, (sampler, flags, skipped)


@pytest.mark.parametrize("change,message", [
    ({"sigma_low": 5.0, "sigma_high": 2.0}, r"TruncatedCFGModel: sigma_low \(5.0\) is above sigma_high \(2.0\)"),
    ({"sigma_low": 100.0, "sigma_high": 200.0}, r"TruncatedCFGModel: the window \[100, 200\] lies outside this "
                                                r"model's noise range \[0\.029\d*, 14\.61\]"),
])
def test_bad_sigma_windows_name_the_node_and_the_fix(comfy, sd15_ckpt, change, message):
    g = graphs.base(sd15_ckpt)
    g["5"] = patch(("1", 0), window_units="sigma", **change)
    g["6"] = graphs.ksampler(("5", 0), ("4", 0), steps=3)
    g["7"] = {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}
    g["8"] = {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}}
    with pytest.raises(GraphError, match=message) as err:
        comfy.run(g)
    details = err.value.details
    if "node_errors" in details:  # refused by validation: marked on the two inputs the check reads, no other
        errors = details["node_errors"]["5"]["errors"]
        assert sorted(e["extra_info"]["input_name"] for e in errors) == ["sigma_high", "sigma_low"], errors
        texts = [e["details"] for e in errors]
    else:  # refused when the node runs
        texts = [details["exception_message"]]
    assert all(t.count("TruncatedCFGModel") == 1 and "Truncated CFG:" not in t for t in texts), texts  # named once


def test_a_window_with_no_sampled_step_warns_with_the_sampled_sigmas(comfy, sd15_ckpt, caplog):
    _, _, sigmas = _sigmas(comfy, sd15_ckpt, 3)
    g = graphs.base(sd15_ckpt)
    between = float(sigmas[0] + sigmas[1]) / 2
    g["5"] = patch(("1", 0), window_units="sigma", sigma_low=between * 0.99, sigma_high=between)
    g["6"] = graphs.ksampler(("5", 0), ("4", 0), steps=3)
    with caplog.at_level("WARNING", logger="shapefirst"):
        comfy.run(g, outputs=["6"])
    (warning,) = [m for m in caplog.messages if "no sampled step" in m]
    assert warning.startswith("TruncatedCFGModel:") and f"{float(sigmas[1]):.4g}" in warning


def test_a_sampler_off_its_steps_sigma_is_named_in_a_warning(comfy, sd15_ckpt, caplog):
    """Samplers followed by their step callback (euler...) must evaluate at their step's sigma; one that
    does not (here a core euler that evaluates at a sigma 1% off) is named in a warning when the run ends."""
    import nodes
    from comfy import samplers
    from comfy.k_diffusion import sampling as kd

    def sample_euler(model, x, sigmas, *args, **kwargs):  # core's euler, fed a sigma 1% off its step's
        return kd.sample_euler(lambda x_, s, **kw: model(x_, s * 1.01, **kw), x, sigmas, *args, **kwargs)

    sample_euler.__module__ = kd.__name__
    r = comfy.run(graphs.base(sd15_ckpt), outputs=["1", "2", "3", "4"])
    ours = nodes.NODE_CLASS_MAPPINGS["TruncatedCFGModel"].execute(r.output_value("1", 0), **{
        **WINDOW_ALL, "guidance_end": 0.5})[0]
    guider = samplers.CFGGuider(ours)
    guider.set_conds(r.output_value("2"), r.output_value("3"))
    guider.set_cfg(7.0)
    sigmas = samplers.calculate_sigmas(ours.get_model_object("model_sampling"), "normal", 4)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with caplog.at_level("WARNING", logger="shapefirst"):
        guider.sample(noise, torch.zeros(1, 4, 8, 8), samplers.KSAMPLER(sample_euler), sigmas, disable_pbar=True)
        guider.sample(noise, torch.zeros(1, 4, 8, 8), samplers.ksampler("euler"), sigmas, disable_pbar=True)
    warnings = [m for m in caplog.messages if "evaluated the model at a noise level other than" in m]
    assert len(warnings) == 1 and "sample_euler" in warnings[0]
