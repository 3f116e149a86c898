"""Tier 2: TruncatedCFGSampler / TruncatedCFGGuider inside a real ComfyUI (tiny SD1.5)."""

from __future__ import annotations

import pytest
import torch

from eq9_reference import Eq9Reference

import graphs
from devtools.harness import GraphError

pytestmark = pytest.mark.comfy

SAMPLERS = ["euler", "euler_ancestral", "heun", "dpm_2", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_sde", "ddim",
            "uni_pc", "lcm"]
SCHEDULERS = ["normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform"]
WINDOW_ALL = {"guidance_start": 0.0, "guidance_end": 1.0, "tail": "uncond", "window": "fixed",
              "adaptive_threshold": 0.1}


def truncated(model, latent, window=None, **kw):
    node = graphs.ksampler(model, latent, **kw)
    node["class_type"] = "TruncatedCFGSampler"
    node["inputs"].update(window or WINDOW_ALL)
    return node


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_window_over_all_steps_is_identical_to_ksampler(comfy, sd15_ckpt, sampler):
    g = graphs.base(sd15_ckpt, batch=2)
    pairs = []
    for k, scheduler in enumerate(SCHEDULERS):
        for denoise in (1.0, 0.6):
            a, b = f"k{k}_{denoise}", f"t{k}_{denoise}"
            g[a] = graphs.ksampler(("1", 0), ("4", 0), steps=3, sampler=sampler, scheduler=scheduler, denoise=denoise)
            g[b] = truncated(("1", 0), ("4", 0), steps=3, sampler=sampler, scheduler=scheduler, denoise=denoise)
            pairs.append((a, b, scheduler, denoise))
    r = comfy.run(g, outputs=[x for p in pairs for x in p[:2]])
    for a, b, scheduler, denoise in pairs:
        plain, ours = r.output_value(a)["samples"], r.output_value(b)["samples"]
        assert torch.equal(plain, ours), f"{sampler}/{scheduler}/denoise {denoise}: {(plain - ours).abs().max()}"


_Eq9Reference = Eq9Reference  # the reference written in tests/eq9_reference.py


@pytest.mark.parametrize("tail", ["uncond", "cond"])
def test_matches_a_step_by_step_reference_of_eq9(comfy, sd15_ckpt, tail):
    import comfy.sample as comfy_sample
    import comfy.samplers as comfy_samplers

    steps, end, seed = 8, 0.5, 11
    g = graphs.base(sd15_ckpt)
    g["5"] = truncated(("1", 0), ("4", 0), steps=steps, seed=seed, cfg=6.0,
                       window={**WINDOW_ALL, "guidance_end": end, "tail": tail})
    r = comfy.run(g, outputs=["5", "2", "3"])
    model, pos, neg = r.output_value("1", 0), r.output_value("2"), r.output_value("3")
    latent = r.output_value("4")["samples"]
    ref = _Eq9Reference(comfy_samplers, model, pos, neg, 6.0, k=int(steps * end), tail=tail)
    sigmas = comfy_samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", steps)
    ref.schedule = sigmas.tolist()
    noise = comfy_sample.prepare_noise(latent, seed)
    want = ref.guider.sample(noise, latent, comfy_samplers.sampler_object("euler"), sigmas, seed=seed)
    got = r.output_value("5")["samples"]
    assert torch.allclose(got, want.to(got.dtype), rtol=0, atol=1e-5 * want.abs().max().item()), \
        (got - want).abs().max()
    # and the truncation really changed the result
    g["6"] = truncated(("1", 0), ("4", 0), steps=steps, seed=seed, cfg=6.0)
    full = comfy.run(g, outputs=["6"]).output_value("6")["samples"]
    assert (full - got).abs().max() > 1e-3



def _controlnet(g, loader, image, start=0.0, end=1.0, node="12"):
    """ControlNetApplyAdvanced on nodes 2/3 (positive and negative), as core's default workflow does."""
    g[node] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
        "positive": ["2", 0], "negative": ["3", 0], "control_net": [loader, 0], "image": [image, 0],
        "strength": 1.0, "start_percent": start, "end_percent": end}}
    return (node, 0), (node, 1)


def test_controlnet_on_the_conditioning_still_works(comfy, sd15_ckpt, sd15_controlnet):
    import comfy.sample as comfy_sample
    import comfy.samplers as comfy_samplers

    steps, end, seed = 6, 0.5, 4
    g = graphs.base(sd15_ckpt)
    g["10"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": sd15_controlnet}}
    g["11"] = {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0xC04020}}
    pos, neg = _controlnet(g, "10", "11")
    tail_pos, tail_neg = _controlnet(g, "10", "11", start=0.7, node="13")  # control only late: in the tail
    g["20"] = graphs.ksampler(("1", 0), ("4", 0), steps=steps, seed=seed, positive=pos, negative=neg)
    g["21"] = truncated(("1", 0), ("4", 0), steps=steps, seed=seed, positive=pos, negative=neg)
    half = {**WINDOW_ALL, "guidance_end": end}
    g["22"] = truncated(("1", 0), ("4", 0), window=half, steps=steps, seed=seed, positive=pos, negative=neg)
    g["23"] = truncated(("1", 0), ("4", 0), window=half, steps=steps, seed=seed)  # no control
    g["24"] = truncated(("1", 0), ("4", 0), window=half, steps=steps, seed=seed, positive=tail_pos,
                        negative=tail_neg)
    r = comfy.run(g, outputs=["1", "4", "12", "20", "21", "22", "23", "24"])
    out = {k: r.output_value(k)["samples"] for k in ("20", "21", "22", "23", "24")}
    # window = all steps: exactly core KSampler with the same ControlNet
    assert torch.equal(out["20"], out["21"])
    # truncated: exactly eq. 9 with the controlled conditioning (the reference runs core's calc_cond_batch,
    # which applies the control to whichever branch is computed)
    model, latent = r.output_value("1", 0), r.output_value("4")["samples"]
    ref = _Eq9Reference(comfy_samplers, model, r.output_value("12", 0), r.output_value("12", 1), 7.5,
                        k=int(steps * end), tail="uncond")
    sigmas = comfy_samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", steps)
    ref.schedule = sigmas.tolist()
    want = ref.guider.sample(comfy_sample.prepare_noise(latent, seed), latent, comfy_samplers.sampler_object("euler"),
                             sigmas, seed=seed)
    assert torch.allclose(out["22"], want.to(out["22"].dtype), rtol=0, atol=1e-5 * want.abs().max().item())
    # the control acts: with it on every step, and with it only on the late steps, where the conditional
    # pass is skipped and only the (controlled) negative branch runs
    assert (out["22"] - out["23"]).abs().max() > 1e-3
    assert (out["24"] - out["23"]).abs().max() > 1e-3


def _count_rows(model):
    """A clone of ``model`` whose UNet calls are counted (batch rows per call)."""
    import comfy.patcher_extension as pe

    calls = []

    def counting(executor, *args, **kwargs):
        calls.append(int(args[0].shape[0]))
        return executor(*args, **kwargs)

    m = model.clone()
    m.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "test.count", counting)
    return m, calls


def _run_node(node_id, **inputs):
    import nodes

    return nodes.NODE_CLASS_MAPPINGS[node_id].execute(**inputs)


@pytest.mark.parametrize("sampler,evals_per_step", [("euler", 1), ("dpmpp_2m", 1), ("heun", 2)])
def test_unet_runs_exactly_the_expected_rows(comfy, sd15_ckpt, sampler, evals_per_step):
    r = comfy.run(graphs.base(sd15_ckpt, batch=2), outputs=["1", "2", "3", "4"])
    model, calls = _count_rows(r.output_value("1", 0))
    steps, end = 10, 0.4
    out = _run_node("TruncatedCFGSampler", model=model, seed=1, steps=steps, cfg=7.0, sampler_name=sampler,
                    scheduler="normal", positive=r.output_value("2"), negative=r.output_value("3"),
                    latent_image=r.output_value("4"), denoise=1.0, guidance_start=0.0, guidance_end=end)
    report = out.ui["shapefirst_guidance"][0]
    batch = 2
    guided_steps = int(round(steps * end))
    if evals_per_step == 1:
        expected = [2 * batch] * guided_steps + [batch] * (steps - guided_steps)
        assert calls == expected
    else:  # heun: two evaluations per step but the last; the one at the window's edge is unguided
        evaluations = 2 * steps - 1
        assert len(calls) == evaluations
        assert calls.count(2 * batch) == 2 * guided_steps - 1
    assert report["evaluations"] == len(calls)
    assert report["rows_computed"] == sum(calls)
    assert report["rows_full_cfg"] == 2 * batch * len(calls)
    assert report["skipped_passes"] == calls.count(batch)
    assert report["saved_fraction"] == pytest.approx(1 - sum(calls) / (2 * batch * len(calls)))
    assert [p["step"] for p in report["curve"]] == list(range(guided_steps))


def test_the_users_model_is_untouched_and_hooks_still_run(comfy, sd15_ckpt):
    import copy

    r = comfy.run(graphs.base(sd15_ckpt), outputs=["1", "2", "3", "4"])
    user_model = r.output_value("1", 0).clone()
    seen = []
    user_model.set_model_sampler_post_cfg_function(lambda args: (seen.append(1), args["denoised"])[1])
    before = copy.copy(user_model.model_options["transformer_options"].get("wrappers", {}))
    before_keys = {k: sorted(v) for k, v in user_model.wrappers.items()}
    out = _run_node("TruncatedCFGSampler", model=user_model, seed=1, steps=6, cfg=7.0, sampler_name="euler",
                    scheduler="normal", positive=r.output_value("2"), negative=r.output_value("3"),
                    latent_image=r.output_value("4"), denoise=1.0, guidance_start=0.0, guidance_end=0.5)
    assert {k: sorted(v) for k, v in user_model.wrappers.items()} == before_keys
    assert user_model.model_options["transformer_options"].get("wrappers", {}) == before
    assert len(seen) == out.ui["shapefirst_guidance"][0]["evaluations"] == 6  # post-CFG hook ran every step


@pytest.mark.parametrize("core_node,inputs", [("CFGZeroStar", {}), ("RescaleCFG", {"multiplier": 0.7})])
def test_composes_with_core_cfg_patches_and_leaves_other_samplers_alone(comfy, sd15_ckpt, core_node, inputs):
    g = graphs.base(sd15_ckpt)
    g["5"] = {"class_type": core_node, "inputs": {"model": ["1", 0], **inputs}}
    g["6"] = graphs.ksampler(("5", 0), ("4", 0), steps=4)
    g["7"] = truncated(("5", 0), ("4", 0), steps=4)
    g["8"] = graphs.ksampler(("1", 0), ("4", 0), steps=4)  # an ordinary sampler beside ours
    g["9"] = truncated(("5", 0), ("4", 0), steps=4, window={**WINDOW_ALL, "guidance_end": 0.5})
    r = comfy.run(g, outputs=["6", "7", "8", "9"])
    assert torch.equal(r.output_value("6")["samples"], r.output_value("7")["samples"])
    alone = comfy.run({**graphs.base(sd15_ckpt), "8": g["8"]}, outputs=["8"]).output_value("8")["samples"]
    assert torch.equal(r.output_value("8")["samples"], alone)
    assert not torch.equal(r.output_value("9")["samples"], r.output_value("6")["samples"])


def test_adaptive_window_stops_where_the_strength_falls_below_the_threshold(comfy, sd15_ckpt):
    g = graphs.base(sd15_ckpt)
    g["5"] = truncated(("1", 0), ("4", 0), steps=8, window={**WINDOW_ALL, "window": "adaptive",
                                                            "adaptive_threshold": 1e-6})
    never = comfy.run(g, outputs=["5"]).ui["5"]["shapefirst_guidance"][0]
    assert never["stop_step"] is None and never["skipped_passes"] == 0 and len(never["curve"]) == 8
    ratios = [p["ratio"] for p in never["curve"]]
    # a threshold above the first step's strength stops after the first step
    g["6"] = truncated(("1", 0), ("4", 0), steps=8, window={**WINDOW_ALL, "window": "adaptive",
                                                            "adaptive_threshold": ratios[0] * 1.01})
    first = comfy.run(g, outputs=["6"]).ui["6"]["shapefirst_guidance"][0]
    assert first["stop_step"] == 1 and first["guided_evaluations"] == 1 and first["skipped_passes"] == 7
    # a threshold in the middle of the measured curve stops at the first step below it
    threshold = sorted(ratios)[len(ratios) // 2]
    g["7"] = truncated(("1", 0), ("4", 0), steps=8, window={**WINDOW_ALL, "window": "adaptive",
                                                            "adaptive_threshold": threshold})
    mid = comfy.run(g, outputs=["7"]).ui["7"]["shapefirst_guidance"][0]
    assert mid["stop_step"] == next(i for i, v in enumerate(ratios) if v < threshold) + 1


def test_guider_with_custom_sigmas_matches_cfg_guider_and_truncates(comfy, sd15_ckpt, caplog):
    g = graphs.base(sd15_ckpt)
    g["5"] = {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "karras", "steps": 9,
                                                         "denoise": 1.0}}
    g["6"] = {"class_type": "SplitSigmas", "inputs": {"sigmas": ["5", 0], "step": 3}}  # custom: the last 6 sigmas
    g["7"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": 5}}
    g["8"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "dpmpp_2m"}}
    g["9"] = {"class_type": "CFGGuider", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                    "cfg": 6.0}}
    g["10"] = {"class_type": "TruncatedCFGGuider", "inputs": {"model": ["1", 0], "positive": ["2", 0],
                                                              "negative": ["3", 0], "cfg": 6.0, **WINDOW_ALL}}
    g["11"] = {"class_type": "TruncatedCFGGuider", "inputs": {"model": ["1", 0], "positive": ["2", 0],
                                                              "negative": ["3", 0], "cfg": 6.0,
                                                              **{**WINDOW_ALL, "guidance_end": 0.5}}}
    for gid, out in (("9", "12"), ("10", "13"), ("11", "14")):
        g[out] = {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["7", 0], "guider": [gid, 0], "sampler": ["8", 0], "sigmas": ["6", 1], "latent_image": ["4", 0]}}
    with caplog.at_level("INFO", logger="shapefirst"):
        r = comfy.run(g, outputs=["12", "13", "14"])
    assert torch.equal(r.output_value("12")["samples"], r.output_value("13")["samples"])
    assert not torch.equal(r.output_value("12")["samples"], r.output_value("14")["samples"])
    # 6 custom sigmas-steps, window = first half: 3 guided, 3 conditional passes skipped = 25% of the work
    lines = [rec.getMessage() for rec in caplog.records if rec.getMessage().startswith("TruncatedCFG:")]
    assert any("6 steps, 6 model evaluations, 3 guided, 3 conditional passes skipped, 25.0%" in m for m in lines), lines


@pytest.mark.parametrize("change,message,marked", [
    # validation, each error on the inputs it concerns: ComfyUI's range checks, the sigma window's order
    ({"guidance_end": 1.5}, r"Value 1.5 bigger than max of 1.0", {"guidance_end"}),
    ({"guidance_start": -0.2}, r"Value -0.2 smaller than min of 0.0", {"guidance_start"}),
    ({"steps": 0}, r"Value 0 smaller than min of 1", {"steps"}),
    ({"window_units": "sigma", "sigma_low": 0.8, "sigma_high": 0.2},
     r"TruncatedCFGSampler: sigma_low \(0.8\) is above sigma_high \(0.2\); swap them", {"sigma_low", "sigma_high"}),
    # when the node runs (a check that reads several inputs would be reported on each of them)
    ({"guidance_start": 0.6, "guidance_end": 0.4}, r"TruncatedCFGSampler: guidance_start \(0.6\) is after "
                                                   r"guidance_end \(0.4\)", None),
    ({"window": "adaptive", "adaptive_threshold": 0.0}, r"TruncatedCFGSampler: adaptive_threshold must be > 0 in "
                                                        r"adaptive mode", None),
])
def test_bad_inputs_name_the_node_and_the_fix(comfy, sd15_ckpt, change, message, marked):
    g = graphs.base(sd15_ckpt)
    g["5"] = truncated(("1", 0), ("4", 0), steps=4)
    g["5"]["inputs"].update(change)
    g["6"] = {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}}
    g["7"] = {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}}
    with pytest.raises(GraphError, match=message) as err:
        comfy.run(g)
    if marked is not None:  # the inputs the front end marks: those the error is about, once each
        errors = err.value.details["node_errors"]["5"]["errors"]
        assert sorted(e["extra_info"]["input_name"] for e in errors) == sorted(marked), errors


def test_an_interrupted_run_leaves_nothing_behind(comfy, sd15_ckpt):
    import comfy.model_management as mm
    import comfy.patcher_extension as pe

    r = comfy.run(graphs.base(sd15_ckpt), outputs=["1", "2", "3", "4"])
    user_model = r.output_value("1", 0)
    model = user_model.clone()
    steps_seen = []

    def interrupt_at_step_3(executor, *args, **kwargs):
        steps_seen.append(1)
        if len(steps_seen) == 3:
            mm.interrupt_current_processing(True)
        return executor(*args, **kwargs)

    model.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "test.interrupt", interrupt_at_step_3)
    kwargs = dict(seed=3, steps=6, cfg=7.0, sampler_name="euler", scheduler="normal", positive=r.output_value("2"),
                  negative=r.output_value("3"), latent_image=r.output_value("4"), denoise=1.0)
    with pytest.raises(mm.InterruptProcessingException):
        _run_node("TruncatedCFGSampler", model=model, guidance_end=0.5, **kwargs)
    mm.interrupt_current_processing(False)
    assert not any(k.startswith("shapefirst") for w in user_model.wrappers.values() for k in w)
    # the next ordinary run is exactly a fresh one
    g = graphs.base(sd15_ckpt)
    g["5"] = graphs.ksampler(("1", 0), ("4", 0), seed=3, steps=6, cfg=7.0)
    after = comfy.run(g, outputs=["5"], fresh_cache=False).output_value("5")["samples"]
    fresh = comfy.run(g, outputs=["5"]).output_value("5")["samples"]
    assert torch.equal(after, fresh)
