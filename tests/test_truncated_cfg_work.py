"""Tier 2: an unguided step of truncated guidance does the work of core KSampler's step at cfg 1.

Eq. 9's saving reaches the ideal only if a tail step costs what a one-pass step costs in core. The
operators of one step are counted with the torch profiler (deterministic, no timing): a tail step
of ours against the same step of core KSampler at cfg 1 (ComfyUI's cfg-1 shortcut: one branch,
the other slot None, exactly as in our tail). Reading the step's sigma (a view and a scalar read)
is the only work allowed on top; a copy, a concatenation or any computation would show up.
"""

from __future__ import annotations

import collections

import pytest

import graphs
from test_truncated_cfg_nodes import WINDOW_ALL

pytestmark = pytest.mark.comfy

# views and the read of one scalar: no allocation of tensor data, no arithmetic
READ_SIGMA = {"aten::flatten", "aten::view", "aten::select", "aten::as_strided", "aten::alias", "aten::item",
              "aten::_local_scalar_dense"}


def step_operators(monkeypatch, sample, evaluation: int) -> collections.Counter:
    """(name, input shapes) of the aten operators of one model evaluation of ``sample()``, with counts."""
    import comfy.samplers
    from torch.profiler import ProfilerActivity, profile

    original = comfy.samplers.sampling_function
    seen, counts = [0], collections.Counter()

    def sampling_function(*args, **kwargs):
        seen[0] += 1
        if seen[0] - 1 != evaluation:
            return original(*args, **kwargs)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            out = original(*args, **kwargs)
        counts.update((e.name, repr(e.input_shapes)) for e in prof.events())
        return out

    with monkeypatch.context() as m:
        m.setattr(comfy.samplers, "sampling_function", sampling_function)
        sample()
    assert counts, f"evaluation {evaluation} never ran ({seen[0]} evaluations)"
    return counts


@pytest.mark.parametrize("tail", ["uncond", "cond"])
def test_a_tail_step_does_the_work_of_core_at_cfg_1(comfy, sd15_ckpt, monkeypatch, tail):
    import nodes

    r = comfy.run(graphs.base(sd15_ckpt), outputs=["1", "2", "3", "4"])
    model, positive, negative, latent = (r.output_value(n) for n in ("1", "2", "3", "4"))
    patched = nodes.NODE_CLASS_MAPPINGS["TruncatedCFGModel"].execute(
        model, **{**WINDOW_ALL, "guidance_end": 0.5, "tail": tail})[0]
    steps, last = 4, 3  # euler: one evaluation per step; steps 2 and 3 are the tail

    def ours():
        nodes.common_ksampler(patched, 1, steps, 7.0, "euler", "normal", positive, negative, latent)

    def core_cfg_1():
        nodes.common_ksampler(model, 1, steps, 1.0, "euler", "normal", positive, negative, latent)

    def core_cfg():
        nodes.common_ksampler(model, 1, steps, 7.0, "euler", "normal", positive, negative, latent)

    mine, one_pass = step_operators(monkeypatch, ours, last), step_operators(monkeypatch, core_cfg_1, last)
    extra, missing = mine - one_pass, one_pass - mine
    assert not missing, f"core's one-pass step does work ours does not: {dict(missing)}"
    assert {name for name, _ in extra} <= READ_SIGMA, f"work on top of core's one-pass step: {dict(extra)}"
    assert sum(extra.values()) <= 6, dict(extra)
    # the shapes tell the passes apart: core's two-branch step runs the model on two rows
    assert step_operators(monkeypatch, core_cfg, last) - one_pass
