"""The checks every added joint family goes through (tests/test_family_flux2.py, test_family_chroma.py,
test_family_hv15.py), on graphs of tiny_files.graph (1 model, 2 / 3 prompts, 4 latent) run by the real
executor, samplers and the pack's nodes.

* truncation exact: the window over all steps is core KSampler bit for bit (the sampler node and the model
  patch under core KSampler), and a truncated window equals eq. 9 written step by step with core's own
  functions (tests/eq9_reference.py), which differs from plain CFG;
* the rows: the diffusion model runs exactly the expected batch rows, and the node's report counts them;
* the refusals of a joint family: text cache (both modes) and the K/V patch, with the family's reason and
  the fix, naming the node.
"""

from __future__ import annotations

import pytest
import torch

from eq9_reference import Eq9Reference
from test_families import WINDOW_ALL, _count_rows, _samples, ksampler, truncated


def window_over_all_steps_is_core(comfy, g: dict, steps: int, cfg: float):
    g = dict(g)
    g["5"] = ksampler(steps=steps, cfg=cfg)
    g["6"] = truncated(steps=steps, cfg=cfg)
    g["7"] = ksampler(steps=steps, cfg=1.0)
    g["10"] = {"class_type": "TruncatedCFGModel", "inputs": {"model": ["1", 0], **WINDOW_ALL}}
    g["11"] = ksampler(model=("10", 0), steps=steps, cfg=cfg)
    r = comfy.run(g, outputs=["5", "6", "7", "11"])
    out = _samples(r, "5")
    assert torch.isfinite(out).all()
    assert torch.equal(out, _samples(r, "6"))
    assert torch.equal(out, _samples(r, "11"))
    assert (out - _samples(r, "7")).abs().max() > 1e-4  # guidance acts: cfg is not 1


def truncated_window_is_eq9(comfy, g: dict, steps: int, cfg: float, end: float = 0.5, seed: int = 11):
    import comfy.sample as comfy_sample
    import comfy.samplers as comfy_samplers

    g = dict(g)
    g["5"] = truncated(steps=steps, seed=seed, cfg=cfg, window={**WINDOW_ALL, "guidance_end": end})
    r = comfy.run(g, outputs=["1", "2", "3", "4", "5"])
    model = r.output_value("1", 0)
    latent = comfy_sample.fix_empty_latent_channels(model, _samples(r, "4"))
    sigmas = comfy_samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", steps)

    def reference(k):
        ref = Eq9Reference(comfy_samplers, model, r.output_value("2"), r.output_value("3"), cfg, k=k, tail="uncond",
                           schedule=sigmas.tolist())
        return ref.guider.sample(comfy_sample.prepare_noise(latent, seed), latent,
                                 comfy_samplers.sampler_object("euler"), sigmas, seed=seed)

    want, got = reference(int(steps * end)), _samples(r, "5")
    assert torch.allclose(got, want.to(got.dtype), rtol=0, atol=1e-5 * want.abs().max().item()), \
        (got - want).abs().max()
    assert (reference(steps) - want).abs().max() > 1e-4  # the reference's tail is not plain CFG


def runs_the_expected_rows(comfy, g: dict, steps: int, cfg: float, expected: list, end: float = 0.5):
    """The truncated sampler's model calls (batch rows per call) and its report."""
    import nodes

    r = comfy.run(g, outputs=["1", "2", "3", "4"])
    model, calls = _count_rows(r.output_value("1", 0))
    out = nodes.NODE_CLASS_MAPPINGS["TruncatedCFGSampler"].execute(
        model=model, seed=1, steps=steps, cfg=cfg, sampler_name="euler", scheduler="simple",
        positive=r.output_value("2"), negative=r.output_value("3"), latent_image=r.output_value("4"), denoise=1.0,
        guidance_start=0.0, guidance_end=end)
    assert calls == expected
    guided = int(round(steps * end))
    report = out.ui["shapefirst_guidance"][0]
    assert report["rows_computed"] == sum(calls) and report["skipped_passes"] == steps - guided
    return r


def joint_refusals(model, label: str):
    """Text cache and K/V patch refused on a joint-attention model, each with the reason and the fix."""
    import nodes

    node = nodes.NODE_CLASS_MAPPINGS["TruncatedCFGModel"]
    with pytest.raises(ValueError, match=rf"^TruncatedCFGModel: text_cache 'tail_output' does not apply to this model "
                                         rf"\({label}\): joint attention: text and image tokens share one softmax.*"
                                         rf"Set text_cache to 'off'\.$"):
        node.execute(model, **WINDOW_ALL, text_cache="tail_output")
    with pytest.raises(ValueError, match=rf"^TruncatedCFGModel: text_cache 'keys_values' does not apply to this model "
                                         rf"\({label}\): keys_values applies to UNet cross-attention.*"):
        node.execute(model, **WINDOW_ALL, text_cache="keys_values")
    with pytest.raises(ValueError, match=rf"^EOSSwapKVPatch: EOS Swap K/V Patch does not apply to this model "
                                         rf"\({label}\): joint attention: the text tokens are projected.*"
                                         rf"use EOS Swap Conditioning"):
        nodes.NODE_CLASS_MAPPINGS["EOSSwapKVPatch"].execute(model)
