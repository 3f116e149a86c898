"""Tier 2: the tail's text cache (nodes/text_cache.py) on real loaded models, sampled by core samplers.

The patched model is built here the way the truncation nodes build it: truncated guidance
(eq. 9) attached to a clone of a loaded MODEL, then the cache attached to that clone; which steps
are in the tail is counted here from the window (the first int(steps * end) are guided).
Cross-attention work is counted with forward hooks on each layer's query projection, which runs
only when a layer computes.
"""

from __future__ import annotations

import importlib

import pytest
import torch

pytestmark = pytest.mark.comfy

STEPS, END, CFG, SEED = 6, 0.5, 6.0, 3


def _pack(name: str):
    import nodes

    base = nodes.NODE_CLASS_MAPPINGS["TruncatedCFGSampler"].__module__.rsplit(".", 1)[0]
    return importlib.import_module(f"{base}.{name}")


@pytest.fixture(scope="module")
def sd15(comfy, sd15_ckpt):
    import nodes

    model, clip = nodes.CheckpointLoaderSimple().load_checkpoint(sd15_ckpt)[:2]
    encode = lambda text: nodes.CLIPTextEncode().encode(clip, text)[0]  # noqa: E731
    return model, encode("a red cube on a table"), encode(""), encode("a blue sphere in the sky")


def _eq9(model, tail="uncond", end=END):
    patch = _pack("truncated_cfg_patch")
    return patch.patch_model(model, patch.GuidanceWindow(end=end, tail=tail, cfg=CFG))[0]


def _cached(model, tail="uncond", end=END, mode="tail_output"):
    m = _eq9(model, tail, end)
    _pack("text_cache").attach(m, mode, "test")
    return m


def _sample(model, pos, neg, steps=STEPS, sampler="euler", seed=SEED):
    """Core sampling; returns the final latent and the prediction (denoised) of every step."""
    import comfy.sample

    latent = torch.zeros(1, 4, 8, 8)
    noise = comfy.sample.prepare_noise(latent, seed)
    preds = []
    out = comfy.sample.sample(model, noise, steps, CFG, sampler, "normal", pos, neg, latent, seed=seed,
                              callback=lambda i, x0, x, n: preds.append(x0.clone()), disable_pbar=True)
    return out, preds


def _count_per_step(model, pos, neg):
    """attn2 computations per sampling step (euler: one evaluation per step)."""
    import comfy.patcher_extension as pe

    counts = []
    m = model.clone()

    def per_eval(executor, *args, **kwargs):
        counts.append(0)
        return executor(*args, **kwargs)

    m.add_wrapper_with_key(pe.WrappersMP.CALC_COND_BATCH, "test.count", per_eval)
    attn2 = [mod.attn2 for mod in m.model.diffusion_model.modules() if getattr(mod, "attn2", None) is not None]
    hooks = [a.to_q.register_forward_hook(lambda *_: counts.__setitem__(-1, counts[-1] + 1)) for a in attn2]
    try:
        out, preds = _sample(m, pos, neg)
    finally:
        for h in hooks:
            h.remove()
    assert attn2
    return counts, len(attn2), out, preds


@pytest.mark.parametrize("tail", ["uncond", "cond"])
def test_the_cache_acts_only_in_the_tail_and_the_steps_before_are_bit_identical(sd15, tail):
    model, pos, neg, _ = sd15
    k = int(STEPS * END)
    exact_counts, layers, exact, exact_preds = _count_per_step(_eq9(model, tail), pos, neg)
    counts, _, cached, preds = _count_per_step(_cached(model, tail), pos, neg)
    # eq. 9 computes every layer once per step (both branches in one batch, then the kept branch)
    assert exact_counts == [layers] * STEPS
    assert counts == [layers] * k + [0] * (STEPS - k), counts
    for i in range(k):  # before the tail: bit-identical to exact eq. 9
        assert torch.equal(preds[i], exact_preds[i]), i
    for i in range(k, STEPS):  # in the tail: it acted
        assert not torch.equal(preds[i], exact_preds[i]), i
    # ... by a small bounded amount, next to what the tail itself changes (eq. 9 vs plain CFG)
    core, _ = _sample(model, pos, neg)
    drift = (cached - exact).abs().mean().item()
    tail_effect = (exact - core).abs().mean().item()
    print(f"text cache drift {drift:.5f}, eq. 9 vs CFG {tail_effect:.5f}")
    assert 0 < drift < 0.25 * tail_effect


def test_applying_twice_replaces_and_the_users_model_is_untouched(sd15):
    import comfy.patcher_extension as pe

    model, pos, neg, _ = sd15
    cache = _pack("text_cache")
    once = _cached(model)
    twice = _cached(model)
    cache.attach(twice, "tail_output", "test")
    for kind in (pe.WrappersMP.SAMPLER_SAMPLE, pe.WrappersMP.APPLY_MODEL):
        assert len(twice.get_wrappers(kind, cache.WRAPPER_KEY)) == 1
    assert once.object_patches.keys() == twice.object_patches.keys()
    assert not model.object_patches and not model.get_wrappers(pe.WrappersMP.APPLY_MODEL, cache.WRAPPER_KEY)
    counts_once, _, a, _ = _count_per_step(once, pos, neg)
    counts_twice, _, b, _ = _count_per_step(twice, pos, neg)
    assert counts_once == counts_twice and torch.equal(a, b)


def test_no_state_leaks_into_the_next_run(sd15):
    model, pos, neg, other = sd15
    m = _cached(model)
    _sample(m, pos, neg)
    second, _ = _sample(m, other, neg, seed=SEED + 1)  # another prompt on the same patched model
    fresh, _ = _sample(_cached(model), other, neg, seed=SEED + 1)
    assert torch.equal(second, fresh)
    # and the plain model samples exactly as before (object patches restored after the run)
    before, _ = _sample(model, pos, neg)
    _sample(m, pos, neg)
    after, _ = _sample(model, pos, neg)
    assert torch.equal(before, after)


def test_joint_attention_models_are_refused_with_the_fix(comfy):
    from test_attention_models import _tiny_flux  # a seeded tiny Flux, built for the host's FluxParams

    flux = _tiny_flux()
    m = flux.clone()
    with pytest.raises(ValueError, match=r"^test: text_cache 'tail_output' does not apply to this model \(Flux\): "
                                         r"joint attention: .*\. Set text_cache to 'off'\.$"):
        _pack("text_cache").attach(m, "tail_output", "test")
    assert not m.object_patches


def test_pixart_cross_attention_is_cached_in_the_tail(comfy):
    import comfy.model_patcher as mp
    import comfy.sample
    import comfy.supported_models as sm

    config = sm.PixArtAlpha({"image_model": "pixart_alpha", "hidden_size": 64, "depth": 2, "num_heads": 4,
                             "patch_size": 2, "in_channels": 4, "caption_channels": 32, "model_max_length": 120,
                             "micro_condition": False})
    config.set_inference_dtype(torch.float32, None)
    net = config.get_model({})
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.diffusion_model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    pixart = mp.ModelPatcher(net, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
    pos = [[torch.randn(1, 12, 32, generator=g), {}]]
    neg = [[torch.randn(1, 5, 32, generator=g), {}]]
    latent = torch.zeros(1, 4, 48, 48)
    noise = torch.randn(latent.shape, generator=g)
    k = int(STEPS * END)

    def run(m):
        calls = []
        hooks = [b.cross_attn.q_linear.register_forward_hook(lambda *_: calls.append(1))
                 for b in net.diffusion_model.blocks]
        try:
            out = comfy.sample.sample(m, noise, STEPS, CFG, "euler", "normal", pos, neg, latent, seed=1,
                                      disable_pbar=True)
        finally:
            for h in hooks:
                h.remove()
        return out, len(calls)

    exact, n_exact = run(_eq9(pixart))
    cached, n_cached = run(_cached(pixart))
    # cond and uncond have different lengths: separate calls while guided, one call in the tail
    blocks = len(net.diffusion_model.blocks)
    assert n_exact == blocks * (2 * k + (STEPS - k)) and n_cached == blocks * 2 * k
    drift = (cached - exact).abs().mean().item()
    assert 0 < drift < 0.1 * exact.abs().mean().item()


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m", "heun"])
def test_the_exact_part_is_bit_identical_to_core_ksampler(sd15, sampler):
    """Reusing the text keys/values of a fixed context: same bits as core KSampler, fewer to_k calls."""
    import nodes

    model, pos, neg, _ = sd15
    attn2 = [m.attn2 for m in model.model.diffusion_model.modules() if getattr(m, "attn2", None) is not None]
    latent = {"samples": torch.zeros(2, 4, 8, 8)}

    def ksampler(m, calls):
        hooks = [a.to_k.register_forward_hook(lambda *_: calls.append(1)) for a in attn2]
        try:
            return nodes.KSampler().sample(m, 5, 4, CFG, sampler, "normal", pos, neg, latent)[0]["samples"]
        finally:
            for h in hooks:
                h.remove()

    exact = model.clone()
    _pack("text_cache").attach(exact, "keys_values", "test")
    core_calls, ours_calls = [], []
    core = ksampler(model, core_calls)
    ours = ksampler(exact, ours_calls)
    assert torch.equal(core, ours)
    assert len(ours_calls) == len(attn2) and len(core_calls) > len(ours_calls)  # one context: once per layer
    # with eq. 9, whose tail batch holds one branch only (another context shape): still the same bits
    eq9 = _eq9(model)
    both = _eq9(model)
    _pack("text_cache").attach(both, "keys_values", "test")
    assert torch.equal(ksampler(eq9, []), ksampler(both, []))


def test_the_exact_part_recomputes_for_a_changed_context(sd15):
    """Two prompts switched by timestep range: a changed context must not reuse the old projections."""
    import nodes

    model, pos, neg, other = sd15
    ranged = (nodes.ConditioningSetTimestepRange().set_range(pos, 0.0, 0.5)[0]
              + nodes.ConditioningSetTimestepRange().set_range(other, 0.5, 1.0)[0])
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    exact = model.clone()
    _pack("text_cache").attach(exact, "keys_values", "test")
    a = nodes.KSampler().sample(model, 2, 4, CFG, "euler", "normal", ranged, neg, latent)[0]["samples"]
    b = nodes.KSampler().sample(exact, 2, 4, CFG, "euler", "normal", ranged, neg, latent)[0]["samples"]
    assert torch.equal(a, b)


# -- the text_cache input of the truncation nodes, through the executor ------------------------------------


def _sampler_graph(ckpt, text_cache, end=END, steps=STEPS):
    import graphs
    from test_truncated_cfg_nodes import truncated

    g = graphs.base(ckpt, prompt="a red cube on a table")
    window = {"guidance_start": 0.0, "guidance_end": end, "tail": "uncond", "window": "fixed",
              "adaptive_threshold": 0.1, "text_cache": text_cache}
    g["5"] = truncated(("1", 0), ("4", 0), window=window, steps=steps, cfg=CFG)
    return g


def test_keys_values_option_is_bit_identical_to_off(comfy, sd15_ckpt):
    off = comfy.run(_sampler_graph(sd15_ckpt, "off"), outputs=["5"]).output_value("5")["samples"]
    kv = comfy.run(_sampler_graph(sd15_ckpt, "keys_values"), outputs=["5"]).output_value("5")["samples"]
    assert torch.equal(off, kv)


def test_tail_output_option_acts_only_in_the_tail_and_stays_close(comfy, sd15_ckpt):
    off = comfy.run(_sampler_graph(sd15_ckpt, "off"), outputs=["5"]).output_value("5")["samples"]
    cached = comfy.run(_sampler_graph(sd15_ckpt, "tail_output"), outputs=["5"]).output_value("5")["samples"]
    full = comfy.run(_sampler_graph(sd15_ckpt, "off", end=1.0), outputs=["5"]).output_value("5")["samples"]
    drift, eq9_effect = (cached - off).abs().max(), (full - off).abs().max()
    assert 0 < drift < eq9_effect  # an approximation of eq. 9, closer to it than eq. 9 is to plain CFG


def test_tail_output_on_a_joint_attention_model_is_refused_naming_the_fix(comfy, family_files):
    import nodes as comfy_nodes

    sd3 = comfy_nodes.UNETLoader().load_unet(family_files["sd3"], "default")[0]
    truncated_model = comfy_nodes.NODE_CLASS_MAPPINGS["TruncatedCFGModel"]
    with pytest.raises(ValueError) as err:
        truncated_model.execute(sd3, text_cache="tail_output")
    message = str(err.value)  # the node named once, first; then what, why and the fix
    assert message.startswith("TruncatedCFGModel: text_cache 'tail_output' does not apply to this model (SD3"), message
    assert message.count("TruncatedCFGModel") == 1 and "Truncated CFG:" not in message, message
    assert message.endswith("Set text_cache to 'off'."), message
    with pytest.raises(ValueError, match="keys_values"):
        truncated_model.execute(sd3, text_cache="keys_values")


# -- core's multi-GPU CFG splitting (ComfyUI 0.33.0: cond and uncond on two pool threads at once) ----------


class _Interleave:
    """Forces, at each guided evaluation, the order in which two pool threads could run: the cond thread
    is held inside its model call (after the cache has set up that call) until the uncond thread has set up
    its own call, and the uncond thread then waits until the cond thread's call is over. State of a model
    call kept anywhere but in the calling thread is then overwritten by the other branch's."""

    WAIT = 60.0

    def __init__(self):
        import threading

        self.threading = threading
        self.guided = False
        self._new()

    def _new(self):
        e = self.threading.Event
        self.cond_in, self.uncond_in, self.cond_done = e(), e(), e()

    def _wait(self, event):
        assert event.wait(self.WAIT), "the two branches did not run on two threads at once"

    def calc_cond_batch(self, executor, model, conds, x_in, timestep, model_options):
        self.guided = sum(c is not None for c in conds) == 2  # the tail runs one branch on one thread
        self._new()
        return executor(model, conds, x_in, timestep, model_options)

    def apply_model(self, executor, *args, **kwargs):  # outermost: before the cache sets up the call
        chunks = args[5].get("cond_or_uncond")
        if self.guided and chunks == [1]:
            self._wait(self.cond_in)
        return executor(*args, **kwargs)

    def diffusion_model(self, executor, *args, **kwargs):  # inside the call the cache has set up
        options = kwargs.get("transformer_options") or next(a for a in args if isinstance(a, dict))
        chunks = options.get("cond_or_uncond")
        if not self.guided:
            return executor(*args, **kwargs)
        if chunks == [0]:
            self.cond_in.set()
            self._wait(self.uncond_in)
            try:
                return executor(*args, **kwargs)
            finally:
                self.cond_done.set()
        self.uncond_in.set()
        self._wait(self.cond_done)
        return executor(*args, **kwargs)


def test_the_tail_cache_keeps_each_branch_under_multi_gpu_splitting(sd15):
    """Core's multi-GPU CFG splitting runs the cond and uncond chunks of an evaluation on two pool threads
    at once, each through the cache's hooks. Each thread's model call must see its own branch: the tail
    then reuses the uncond output of the last guided step, as without splitting (same result to float
    rounding of the batch split), never the cond output of the other thread. ``_Interleave`` forces the order
    in which per-call state kept in one place for both threads is overwritten; without it the two threads
    race on their own (which the first comparison shows when they do)."""
    import comfy.patcher_extension as pe
    from multigpu import two_cpu_devices

    model, pos, neg, _ = sd15
    order = _Interleave()
    ordered = model.clone()  # the ordering wrappers first: outside the cache's own
    ordered.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, "test.order", order.apply_model)
    ordered.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "test.order", order.diffusion_model)
    with two_cpu_devices() as split:
        unsplit, _ = _sample(_cached(model), pos, neg)
        plain_split, _ = _sample(split(_cached(model)), pos, neg)
        m = _cached(ordered)
        m.add_wrapper_with_key(pe.WrappersMP.CALC_COND_BATCH, "test.order", order.calc_cond_batch)
        interleaved, _ = _sample(split(m), pos, neg)
        # what splitting the batch changes by itself (float rounding of two batches of one against one of two)
        rounding = (_sample(split(_eq9(model)), pos, neg)[0] - _sample(_eq9(model), pos, neg)[0]).abs().max()
    for got in (plain_split, interleaved):  # the wrong branch's outputs reused gave 14x and 60x the rounding
        assert (got - unsplit).abs().max() <= 2 * rounding, ((got - unsplit).abs().max(), rounding)
