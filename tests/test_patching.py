"""Tier 2: the patch toolkit (nodes/_patching.py) on real ModelPatchers: a patch applied twice acts once,
also when another pack's patch wraps the first copy; every feature reads the network the model runs."""

from __future__ import annotations

import importlib

import pytest
import torch

from tiny_pixart import tiny_pixart

pytestmark = pytest.mark.comfy

LAYER = "diffusion_model.blocks.0.cross_attn.forward"


def _pack(name: str):
    import nodes

    base = nodes.NODE_CLASS_MAPPINGS["TruncatedCFGSampler"].__module__.rsplit(".", 1)[0]
    return importlib.import_module(f"{base}.{name}")


def _foreign_object_patch(model, calls):
    """Another pack's patch of the same layer: it wraps whatever is there and calls it."""
    inner = model.object_patches.get(LAYER)
    module = model.get_model_object(LAYER.rsplit(".", 1)[0])

    def foreign(*args, **kwargs):
        calls.append("foreign")
        return inner(*args, **kwargs) if inner is not None else type(module).forward(module, *args, **kwargs)

    model.add_object_patch(LAYER, foreign)


def test_an_object_patch_applied_again_under_another_packs_acts_once(comfy):
    patching = _pack("_patching")
    calls = []

    def make(previous):
        module = pixart.get_model_object(LAYER.rsplit(".", 1)[0])

        def ours(*args, **kwargs):
            calls.append("ours")
            return previous(*args, **kwargs) if previous is not None else type(module).forward(module, *args, **kwargs)
        return ours

    pixart = tiny_pixart()
    m = pixart.clone()
    patching.chain_object_patch(m, LAYER, make, "shapefirst.test")
    _foreign_object_patch(m, calls)
    patching.chain_object_patch(m, LAYER, make, "shapefirst.test")  # ours again, outside the foreign patch
    x, cond = torch.randn(1, 16, 64), torch.randn(1, 5, 64)
    out = m.get_model_object(LAYER)(x, cond)
    assert calls == ["ours", "foreign"]  # the copy inside passes through: it does not act a second time
    module = pixart.get_model_object(LAYER.rsplit(".", 1)[0])
    assert torch.equal(out, type(module).forward(module, x, cond))
    calls.clear()
    patching.chain_object_patch(m, LAYER, make, "shapefirst.test")  # outermost: unwrapped and replaced
    m.get_model_object(LAYER)(x, cond)
    assert calls == ["ours", "foreign"] and m.object_patches[LAYER].shapefirst_previous.__name__ == "foreign"


def test_an_override_applied_again_under_another_packs_observes_once(comfy):
    patching = _pack("_patching")
    override = _pack("attention_override")
    seen, passed = [], []

    def make(previous, key):
        return override.make_observing_override(lambda args, kwargs: seen.append(1), previous, None, key)

    m = tiny_pixart().clone()
    patching.chain_override(m, make, "shapefirst.test")
    to = m.model_options["transformer_options"]
    inner = to[patching.OVERRIDE_KEY]

    def foreign(func, *args, **kwargs):
        passed.append(1)
        return inner(func, *args, **kwargs)

    to[patching.OVERRIDE_KEY] = foreign
    patching.chain_override(m, make, "shapefirst.test")
    q = k = v = torch.randn(1, 4, 8)
    out = to[patching.OVERRIDE_KEY](lambda *a, **kw: a[0] * 2, q, k, v, 2)
    assert torch.equal(out, q * 2) and passed == [1] and seen == [1]


def test_every_feature_reads_the_network_the_model_runs(comfy):
    """Another node's object patch of ``diffusion_model`` is the network sampled: the K/V patch checks and
    patches that one (here a joint-attention Flux in place of PixArt's cross-attention, refused)."""
    from test_attention_models import _tiny_flux

    pixart = tiny_pixart()
    replaced = pixart.clone()
    replaced.add_object_patch("diffusion_model", _tiny_flux().model.diffusion_model)
    network = _pack("model_families").describe(replaced)
    assert network.family.name == "Flux"
    with pytest.raises(ValueError, match=r"EOSSwapKVPatch: EOS Swap K/V Patch does not apply to this model \(Flux\)"):
        _pack("kv_swap").patch_model(replaced)
    assert _pack("model_families").describe(pixart).family.name == "PixArt"


# -- nothing of a run survives it -------------------------------------------------------------------------------

def _patched_graph(ckpt: str, patch: str) -> dict:
    """Checkpoint -> core ModelSamplingDiscrete (a clone that lives only as long as the executor's cache of this
    prompt, as a LoRA or any model node before ours) -> the pack's ``patch`` -> core sampling."""
    import graphs
    from attention_checks import CAPTURE
    from test_truncated_cfg_nodes import WINDOW_ALL, truncated

    window = {**WINDOW_ALL, "guidance_end": 0.5}
    g = graphs.base(ckpt)
    g["20"] = {"class_type": "ModelSamplingDiscrete",
               "inputs": {"model": ["1", 0], "sampling": "eps", "zsnr": False}}
    model = ["20", 0]
    inputs = {"TruncatedCFGModel": {**window, "text_cache": "tail_output"}, "EOSSwapKVPatch": {},
              "FrequencyTrace": {}, "AttentionMapCapture": CAPTURE}
    if patch in inputs:
        g["21"] = {"class_type": patch, "inputs": {"model": model, **inputs[patch]}}
        g["5"] = graphs.ksampler(("21", 0), ("4", 0), steps=4)
    elif patch == "TruncatedCFGSampler":
        g["5"] = truncated(model, ("4", 0), window=window, steps=4)
    else:  # TruncatedCFGGuider under core SamplerCustomAdvanced
        g["21"] = {"class_type": patch, "inputs": {"model": model, "positive": ["2", 0], "negative": ["3", 0],
                                                   "cfg": 7.5, **window}}
        g["22"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": 1}}
        g["23"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
        g["24"] = {"class_type": "BasicScheduler", "inputs": {"model": model, "scheduler": "normal", "steps": 4,
                                                             "denoise": 1.0}}
        g["5"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["22", 0], "guider": ["21", 0], "sampler": ["23", 0], "sigmas": ["24", 0],
            "latent_image": ["4", 0]}}
    g["6"] = {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}}
    g["7"] = {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}}
    return g


@pytest.mark.parametrize("patch", ["TruncatedCFGModel", "TruncatedCFGSampler", "TruncatedCFGGuider",
                                   "EOSSwapKVPatch", "AttentionMapCapture", "FrequencyTrace"])
def test_a_sampled_patch_leaves_comfyui_no_dead_model(comfy, sd15_ckpt, patch):
    """When the next prompt no longer holds our clone and the clone it was made from, both must be freed as core's
    own clones are, by reference counting. A reference cycle through the run's state (the guider holds the model,
    the model holds the patch) frees them only in a full collection, both at once, after ComfyUI could switch its
    entry for the loaded model to the parent: it then keeps an entry whose model is gone ("WARNING, memory leak
    with model BaseModel") and runs a full garbage collection before every later model load of the session."""
    import gc

    import comfy.model_management as mm

    g = _patched_graph(sd15_ckpt, patch)
    comfy.run(g)
    # the next prompt shares the cached checkpoint but samples nothing with it: the first prompt's clones are dropped
    decode_only = {"1": g["1"], "4": g["4"], "6": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0],
                                                                                       "vae": ["1", 2]}},
                   "7": g["7"]}
    comfy.run(decode_only, fresh_cache=False)
    gc.collect()
    dead = [type(lm.real_model()).__name__ for lm in mm.current_loaded_models if lm.is_dead()]
    assert not dead, f"{patch}: ComfyUI holds models whose patcher died in a reference cycle: {dead}"
