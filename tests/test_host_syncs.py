"""Tier 2: no ShapeFirst patch reads a tensor back to the host inside a model evaluation.

On a GPU every read of a device tensor by the host (``.item()``, ``float()``/``int()``/``bool()`` of a
tensor, ``.tolist()``, ``.numpy()``, ``torch.equal``, a blocking copy to the CPU) waits until the device
has finished all the work queued before it: one stall per model call. Here each such call made from the
pack's own files is counted while core's sampler runs an evaluation (inside ``predict_noise``, so every
CALC_COND_BATCH, APPLY_MODEL, DIFFUSION_MODEL wrapper, attention patch and layer patch of the pack runs
in the window), through real sampling with each patch. Reads once per run (the schedule at the start,
the record at the end) lie outside the window. The counts are the same on any device: what is counted
is the call, not the stall.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from eos_reference import BIRD, CHAIR, OPTS

pytestmark = pytest.mark.comfy

REPO = Path(__file__).resolve().parent.parent
PACK_DIRS = tuple(str(REPO / d) + os.sep for d in ("nodes", "shapefirst"))
READS = ("item", "tolist", "numpy", "__float__", "__int__", "__bool__", "__index__")
STEPS, CFG = 6, 6.0


class HostReads:
    """Counts host reads of tensors made by the pack's code while ``active`` (one model evaluation)."""

    def __init__(self, monkeypatch):
        self.active = False
        self.reads: list[str] = []
        self._files: dict = {}
        for name in READS:
            monkeypatch.setattr(torch.Tensor, name, self._counting(name, getattr(torch.Tensor, name)))
        monkeypatch.setattr(torch.Tensor, "cpu", self._counting("cpu", torch.Tensor.cpu))
        monkeypatch.setattr(torch.Tensor, "to", self._counting_to(torch.Tensor.to))
        monkeypatch.setattr(torch, "equal", self._counting("torch.equal", torch.equal))

    def _ours(self, depth: int):
        frame = sys._getframe(depth)
        name = frame.f_code.co_filename
        path = self._files.get(name)
        if path is None:
            path = self._files[name] = os.path.realpath(name)
        return f"{os.path.basename(path)}:{frame.f_lineno}" if path.startswith(PACK_DIRS) else None

    def _hit(self, what: str):
        where = self._ours(3) if self.active else None
        if where:
            self.reads.append(f"{what} at {where}")

    def _counting(self, what, original):
        def counted(*args, **kwargs):
            self._hit(what)
            return original(*args, **kwargs)
        return counted

    def _counting_to(self, original):
        def to(t, *args, **kwargs):
            target = kwargs.get("device", args[0] if args else None)
            if isinstance(target, (str, torch.device)) and torch.device(target).type == "cpu" \
                    and not kwargs.get("non_blocking", False):
                self._hit("blocking copy to the CPU (.to)")
            return original(t, *args, **kwargs)
        return to

    def watch(self, model):
        """A clone of ``model`` whose evaluations are counted (the window: core's predict_noise)."""
        import comfy.patcher_extension as pe

        def predict_noise(executor, *args, **kwargs):
            self.active = True
            try:
                return executor(*args, **kwargs)
            finally:
                self.active = False

        m = model.clone()
        m.add_wrapper_with_key(pe.WrappersMP.PREDICT_NOISE, "test.host_reads", predict_noise)
        return m


@pytest.fixture(scope="module")
def sd15(comfy, sd15_ckpt):
    import nodes

    model, clip = nodes.CheckpointLoaderSimple().load_checkpoint(sd15_ckpt)[:2]
    return model, clip


def _encode(clip, text):
    import nodes

    return nodes.CLIPTextEncode().encode(clip, text)[0]


def _ksampler(model, positive, negative, sampler="euler", steps=STEPS):
    import nodes

    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    return nodes.KSampler().sample(model, 3, steps, CFG, sampler, "normal", positive, negative, latent)[0]


def _node(name):
    import nodes

    return nodes.NODE_CLASS_MAPPINGS[name]


WINDOW = {"guidance_start": 0.0, "guidance_end": 0.5, "tail": "uncond", "window": "fixed", "adaptive_threshold": 0.1,
          "window_units": "steps", "sigma_low": 2.4, "sigma_high": 1000.0}


@pytest.mark.parametrize("text_cache", ["off", "keys_values", "tail_output"])
def test_truncated_guidance_reads_nothing_back_per_evaluation(sd15, monkeypatch, text_cache):
    model, clip = sd15
    patched = _node("TruncatedCFGModel").execute(model, text_cache=text_cache, **WINDOW).args[0]
    counter = HostReads(monkeypatch)
    _ksampler(counter.watch(patched), _encode(clip, BIRD), _encode(clip, ""))
    assert counter.reads == [], sorted(set(counter.reads))


def test_truncated_guidance_reads_the_sigma_once_per_evaluation_for_samplers_between_steps(sd15, monkeypatch):
    """heun evaluates at sigmas of the next step too: the one read left, the evaluation's sigma, which
    tells its step (core's heun itself reads a sigma every step)."""
    model, clip = sd15
    patched = _node("TruncatedCFGModel").execute(model, text_cache="keys_values", **WINDOW).args[0]
    counter = HostReads(monkeypatch)
    evaluations = []

    def count(executor, *args, **kwargs):
        evaluations.append(1)
        return executor(*args, **kwargs)

    import comfy.patcher_extension as pe

    watched = counter.watch(patched)
    watched.add_wrapper_with_key(pe.WrappersMP.PREDICT_NOISE, "test.evaluations", count)
    _ksampler(watched, _encode(clip, BIRD), _encode(clip, ""), sampler="heun", steps=3)
    assert len(evaluations) == 5 and len(counter.reads) == len(evaluations), counter.reads
    assert all(r.startswith("__float__ at truncated_cfg_patch.py") for r in counter.reads), counter.reads


def test_attention_capture_and_kv_patch_read_nothing_back_per_evaluation(sd15, monkeypatch):
    model, clip = sd15
    kv = _node("EOSSwapKVPatch").execute(model).args[0]
    captured = _node("AttentionMapCapture").execute(kv, record_uncond=True, step_stride=1, max_tokens=77,
                                                    max_grid=64, keep_layers=True, memory_limit_mb=1024.0).args[0]
    swap = _node("EOSSwapConditioning").execute(clip, BIRD, CHAIR, **dict(OPTS, apply_to="keys only")).args[0]
    counter = HostReads(monkeypatch)
    _ksampler(counter.watch(captured), swap, _encode(clip, ""))
    assert counter.reads == [], sorted(set(counter.reads))


def test_pixart_patches_read_nothing_back_per_evaluation(comfy, monkeypatch):
    from tiny_pixart import tiny_pixart

    import comfy.sample

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1, 12, 32, generator=g), torch.randn(1, 12, 32, generator=g)
    positive = [[a, {_kv_key(): {"keys": a, "values": b, "mode": "keys only"}}]]
    negative = [[torch.randn(1, 5, 32, generator=g), {}]]
    model = tiny_pixart()
    kv = _node("EOSSwapKVPatch").execute(model).args[0]
    captured = _node("AttentionMapCapture").execute(kv, record_uncond=True, step_stride=1, max_tokens=77,
                                                    max_grid=64, keep_layers=False, memory_limit_mb=1024.0).args[0]
    patched = _node("TruncatedCFGModel").execute(captured, text_cache="tail_output", **WINDOW).args[0]
    counter = HostReads(monkeypatch)
    latent = torch.zeros(1, 4, 48, 48)  # PixArt's position embedding needs 48 px or more
    comfy.sample.sample(counter.watch(patched), torch.randn(latent.shape, generator=g), STEPS, CFG, "euler",
                        "normal", positive, negative, latent, seed=1, disable_pbar=True)
    assert counter.reads == [], sorted(set(counter.reads))


def _kv_key():
    import importlib

    base = _node("EOSSwapKVPatch").__module__.rsplit(".", 1)[0]
    return importlib.import_module(f"{base}.eos_swap").KV_KEY
