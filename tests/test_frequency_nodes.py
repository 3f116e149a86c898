"""Tier 2: FrequencySplitPreview, FrequencyTrace and FrequencyCurves inside a real ComfyUI."""

from __future__ import annotations

import json

import pytest
import torch

import graphs
from devtools.harness import GraphError
from shapefirst import frequency

pytestmark = pytest.mark.comfy


def _split_graph(ckpt, **split_inputs):
    g = graphs.base(ckpt, batch=2)
    g["5"] = graphs.ksampler(("1", 0), ("4", 0), steps=3)
    g["6"] = {"class_type": "FrequencySplitPreview",
              "inputs": {"samples": ["5", 0], "low_fraction": 0.2, "preview": "latent channels", **split_inputs}}
    return g


def test_split_of_a_sampled_latent_is_exact_and_keeps_the_input(comfy, sd15_ckpt):
    r = comfy.run(_split_graph(sd15_ckpt))
    latent = r.output_value("5")
    before = latent["samples"].clone()
    low, high, preview = (r.output_value("6", i) for i in range(3))
    assert isinstance(low, dict) and isinstance(high, dict)
    assert low is not latent and low["samples"].shape == (2, 4, 8, 8)
    # fp32 rounding of one subtraction, relative to the values (random weights give latents ~100)
    scale = max(1.0, latent["samples"].abs().max().item())
    assert (low["samples"] + high["samples"] - latent["samples"]).abs().max() <= 1e-6 * scale * 2
    assert torch.equal(latent["samples"], before)  # the sampler's output is not modified
    assert high["samples"].abs().mean() > 0 and low["samples"].abs().mean() > 0
    # preview: batch of strips input | low | high, 3 channels, in [0, 1]
    assert preview.shape[0] == 2 and preview.shape[-1] == 3
    assert preview.shape[2] > 3 * 64 and 0.0 <= preview.min() and preview.max() <= 1.0
    assert len(r.ui["6"]["images"]) == 2  # shown in the node


def test_split_of_an_image_returns_images_and_decoded_preview(comfy, sd15_ckpt):
    g = graphs.base(sd15_ckpt)
    g["5"] = graphs.ksampler(("1", 0), ("4", 0), steps=2)
    g["6"] = {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}}
    g["7"] = {"class_type": "FrequencySplitPreview",
              "inputs": {"samples": ["6", 0], "low_fraction": 0.35, "preview": "latent channels"}}
    g["8"] = {"class_type": "FrequencySplitPreview",
              "inputs": {"samples": ["5", 0], "low_fraction": 0.2, "preview": "vae decode", "vae": ["1", 2]}}
    g["9"] = {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "sf_low"}}
    r = comfy.run(g)
    image = r.output_value("6")
    low, high = r.output_value("7", 0), r.output_value("7", 1)
    assert low.shape == image.shape == (1, 64, 64, 3)
    assert (low + high - image).abs().max() <= 1e-5
    ref_low, _ = frequency.split(image.movedim(-1, 1), 0.35)
    assert torch.allclose(low, ref_low.movedim(1, -1), atol=1e-6)
    decoded_preview = r.output_value("8", 2)
    assert decoded_preview.shape[1] == 64 + 16  # decoded 64 px panels plus the label row
    assert "9" in r.ui  # the low IMAGE can be saved by core SaveImage


@pytest.mark.parametrize("node,inputs,shape", [
    ("EmptySD3LatentImage", {"width": 48, "height": 40, "batch_size": 2}, (2, 16, 5, 6)),
    ("EmptyHunyuanLatentVideo", {"width": 32, "height": 32, "length": 9, "batch_size": 1}, (1, 16, 3, 4, 4)),
])
def test_split_handles_16_channel_and_video_latents(comfy, node, inputs, shape):
    g = {"1": {"class_type": node, "inputs": inputs},
         "2": {"class_type": "FrequencySplitPreview",
               "inputs": {"samples": ["1", 0], "low_fraction": 0.2, "preview": "latent channels"}}}
    r = comfy.run(g)
    low = r.output_value("2", 0)
    assert tuple(low["samples"].shape) == shape


@pytest.mark.parametrize("bad", [0.0, 1.0])
def test_low_fraction_outside_the_open_interval_is_refused_before_running(comfy, sd15_ckpt, bad):
    g = _split_graph(sd15_ckpt)
    g["6"]["inputs"]["low_fraction"] = bad
    with pytest.raises(GraphError, match=r"FrequencySplitPreview: low_fraction must be strictly between 0 and 1"):
        comfy.run(g)


def test_decode_preview_without_vae_names_the_node_and_the_fix(comfy, sd15_ckpt):
    g = _split_graph(sd15_ckpt, preview="vae decode")
    with pytest.raises(GraphError, match=r"FrequencySplitPreview: preview = 'vae decode' needs a VAE; connect"):
        comfy.run(g)


def test_wrong_rank_image_is_refused_by_the_loaded_node(comfy):
    import nodes

    node_cls = nodes.NODE_CLASS_MAPPINGS["FrequencySplitPreview"]
    with pytest.raises(ValueError, match=r"FrequencySplitPreview: an IMAGE must have shape"):
        node_cls.execute(torch.zeros(8, 8, 3), 0.2)
    with pytest.raises(ValueError, match=r"FrequencySplitPreview: a LATENT must hold samples"):
        node_cls.execute({"samples": torch.zeros(4, 8, 8)}, 0.2)


# -- FrequencyTrace / FrequencyCurves -------------------------------------------------------

def _traced_graph(ckpt, sampler="euler", scheduler="normal", steps=6, denoise=1.0, batch=1):
    g = graphs.base(ckpt, batch=batch)
    g["5"] = {"class_type": "FrequencyTrace", "inputs": {"model": ["1", 0]}}
    g["6"] = graphs.ksampler(("1", 0), ("4", 0), steps=steps, sampler=sampler, scheduler=scheduler, denoise=denoise)
    g["7"] = graphs.ksampler(("5", 0), ("4", 0), steps=steps, sampler=sampler, scheduler=scheduler, denoise=denoise)
    g["8"] = {"class_type": "FrequencyCurves", "inputs": {
        "trace": ["5", 1], "samples": ["7", 0], "low_fraction": 0.2, "filename_prefix": "tests/curves"}}
    return g


@pytest.mark.parametrize("sampler,scheduler,denoise,batch", [
    ("euler", "normal", 1.0, 1),
    ("euler_ancestral", "karras", 1.0, 2),
    ("heun", "exponential", 0.6, 1),
    ("dpmpp_2m", "sgm_uniform", 1.0, 1),
    ("dpmpp_2m_sde", "simple", 0.6, 2),
    ("dpmpp_sde", "normal", 1.0, 1),
    ("ddim", "ddim_uniform", 1.0, 1),
    ("uni_pc", "karras", 1.0, 1),
    ("lcm", "simple", 1.0, 1),
    ("dpm_2", "beta", 0.6, 1),
])
def test_trace_does_not_change_the_sampled_result(comfy, sd15_ckpt, sampler, scheduler, denoise, batch):
    steps = 5
    r = comfy.run(_traced_graph(sd15_ckpt, sampler, scheduler, steps=steps, denoise=denoise, batch=batch),
                  outputs=["6"])
    plain, traced = r.output_value("6")["samples"], r.output_value("7")["samples"]
    assert torch.equal(plain, traced), f"max diff {(plain - traced).abs().max()}"
    payload = r.ui["8"]["shapefirst_curves"][0]
    assert payload["steps"] == steps  # steps of the schedule actually sampled, also for denoise < 1
    assert all(len(v) == steps for v in payload["curves"].values())
    assert all(isinstance(x, float) and x == x for v in payload["curves"].values() for x in v)


def test_curves_match_the_schedule_and_the_final_latent(comfy, sd15_ckpt):
    import comfy.samplers as samplers

    r = comfy.run(_traced_graph(sd15_ckpt, "euler", "karras", steps=8, denoise=0.7))
    payload = r.ui["8"]["shapefirst_curves"][0]
    model = r.output_value("1", 0)
    # denoise 0.7 of 8 steps: ComfyUI computes int(8/0.7) steps and samples the last 8 sigmas
    full = samplers.calculate_sigmas(model.get_model_object("model_sampling"), "karras", int(8 / 0.7))
    want = full[-9:-1].tolist()
    assert payload["sigmas"] == pytest.approx(want, rel=1e-5)
    # euler's last step lands exactly on its last x0 prediction: that curve's last value
    # is the band RMS of the sampled latent, in the model's latent space
    final = model.model.process_latent_in(r.output_value("7")["samples"])
    low, high = frequency.split(final, 0.2)
    assert payload["curves"]["denoise_x0pred_low"][-1] == pytest.approx(low.pow(2).mean().sqrt().item(), rel=1e-4)
    assert payload["curves"]["denoise_x0pred_high"][-1] == pytest.approx(high.pow(2).mean().sqrt().item(), rel=1e-4)
    # forward noising of the final latent: the first step is the noisiest
    assert payload["curves"]["ratio_forward_high"][0] > payload["curves"]["ratio_forward_high"][-1]


def test_curves_are_saved_as_json_and_csv_under_the_output_folder(comfy, sd15_ckpt):
    import folder_paths

    g = _traced_graph(sd15_ckpt, steps=4)
    g["8"]["inputs"]["filename_prefix"] = "../../escape/..\\evil name<script>"
    r = comfy.run(g)
    payload = r.ui["8"]["shapefirst_curves"][0]
    out_root = folder_paths.get_output_directory()
    files = payload["files"]
    assert sorted(f["filename"].rsplit(".", 1)[1] for f in files) == ["csv", "json"]
    for f in files:
        path = (f"{out_root}/{f['subfolder']}/{f['filename']}")
        import os
        real = os.path.realpath(path)
        assert real.startswith(os.path.realpath(out_root) + os.sep)
        assert "<" not in f["filename"] and ".." not in f["subfolder"]
    data = json.loads(open(f"{out_root}/{files[0]['subfolder']}/{[f for f in files if f['filename'].endswith('json')][0]['filename']}").read())
    assert data["curves"] == payload["curves"]
    chart = r.output_value("8", 0)
    assert chart.ndim == 4 and chart.shape[-1] == 3
    assert json.loads(r.output_value("8", 1))["steps"] == 4


def test_the_users_model_is_not_modified(comfy, sd15_ckpt):
    import comfy.patcher_extension as pe

    r = comfy.run(_traced_graph(sd15_ckpt, steps=2))
    original = r.output_value("1", 0)
    traced = r.output_value("5", 0)
    assert traced is not original
    assert not original.get_all_wrappers(pe.WrappersMP.SAMPLER_SAMPLE)
    assert len(traced.get_all_wrappers(pe.WrappersMP.SAMPLER_SAMPLE)) == 1


def test_curves_refuse_a_latent_from_another_sampler(comfy, sd15_ckpt):
    g = _traced_graph(sd15_ckpt, steps=2)
    comfy.run(g, fresh_cache=False)  # the trace holds this run
    g["6"]["inputs"]["seed"] = 99  # an untraced sampler with another result...
    g["8"]["inputs"]["samples"] = ["6", 0]  # ...wired into the curves by mistake
    with pytest.raises(GraphError, match=r"FrequencyCurves: 'samples' is not the result of the run"):
        comfy.run(g, fresh_cache=False)


def test_works_with_sampler_custom_advanced(comfy, sd15_ckpt):
    g = graphs.base(sd15_ckpt)
    g["5"] = {"class_type": "FrequencyTrace", "inputs": {"model": ["1", 0]}}
    g["6"] = {"class_type": "CFGGuider", "inputs": {"model": ["5", 0], "positive": ["2", 0], "negative": ["3", 0], "cfg": 5.0}}
    g["7"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "dpmpp_2m"}}
    g["8"] = {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "karras", "steps": 7, "denoise": 1.0}}
    g["9"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": 3}}
    g["10"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": ["9", 0], "guider": ["6", 0], "sampler": ["7", 0], "sigmas": ["8", 0], "latent_image": ["4", 0]}}
    g["11"] = {"class_type": "FrequencyCurves", "inputs": {
        "trace": ["5", 1], "samples": ["10", 0], "low_fraction": 0.2, "filename_prefix": "tests/custom"}}
    r = comfy.run(g)
    assert r.ui["11"]["shapefirst_curves"][0]["steps"] == 7


def test_a_requeued_run_reports_that_run(comfy, sd15_ckpt):
    g = _traced_graph(sd15_ckpt, steps=3)
    first = comfy.run(g, fresh_cache=False).ui["8"]["shapefirst_curves"][0]
    g["7"]["inputs"]["steps"] = 5
    g["7"]["inputs"]["seed"] = 8
    second = comfy.run(g, fresh_cache=False).ui["8"]["shapefirst_curves"][0]
    assert first["steps"] == 3 and second["steps"] == 5


def test_an_interrupted_run_is_no_run_and_leaves_nothing_behind(comfy, sd15_ckpt):
    import comfy.model_management as mm
    import comfy.patcher_extension as pe
    import nodes

    r = comfy.run(graphs.base(sd15_ckpt), outputs=["1", "2", "3", "4"])
    model, calls = r.output_value("1", 0).clone(), []

    def interrupt_at_step_2(executor, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            mm.interrupt_current_processing(True)
        return executor(*args, **kwargs)

    model.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "test.interrupt", interrupt_at_step_2)
    traced, recorder = nodes.NODE_CLASS_MAPPINGS["FrequencyTrace"].execute(model).args
    args = (1, 4, 7.0, "euler", "normal", r.output_value("2"), r.output_value("3"), r.output_value("4"))
    try:
        with pytest.raises(mm.InterruptProcessingException):
            nodes.common_ksampler(traced, *args)
    finally:
        mm.interrupt_current_processing(False)
    assert recorder.runs_started == 1 and not recorder.active and not recorder.last_run_complete
    assert recorder.run is None and recorder._model is None  # no half-recorded run, no model reference kept
    with pytest.raises(Exception, match="FrequencyCurves: no finished sampling run was recorded"):
        nodes.NODE_CLASS_MAPPINGS["FrequencyCurves"].execute(recorder, {"samples": torch.zeros(1, 4, 8, 8)})
