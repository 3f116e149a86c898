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
