"""Tier 2: AttentionMapCapture on what newer ComfyUI hosts add: q/k/v tensor containers, per-layer
preferred attention backends, an earlier override with a container function, and multi-GPU CFG
splitting. Each test skips on a host without the feature; the references are those of
test_attention_capture.py (each layer's own q/k, recorded by the test's own attn2 patch).
"""

from __future__ import annotations

import pytest
import torch

from test_attention_capture import _capture, _check_against_reference, _sample, sd15_parts  # noqa: F401

pytestmark = pytest.mark.comfy


def _needs_containers():
    import comfy.ldm.modules.attention as attention

    if not hasattr(attention, "AttentionTensorContainer"):
        pytest.skip("this ComfyUI passes q/k/v as plain tensors (no AttentionTensorContainer)")
    return attention


@pytest.fixture
def container_cross_attention(monkeypatch):
    """CrossAttention as newer ComfyUI writes it: q, k and v wrapped in single-owner containers."""
    attention = _needs_containers()
    taken = []

    class Spy(attention.AttentionTensorContainer):
        __slots__ = ()

        def take(self):
            taken.append(1)
            return super().take()

    def forward(self, x, context=None, value=None, mask=None, transformer_options={}):
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context if value is None else value)
        qkv = (Spy(q), Spy(k), Spy(v))
        if mask is None:
            out = attention.optimized_attention(*qkv, self.heads, attn_precision=self.attn_precision,
                                                transformer_options=transformer_options)
        else:
            out = attention.optimized_attention_masked(*qkv, self.heads, mask, attn_precision=self.attn_precision,
                                                       transformer_options=transformer_options)
        assert all(c.tensor is None for c in qkv)  # every container consumed exactly once
        return self.to_out(out)

    monkeypatch.setattr(attention.CrossAttention, "forward", forward)
    return taken


def test_containers_reach_each_layers_preferred_backend(sd15_parts, container_cross_attention):
    import types

    import comfy.ldm.modules.attention as attention

    model, clip, _ = sd15_parts
    plain = _sample(model, clip, steps=2)  # the host without preferences: optimized attention for every layer
    used = []

    def preference(name):
        def backend(*args, **kwargs):  # a layer's preferred backend, as the host calls it (inside the wrapper)
            used.append((name, type(args[0]).__name__))
            return attention.optimized_attention(*args, **kwargs)
        return types.SimpleNamespace(function=backend)

    dm = model.model.diffusion_model
    blocks = [m for m in dm.modules() if isinstance(m, attention.BasicTransformerBlock)]
    names = {}
    try:
        for i, tb in enumerate(blocks):
            for which in ("attn1", "attn2"):
                getattr(tb, which).comfy_attention = preference(f"{i}.{which}")
                names[f"{i}.{which}"] = 0
        run, captured = _check_against_reference(model, clip, steps=2)
    finally:
        for tb in blocks:
            for which in ("attn1", "attn2"):
                getattr(tb, which).__dict__.pop("comfy_attention", None)
    assert torch.equal(captured, plain)
    assert {kind for _, kind in used} == {"Spy"}  # containers were handed on, not unwrapped by the host
    for name, _ in used:
        names[name] += 1
    assert set(names.values()) == {2}, names  # each layer's own preference, once per step (cond+uncond batched)
    assert run.complete and run.steps(0) == [0, 1]


@pytest.mark.parametrize("with_container_function", [False, True])
def test_an_earlier_override_is_chained(sd15_parts, request, with_container_function):
    import comfy.ldm.modules.attention as attention

    model, clip, _ = sd15_parts
    if with_container_function:
        request.getfixturevalue("container_cross_attention")
    calls = []

    def earlier(func, *args, **kwargs):
        calls.append("plain")
        return func(*args, **kwargs)

    if with_container_function:
        def containers(*args, **kwargs):
            calls.append(type(args[0]).__name__)
            return attention.optimized_attention(*args, **kwargs)
        earlier.container_function = containers
    first = model.clone()
    first.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = earlier
    plain = _sample(first, clip, steps=2)
    calls.clear()
    run, captured = _check_against_reference(first, clip, steps=2)
    assert torch.equal(captured, plain)
    assert len(calls) == 2 * 4 * 2  # attn1 and attn2 of four layers, two steps (cond and uncond batched)
    assert set(calls) == ({"Spy"} if with_container_function else {"plain"})
    assert run.steps(0) == run.steps(1) == [0, 1]


def test_multi_gpu_cfg_splitting_records_from_worker_threads(sd15_parts):
    import threading

    from multigpu import two_cpu_devices

    model, clip, _ = sd15_parts
    threads = set()

    def seen(n, context, value, extra):
        threads.add(threading.get_ident())
        return n, context, value

    with two_cpu_devices() as split:
        expected = _sample(split(model), clip, steps=2)
        captured, rec = _capture(model, keep_layers=True)
        captured = split(captured)
        captured.set_model_attn2_patch(seen)
        got = _sample(captured, clip, steps=2)
    assert len(threads) == 2 and threading.get_ident() not in threads  # really two worker threads
    assert torch.equal(got, expected)
    split_run = rec.run
    run, _ = _check_against_reference(model, clip, steps=2)  # the same model evaluated as one batch
    assert split_run.layer_names == run.layer_names and split_run.steps(0) == split_run.steps(1) == [0, 1]
    for branch in (0, 1):
        for step in (0, 1):
            a, b = split_run.maps[branch][step].double(), run.maps[branch][step].double()
            assert torch.allclose(a, b, atol=1e-4), (branch, step, (a - b).abs().max())
