"""Tier 2: AttentionMapCapture inside a real ComfyUI (tiny random-weight checkpoints).

The reference probabilities are computed here from each layer's own to_q / to_k projections
of the inputs that a separate attn2 patch (the test's own) records; nothing is taken from the
capture's code.
"""

from __future__ import annotations

import math

import pytest
import torch

import graphs

pytestmark = pytest.mark.comfy

CAPTURE = {"record_uncond": True, "step_stride": 1, "max_tokens": 77, "max_grid": 64, "keep_layers": False,
           "memory_limit_mb": 1024.0}
LONG_PROMPT = ", ".join(["a red square coaster next to a round blue mug on a wooden table"] * 8)


@pytest.fixture(scope="module")
def sd15_parts(comfy, sd15_ckpt):
    import nodes

    model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint(sd15_ckpt)[:3]
    return model, clip, vae


def _encode(clip, text):
    import nodes

    return nodes.CLIPTextEncode().encode(clip, text)[0]


def _capture(model, **settings):
    import nodes

    out = nodes.NODE_CLASS_MAPPINGS["AttentionMapCapture"].execute(model, **{**CAPTURE, **settings})
    return out.args[0], out.args[1]


def _sample(model, clip, prompt="a square coaster", negative="", steps=3, cfg=7.5, sampler="euler", size=64,
            seed=5, callback=None):
    import comfy.sample

    latent = torch.zeros(1, 4, size // 8, size // 8)
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(model, noise, steps, cfg, sampler, "normal", _encode(clip, prompt),
                               _encode(clip, negative), latent, seed=seed, callback=callback, disable_pbar=True)


def _attn2_module(diffusion_model, block, block_index):
    from comfy.ldm.modules.attention import SpatialTransformer

    kind, idx = block
    seq = {"input": lambda: diffusion_model.input_blocks[idx], "middle": lambda: diffusion_model.middle_block,
           "output": lambda: diffusion_model.output_blocks[idx]}[kind]()
    st = [m for m in seq if isinstance(m, SpatialTransformer)][0]
    return st.transformer_blocks[block_index].attn2


def _reference(module, n, context):
    """softmax(q k^T / sqrt(d)) per head from the module's own projections, float64, mean over heads."""
    with torch.no_grad():
        q, k = module.to_q(n).double(), module.to_k(context).double()
    h = module.heads
    d = q.shape[-1] // h
    probs = 0
    for i in range(h):
        qi, ki = q[..., i * d:(i + 1) * d], k[..., i * d:(i + 1) * d]
        probs = probs + torch.softmax(qi @ ki.transpose(1, 2) / math.sqrt(d), dim=-1)
    return probs / h  # (B, N, T)


def _check_against_reference(model, clip, steps=3):
    """Sample with the capture and the test's own input recorder; compare each layer with the softmax
    of its own q/k. Returns (run, samples)."""
    captured, rec = _capture(model, keep_layers=True)
    probe = captured.clone()
    calls = []

    def record(n, context, value, extra):
        calls.append((extra["block"], extra["block_index"], list(extra["cond_or_uncond"]), n.clone(), context.clone()))
        return n, context, value

    probe.set_model_attn2_patch(record)  # runs after the capture's own patch, sees the same inputs
    samples = _sample(probe, clip, steps=steps)  # euler: one model evaluation per step, cond + uncond batched
    run = rec.run
    layers = run.layer_names
    assert len(layers) == 4 and len(calls) == 4 * steps
    dm = model.model.diffusion_model
    for i, (block, block_index, chunks, n, context) in enumerate(calls):
        step, layer = i // len(layers), f"{block[0]}.{block[1]}.{block_index}"
        assert layer == layers[i % len(layers)]
        ref = _reference(_attn2_module(dm, block, block_index), n, context)
        b = ref.shape[0] // len(chunks)
        for ci, branch in enumerate(chunks):
            want = ref[ci * b:(ci + 1) * b].transpose(1, 2).reshape(b, 77, 8, 8)
            got = run.layers[branch][step][layer].double()
            assert torch.allclose(got, want, atol=5e-5), (step, layer, branch, (got - want).abs().max())
            assert torch.allclose(got.sum(1), torch.ones_like(got.sum(1)), atol=1e-3)
    return run, samples


def test_probabilities_are_the_softmax_of_each_layers_own_q_and_k(sd15_parts):
    model, clip, _ = sd15_parts
    steps = 3
    run, _ = _check_against_reference(model, clip, steps)
    layers = run.layer_names
    for branch in (0, 1):
        for step in range(steps):
            mean = run.maps[branch][step].double()
            layer_mean = sum(run.layers[branch][step][name].double() for name in layers) / len(layers)
            assert torch.allclose(mean, layer_mean, atol=5e-5)  # all four layers are 8x8: no resampling
            assert torch.allclose(mean.sum(1), torch.ones(1, 8, 8, dtype=torch.float64), atol=1e-3)
    assert not torch.allclose(run.maps[0][0], run.maps[1][0])  # different prompts, different maps


BACKENDS = ["attention_basic", "attention_sub_quad", "attention_split", "attention_pytorch"]


def test_capture_is_the_same_under_every_cpu_attention_backend(sd15_parts, monkeypatch):
    import comfy.ldm.modules.attention as attention

    model, clip, _ = sd15_parts
    results = {}
    for name in BACKENDS:
        func = getattr(attention, name)
        monkeypatch.setattr(attention, "optimized_attention", func)
        monkeypatch.setattr(attention, "optimized_attention_masked", func)
        # under each backend: every layer is the softmax of its own q and k, sampling is unchanged
        run, with_capture = _check_against_reference(model, clip, steps=2)
        assert torch.equal(with_capture, _sample(model, clip, steps=2)), name
        assert run.complete and run.steps(0) == [0, 1] and run.steps(1) == [0, 1], name
        results[name] = torch.stack([run.stacked(b) for b in (0, 1)]).double()
    monkeypatch.undo()
    base = results["attention_basic"]
    for name, maps in results.items():
        # across backends the maps differ only as much as the model's own numbers do (each backend's
        # self-attention output differs in its last bits, which later layers see): 1e-4 of maps ~1/77
        assert torch.allclose(maps, base, atol=1e-4), (name, (maps - base).abs().max())


def _graph(ckpt, prompt="a square coaster", negative="", steps=4, sampler="euler", width=64, height=64, batch=1,
           cfg=7.5, **capture):
    g = graphs.base(ckpt, prompt, negative, width, height, batch)
    g["5"] = {"class_type": "AttentionMapCapture", "inputs": {"model": ["1", 0], **CAPTURE, **capture}}
    g["6"] = graphs.ksampler(("1", 0), ("4", 0), steps=steps, sampler=sampler, cfg=cfg)
    g["7"] = graphs.ksampler(("5", 0), ("4", 0), steps=steps, sampler=sampler, cfg=cfg)
    g["8"] = {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}}
    g["9"] = {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}
    return g


@pytest.mark.parametrize("sampler,batch", [("euler", 2), ("heun", 1), ("dpmpp_2m", 1), ("euler_ancestral", 2)])
def test_sampling_with_capture_is_bit_identical_to_sampling_without(comfy, sd15_ckpt, sampler, batch):
    r = comfy.run(_graph(sd15_ckpt, steps=3, sampler=sampler, batch=batch, keep_layers=True), outputs=["6"])
    plain, captured = r.output_value("6")["samples"], r.output_value("7")["samples"]
    assert torch.equal(plain, captured), f"max diff {(plain - captured).abs().max()}"
    run = r.output_value("5", 1).run
    assert run.complete and run.batch == batch
    assert run.steps(0) == run.steps(1) == [0, 1, 2]  # one record per step, also for 2-evaluation samplers
    assert run.maps[0][0].shape == (batch, 77, 8, 8)


def test_steps_tokens_and_grid_follow_the_run_and_repeats_are_folded(comfy, sd15_ckpt):
    g = _graph(sd15_ckpt, prompt=LONG_PROMPT, steps=4, sampler="heun", width=96, height=64, step_stride=2,
               max_tokens=10)
    g["10"] = {"class_type": "AttentionMapCapture", "inputs": {"model": ["1", 0], **CAPTURE}}  # a second capture
    g["11"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a square coaster", "clip": ["1", 1]}}
    g["12"] = graphs.ksampler(("10", 0), ("4", 0), steps=4, sampler="heun", positive=("11", 0))
    g["13"] = {"class_type": "SaveLatent", "inputs": {"samples": ["12", 0], "filename_prefix": "tests/latent"}}
    r = comfy.run(g)
    long_run, short_run = r.output_value("5", 1).run, r.output_value("10", 1).run
    assert long_run is not short_run
    assert long_run.total_steps == 4 and long_run.planned_steps == [0, 2, 3]
    assert long_run.steps(0) == long_run.steps(1) == [0, 2, 3]
    assert long_run.latent_hw == (8, 12) and long_run.grid == (8, 12)
    assert long_run.token_count == {0: 154, 1: 77}  # two CLIP chunks; the negative is one
    for branch in (0, 1):
        for step in (0, 2, 3):
            assert long_run.maps[branch][step].shape == (1, 10, 8, 12)
            total = long_run.token_means[branch][step].sum().item()
            assert total == pytest.approx(1.0, abs=1e-4)  # every position kept in the means
    # The uncond context (77 tokens) was repeated to 154 to batch with the long prompt; folded back,
    # its step-0 maps equal those of a run whose positive prompt is short (same noise, same uncond).
    assert short_run.token_count == {0: 77, 1: 77} and short_run.steps(0) == [0, 1, 2, 3]
    folded = long_run.maps[1][0].double()
    plain = short_run.maps[1][0][:, :10].double()
    assert torch.allclose(folded, plain, atol=1e-4)
    assert not torch.allclose(long_run.maps[0][0].double(), short_run.maps[0][0][:, :10].double(), atol=1e-4)


def test_a_requeued_run_records_that_run(comfy, sd15_ckpt):
    g = _graph(sd15_ckpt, steps=3)
    first = comfy.run(g, fresh_cache=False).output_value("5", 1)
    assert first.run.steps(0) == [0, 1, 2]
    first_maps = first.run.maps[0][0].clone()
    g["7"]["inputs"]["steps"] = 5
    g["7"]["inputs"]["seed"] = 9
    second = comfy.run(g, fresh_cache=False).output_value("5", 1)
    assert second is first  # the capture node is cached; its recorder starts a new run per sampling
    assert second.run.steps(0) == [0, 1, 2, 3, 4] and second.run.total_steps == 5
    assert not torch.equal(second.run.maps[0][0], first_maps)


def test_the_users_model_is_untouched_and_nothing_is_left_behind(comfy, sd15_ckpt):
    import comfy.ldm.modules.attention as attention
    import comfy.patcher_extension as pe

    before = (attention.optimized_attention, attention.optimized_attention_masked)
    r = comfy.run(_graph(sd15_ckpt, steps=2), outputs=["6"])
    original, captured, rec = r.output_value("1", 0), r.output_value("5", 0), r.output_value("5", 1)
    assert captured is not original
    to = original.model_options.get("transformer_options", {})
    assert "optimized_attention_override" not in to and not to.get("patches", {}).get("attn2_patch")
    for kind in (pe.WrappersMP.SAMPLER_SAMPLE, pe.WrappersMP.CALC_COND_BATCH, pe.WrappersMP.APPLY_MODEL):
        assert not original.get_all_wrappers(kind)
        assert rec.key in captured.wrappers[kind]
    assert callable(captured.model_options["transformer_options"]["optimized_attention_override"])
    assert (attention.optimized_attention, attention.optimized_attention_masked) == before
    assert not rec.busy and rec.run.complete


def test_an_interrupted_run_leaves_no_state_and_the_next_run_works(sd15_parts):
    import comfy.ldm.modules.attention as attention
    import comfy.model_management as mm
    import nodes

    model, clip, vae = sd15_parts
    before = attention.optimized_attention
    captured, rec = _capture(model)

    def interrupt(step, x0, x, total):
        if step == 1:
            raise mm.InterruptProcessingException()

    with pytest.raises(mm.InterruptProcessingException):
        _sample(captured, clip, steps=3, callback=interrupt)
    assert not rec.busy and rec.run is not None and not rec.run.complete
    assert rec.run.steps(0) == [0, 1]  # what ran before the interruption, marked unfinished
    assert attention.optimized_attention is before
    images = vae.decode(torch.zeros(1, 4, 8, 8))
    view = nodes.NODE_CLASS_MAPPINGS["AttentionMapView"]
    with pytest.raises(ValueError, match=r"AttentionMapView: 'capture' holds no finished sampling run"):
        view.execute(rec, images, clip, "a square coaster")
    assert torch.equal(_sample(captured, clip, steps=3), _sample(model, clip, steps=3))
    assert rec.run.complete and rec.run.steps(0) == [0, 1, 2]


def test_a_run_over_the_memory_limit_stops_at_its_first_step_with_the_fix(comfy, sd15_ckpt):
    from devtools.harness import GraphError

    # 256 px: 32x32 grid x 77 tokens x 2 bytes x 2 branches = 315 KB per step; 10 steps > 1 MB
    g = _graph(sd15_ckpt, steps=10, width=256, height=256, memory_limit_mb=1.0)
    with pytest.raises(GraphError, match=r"AttentionMapCapture: this run would store 3 MB of attention maps, over "
                                         r"memory_limit_mb = 1 .*step_stride.*max_tokens.*max_grid"):
        comfy.run(g)


def test_max_grid_shrinks_the_store(comfy, sd15_ckpt):
    r = comfy.run(_graph(sd15_ckpt, steps=2, width=128, height=128, max_grid=8, record_uncond=False))
    run = r.output_value("5", 1).run
    assert run.latent_hw == (16, 16) and run.grid == (8, 8) and run.branches() == [0]
    assert run.maps[0][0].shape == (1, 77, 8, 8)
    assert torch.allclose(run.maps[0][1].float().sum(1), torch.ones(1, 8, 8), atol=1e-3)


def test_a_model_without_text_attention_is_refused(comfy):
    import comfy.model_patcher as mp
    import comfy.supported_models as sm
    import nodes

    # a UNet without transformer blocks (transformer depth 0): no text reaches the image by attention
    config = sm.SD15({"use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4,
                      "model_channels": 32, "num_res_blocks": [1], "channel_mult": [1], "transformer_depth": [0],
                      "transformer_depth_output": [0, 0], "transformer_depth_middle": 0, "num_head_channels": 16,
                      "context_dim": 32, "use_linear_in_transformer": False, "num_classes": None,
                      "adm_in_channels": None, "use_spatial_transformer": True, "legacy": False})
    config.set_inference_dtype(torch.float32, None)
    unet = mp.ModelPatcher(config.get_model({}), load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
    with pytest.raises(ValueError, match=r"AttentionMapCapture: Attention Map Capture does not apply to this model "
                                         r"\(SD1.x / SD2.x / SDXL, UNetModel\): it has no cross-attention layers .*"
                                         r"Connect an SD1.x / SD2.x / SDXL, PixArt, Wan 2.1 / 2.2 text-to-video, Wan 2.1 "
                                         r"image-to-video, SD3, Flux, Flux 2, Qwen-Image, Lumina 2, Z-Image or Chroma model\.$"):
        nodes.NODE_CLASS_MAPPINGS["AttentionMapCapture"].execute(unet, **CAPTURE)


def test_z_image_and_lumina2_of_the_same_class_are_told_apart_and_read_as_joint_attention(comfy):
    """Z-Image is Lumina 2's NextDiT with its text and image tokens padded to a multiple of 32 (pad tokens
    inside the joint sequence): read as joint attention with that padding (test_family_zimage.py checks the
    maps). The same tiny net without it (Lumina 2's layout, [text; image]) is read without padding."""
    import comfy.model_patcher as mp
    import comfy.supported_models as sm
    import nodes

    node = nodes.NODE_CLASS_MAPPINGS["AttentionMapCapture"]

    def tiny(config_class, **extra):
        config = config_class({"image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 64,
                               "cap_feat_dim": 32, "n_layers": 1, "n_refiner_layers": 1, "qk_norm": True,
                               "n_heads": 2, "n_kv_heads": 2, "axes_dims": [8, 12, 12], "axes_lens": [300, 512, 512],
                               "rope_theta": 10000.0, **extra})
        config.set_inference_dtype(torch.float32, None)
        return mp.ModelPatcher(config.get_model({}), load_device=torch.device("cpu"),
                               offload_device=torch.device("cpu"))

    lumina2 = tiny(sm.Lumina2)
    patched, recorder = node.execute(lumina2, **CAPTURE).result
    assert recorder.kind == "joint" and patched is not lumina2
    z_image = tiny(sm.ZImage, z_image_modulation=True, pad_tokens_multiple=32)
    patched, recorder = node.execute(z_image, **CAPTURE).result
    assert recorder.kind == "joint" and recorder.reading.text_pad == 32 and recorder.reading.layout.padded
    assert node.execute(lumina2, **CAPTURE).result[1].reading.text_pad is None
