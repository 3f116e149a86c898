"""The world's compact networks compute exactly what ComfyUI's full-width SD1.5 networks compute
once the compact weights are embedded ("narrow inside wide"): random compact weights (norm
weights included), embedded by devtools.world.assemble, loaded into ComfyUI's own UNetModel,
CLIPTextModel and TAESD classes, same inputs -> same outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def comfy_classes(runtime_paths):
    from devtools.boot import importable

    importable()
    import comfy.clip_model
    import comfy.ops
    import comfy.supported_models
    import comfy.taesd.taesd
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    from devtools.checkpoints import SPECS

    def unet():
        config = comfy.supported_models.SD15(SPECS["sd15"].unet).unet_config
        return UNetModel(**config, device="cpu", operations=comfy.ops.disable_weight_init)

    def clip():
        config = json.loads((Path(comfy.clip_model.__file__).parent / "sd1_clip_config.json").read_text())
        return comfy.clip_model.CLIPTextModel(config, torch.float32, "cpu", comfy.ops.manual_cast)

    return {"unet": unet, "clip": clip, "taesd": lambda: comfy.taesd.taesd.TAESD(latent_channels=4)}


@pytest.fixture(scope="module")
def shapes(comfy_classes):
    from devtools.world.export import sd15_shapes

    return sd15_shapes()


def _randomise(module, seed):
    """Default init plus random norm weights/biases (so a misplaced channel cannot hide)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(p * (1 + 0.5 * torch.rand(p.shape, generator=g)))
    return module


def _fp16_roundtrip(module):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.half().float())
    return module


def _full(part, compact_module, shapes, extra=None):
    from devtools.world.assemble import full_part
    from devtools.world.export import arrays
    from devtools.world.layout import Widths
    from devtools.world.tokens import token_ids

    params = {**arrays(compact_module.state_dict()), **(extra or {})}
    full = full_part(part, params, shapes[part], Widths(), token_ids())
    return {k: torch.from_numpy(v.astype(np.float32)) for k, v in full.items()}


def test_unet_equals_comfyui(comfy_classes, shapes):
    from devtools.world.compact_unet import CompactUNet
    from devtools.world.layout import Widths

    w = Widths()
    compact = _fp16_roundtrip(_randomise(CompactUNet(w), 0)).eval()
    full = comfy_classes["unet"]()
    assert full.load_state_dict(_full("unet", compact, shapes), strict=True)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([999.0, 500.5, 3.0])
    ctx = torch.randn(3, 77, w.text, generator=g)
    with torch.no_grad():
        want = compact(x, t, ctx)
        got = full(x, timesteps=t, context=torch.nn.functional.pad(ctx, (0, 768 - w.text)))
    assert want.abs().mean() > 0.1
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_unet_inactive_heads_copy_the_active_heads_maps(comfy_classes, shapes):
    from devtools.world.compact_unet import CompactUNet
    from devtools.world.layout import UNET_HEAD_DIM, Widths

    w = Widths()
    full = _full("unet", _randomise(CompactUNet(w), 2), shapes)
    for key, v in full.items():
        if key.endswith(("attn2.to_q.weight", "attn2.to_k.weight", "attn1.to_q.weight")):
            heads = v.view(-1, UNET_HEAD_DIM, v.shape[1])
            active = w.unet // UNET_HEAD_DIM
            assert torch.equal(heads[active:], heads[:active].repeat(heads.shape[0] // active - 1, 1, 1)), key
        if key.endswith("attn2.to_v.weight"):
            assert v[w.unet:].abs().sum() == 0 and v[:w.unet].abs().sum() > 0


def test_text_encoder_equals_comfyui(comfy_classes, shapes):
    from devtools.world.compact_text import ToyCLIP
    from devtools.world.export import arrays
    from devtools.world.layout import Widths
    from devtools.world.tokens import encode, token_ids

    w = Widths()
    clip = _randomise(ToyCLIP(w, token_ids()), 3)
    _fp16_roundtrip(clip)
    proj = arrays({"p": clip.text_projection.weight})["p"]
    full = comfy_classes["clip"]()
    missing, unexpected = full.load_state_dict(_full("text", clip.text, shapes, {"text_projection.weight": proj}),
                                               strict=False)
    assert not missing and not unexpected
    tokens = encode(["a small red circle on the left", "", "a blue star above a green zebra"])  # zebra: no row
    with torch.no_grad():
        hidden, pooled = clip.text(tokens)
        x, _, projected, full_pooled = full(tokens)
    torch.testing.assert_close(x[..., : w.text], hidden, rtol=1e-4, atol=1e-4)
    assert x[..., w.text:].abs().max() == 0
    torch.testing.assert_close(full_pooled[..., : w.text], pooled, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(projected[..., : proj.shape[0]], clip.text_projection(pooled), rtol=1e-4, atol=1e-4)


def test_vae_equals_comfyui(comfy_classes, shapes):
    from devtools.world.compact_vae import SD15_SCALE, CompactTAESD
    from devtools.world.export import vae_scalars
    from devtools.world.layout import Widths

    vae = _fp16_roundtrip(_randomise(CompactTAESD(Widths()), 4))
    mean, std = 0.3, 1.7  # the encoder output's statistics the UNet's latents are normalised by
    full = comfy_classes["taesd"]()
    assert full.load_state_dict(_full("vae", vae, shapes, vae_scalars(mean, std)), strict=True)
    img = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        enc = vae.encode(img)
        unet_sees = full.encode(img * 2 - 1) * SD15_SCALE  # ComfyUI's SD1.5 latent format scales by 0.18215
        torch.testing.assert_close(unet_sees, (enc - mean) / std, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(full.decode(unet_sees / SD15_SCALE), vae.decode(enc) * 2 - 1, rtol=1e-4, atol=1e-4)
