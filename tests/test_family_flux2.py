"""Tier 2: Flux 2 (the Klein base models run with CFG 5 in core's templates), read through its description,
on the tiny Flux 2 of tests/tiny_flux2.py loaded by core UNETLoader (with detection replaced for that file
on hosts whose detection fixes Flux 2 [dev]'s 48 heads) and sampled by core KSampler.

Flux 2 shares Flux's network class; the description tells them apart by Flux 2's global modulation. Its
joint attention is [text; image] over the text core front-pads to 512 rows: truncated guidance is exact,
the capture equals each joint call's own softmax over the 512 text keys, the text cache and the K/V patch
are refused. Real-size layouts (meta tensors): Flux 2 [dev] builds on every host and is described; Klein
builds only where core detection reads its heads from its width (ComfyUI 0.9.2 and later).
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

import family_checks as checks
import tiny_flux2
from tiny_files import detected, loaded_as_saved, meta_state_dict, replaced_detection

pytestmark = pytest.mark.comfy

STEPS, CFG = 2, 5.0
# max_tokens 512: core front-pads Flux 2 contexts to 512 rows, so a short prompt's rows are the last ones
CAPTURE = {"record_uncond": True, "step_stride": 1, "max_tokens": 512, "max_grid": 64, "keep_layers": True,
           "memory_limit_mb": 1024.0}


def _core_reads_the_tiny_file(path) -> bool:
    import comfy.utils as comfy_utils

    return detected(comfy_utils.load_torch_file(path)) == ("Flux2", tiny_flux2.unet())


@pytest.fixture(scope="module")
def flux2(comfy, runtime_paths):
    import folder_paths

    name = tiny_flux2.ensure(runtime_paths["models"])
    native = _core_reads_the_tiny_file(folder_paths.get_full_path("diffusion_models", name))
    replace = contextlib.nullcontext([]) if native else \
        replaced_detection(tiny_flux2.is_tiny, "Flux2", tiny_flux2.unet())
    with tiny_flux2.conditioning_node(), replace as replaced:
        yield tiny_flux2.graph(name), native, replaced


def _describe(config_class, unet):
    import comfy.model_patcher as mp
    import comfy.supported_models as sm

    model = getattr(sm, config_class)(unet).get_model({}, device="meta")
    patcher = mp.ModelPatcher(model, torch.device("cpu"), torch.device("cpu"))
    return checks.pack_module("model_families").describe(patcher)


def test_real_size_flux2_layouts_as_core_detects_them(comfy):
    name, config = detected(meta_state_dict("Flux2", tiny_flux2.dev()))
    assert name == "Flux2" and config["hidden_size"] == 6144 and config["num_heads"] == 48
    assert _describe(name, config).family.name == "Flux 2"
    name, config = detected(meta_state_dict("Flux2", tiny_flux2.klein_4b()))
    assert name == "Flux2" and config["hidden_size"] == 3072
    if config["num_heads"] == 48:  # this host knows only Flux 2 [dev]: core cannot build Klein at all
        with pytest.raises(ValueError, match="positional dim"):
            _describe(name, config)
        return
    assert config["num_heads"] == 24 and _describe(name, config).family.name == "Flux 2"


def test_flux_1_is_still_flux(comfy):
    """Flux.1 dev (the project's real-width layout) has Flux 2's network class: the description's condition
    on the shared modulation tells them apart."""
    from devtools import families
    from devtools.hosts import host_unet

    network = _describe("Flux", host_unet(families.FAMILIES["flux"].unet))
    assert type(network.net).__name__ == "Flux" and network.family.name == "Flux"


def test_core_loader_builds_the_tiny_flux2(comfy, flux2):
    import comfy.utils as comfy_utils
    import folder_paths

    g, native, replaced = flux2
    sd = comfy_utils.load_torch_file(folder_paths.get_full_path("diffusion_models", g["1"]["inputs"]["unet_name"]))
    replaced.clear()
    model = comfy.run(g, outputs=["1"]).output_value("1", 0)
    assert replaced == ([] if native else ["Flux2"])
    assert type(model.model).__name__ == "Flux2" and type(model.model.diffusion_model).__name__ == "Flux"
    assert loaded_as_saved(model, sd)
    network = checks.pack_module("model_families").describe(model)
    assert network.label == "Flux 2, Flux" and network.family.joint.order == ("text", "image")


def test_window_over_all_steps_is_core_ksampler(comfy, flux2):
    checks.window_over_all_steps_is_core(comfy, flux2[0], STEPS, CFG)


def test_truncated_window_matches_a_step_by_step_reference_of_eq9(comfy, flux2):
    checks.truncated_window_is_eq9(comfy, flux2[0], STEPS, CFG)


def test_the_model_runs_exactly_the_expected_rows(comfy, flux2):
    # core pads both contexts to 512 rows: cond and uncond batch into one call, then the uncond row alone
    checks.runs_the_expected_rows(comfy, flux2[0], STEPS, CFG, expected=[2, 1])


def test_text_cache_and_kv_patch_are_refused_with_the_reason(comfy, flux2):
    checks.joint_refusals(comfy.run(flux2[0], outputs=["1"]).output_value("1", 0), "Flux 2, Flux")


def test_capture_equals_the_renormalised_block_of_each_joint_softmax(comfy, flux2):
    """q and k as each joint call hands them to attention (after the q/k norms and RoPE), read by the test's
    own attention override installed first (the capture chains it): the text keys are the 512 rows core
    front-pads the context to, the prompt's own rows last."""
    run, _, _, seen = checks.capture_beside_joint_calls(comfy, flux2[0], STEPS, CFG, CAPTURE)
    text = tiny_flux2.TEXT_ROWS
    assert run.model_kind == "joint" and run.grid == (4, 4) and run.token_count == {0: text, 1: text}
    assert sorted(run.layer_names) == ["double.0", "single.0"]
    assert len(seen) == STEPS * 2  # per step: one call of cond and uncond, a double and a single block
    for i, (chunks, name, q, k) in enumerate(seen):
        assert q.shape[2] == text + 16
        joint = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)  # (2, H, L, L)
        block = joint[:, :, text:, :text]  # [text; image]: image queries x text keys
        want = (block / block.sum(-1, keepdim=True)).mean(1)
        for row, branch in enumerate(chunks):
            got = run.layers[branch][i // 2][name][0].double()
            ref = want[row].transpose(0, 1).reshape(text, 4, 4)
            assert torch.allclose(got, ref, rtol=1e-3, atol=1e-6), (i, name, branch, (got - ref).abs().max())
    # the prompt's own rows (the last 12 of the positive's 512) draw attention unlike the zero padding
    cond = run.layers[0][0]["double.0"][0].double()
    assert cond[-12:].sum() > cond[:12].sum()
