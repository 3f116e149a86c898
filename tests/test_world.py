"""ShapeFirst World through the real ComfyUI: the shipped parameters assemble to the recorded
hashes, load through core loaders as SD1.5 (CheckpointLoaderSimple; UNETLoader + CLIPLoader +
VAELoader), compute what the compact networks compute, and refuse corrupt files clearly."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from devtools import world
from devtools.world import assemble, stfile

pytestmark = pytest.mark.comfy
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def world_models(comfy, runtime_paths):
    """The runtime's models folder with the world's files, registered with ComfyUI's folders."""
    import folder_paths

    models = runtime_paths["models"]
    files = {"checkpoint": world.checkpoint(models), **world.split_files(models)}
    for kind, folder in (("unet", "diffusion_models"), ("clip", "text_encoders"), ("vae", "vae")):
        folder_paths.add_model_folder_path(folder, str(files[kind].parent), is_default=True)
    return files


def test_files_match_the_recorded_hashes(world_models):
    recorded = assemble.info()["files"]
    for kind, path in world_models.items():
        assert stfile.sha256(path) == recorded[kind], kind


def test_assembly_is_deterministic(tmp_path, world_models):
    path = tmp_path / "again.safetensors"
    assert assemble.build("checkpoint", path) == assemble.info()["files"]["checkpoint"]


def test_checkpoint_loads_as_sd15(world_models):
    import comfy.sd

    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(world_models["checkpoint"]))
    assert type(model.model.model_config).__name__ == "SD15"
    assert type(clip.cond_stage_model).__name__ == "SD1ClipModel"
    assert type(vae.first_stage_model).__name__ == "TAESD"


def _sample_graph(loaders: str, ckpt: str, names: dict, prompt: str, seed: int = 3):
    from devtools.graph import Graph

    g = Graph()
    if loaders == "checkpoint":
        loader = g.node("CheckpointLoaderSimple", ckpt_name=ckpt)
        model, clip, vae = loader.out(0), loader.out(1), loader.out(2)
    else:
        model = g.node("UNETLoader", unet_name=names["unet"], weight_dtype="default").out(0)
        clip = g.node("CLIPLoader", clip_name=names["clip"], type="stable_diffusion").out(0)
        vae = g.node("VAELoader", vae_name=names["vae"]).out(0)
    pos = g.node("CLIPTextEncode", text=prompt, clip=clip)
    neg = g.node("CLIPTextEncode", text="", clip=clip)
    latent = g.node("EmptyLatentImage", width=64, height=64, batch_size=1)
    ks = g.node("KSampler", model=model, seed=seed, steps=8, cfg=5.0, sampler_name="euler", scheduler="normal",
                positive=pos.out(0), negative=neg.out(0), latent_image=latent.out(0), denoise=1.0)
    dec = g.node("VAEDecode", samples=ks.out(0), vae=vae)
    return g.prompt(), ks.id, dec.id


def test_split_loaders_give_the_checkpoints_images(comfy, world_models):
    names = {k: p.name for k, p in world_models.items()}
    results = {}
    for loaders in ("checkpoint", "split"):
        prompt, ks, dec = _sample_graph(loaders, names["checkpoint"], names, "a red circle")
        run = comfy.run(prompt, outputs=[dec])
        results[loaders] = run.output_value(dec)
    torch.testing.assert_close(results["split"], results["checkpoint"], rtol=0, atol=2e-3)


def _compact(part_modules=("unet", "text", "vae")):
    """The compact networks from the shipped parameters (fp16 weights, computed in fp32)."""
    from devtools.world.compact_text import CompactCLIPText
    from devtools.world.compact_unet import CompactUNet
    from devtools.world.compact_vae import CompactTAESD
    from devtools.world.layout import Widths

    meta = assemble.info()
    w = Widths.from_json(meta["widths"])
    nets = {"unet": CompactUNet(w), "text": CompactCLIPText(w, meta["token_ids"]), "vae": CompactTAESD(w)}
    for part, net in nets.items():
        sd = {k: torch.from_numpy(v).float() for k, v in assemble.load_params(part).items()
              if k not in ("text_projection.weight", "vae_scale", "vae_shift")}
        net.load_state_dict(sd)
    return {k: v.eval() for k, v in nets.items()}, w


def test_loaded_model_computes_what_the_compact_model_computes(world_models):
    import comfy.sd

    from devtools.world.compact_vae import SD15_SCALE
    from devtools.world.tokens import encode

    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(world_models["checkpoint"]))
    nets, w = _compact()
    prompts = ["a small red circle on the left", "a blue star above a green square", ""]
    with torch.no_grad():
        hidden, _ = nets["text"](encode(prompts))
        for i, p in enumerate(prompts):
            cond = clip.encode_from_tokens(clip.tokenize(p))
            torch.testing.assert_close(cond[0, :, : w.text], hidden[i], rtol=1e-3, atol=2e-3)
            assert cond[0, :, w.text:].abs().max() == 0
        g = torch.Generator().manual_seed(0)
        x = torch.randn(3, 4, 8, 8, generator=g)
        t = torch.tensor([900.0, 420.0, 15.0])
        unet = model.model.diffusion_model
        got = unet(x, timesteps=t, context=torch.nn.functional.pad(hidden, (0, 768 - w.text)))
        torch.testing.assert_close(got, nets["unet"](x, t, hidden), rtol=1e-3, atol=2e-3)
        from devtools.world.render import render
        from devtools.world.scenes import scene

        images = torch.from_numpy(np.stack([render(scene(99, i)) for i in range(16)])).float() / 255
        latents = vae.encode(images)
        scalars = assemble.load_params("vae")
        scale, shift = float(scalars["vae_scale"]), float(scalars["vae_shift"])
        enc = nets["vae"].encode(images.movedim(-1, 1))
        torch.testing.assert_close(latents, enc / scale + shift, rtol=1e-3, atol=2e-3)
        assert 0.7 < (latents * SD15_SCALE).std() < 1.4  # the UNet sees about unit variance
        decoded = vae.decode(latents)
        want = nets["vae"].decode((latents - shift) * scale).clamp(0, 1).movedim(1, -1)
        torch.testing.assert_close(decoded, want, rtol=1e-3, atol=2e-3)


def test_schedule_is_comfyuis(world_models):
    import comfy.sd

    from devtools.world.stage_unet import alphas_cumprod

    model, *_ = comfy.sd.load_checkpoint_guess_config(str(world_models["checkpoint"]), output_clip=False,
                                                      output_vae=False)
    sigmas = model.model.model_sampling.sigmas
    torch.testing.assert_close(((1 - alphas_cumprod()) / alphas_cumprod()).sqrt(), sigmas.float(), rtol=1e-5, atol=1e-6)


def test_a_corrupt_file_is_refused_with_how_to_rebuild(tmp_path, world_models):
    target = tmp_path / "checkpoints" / world_models["checkpoint"].name
    target.parent.mkdir()
    shutil.copyfile(world_models["checkpoint"], target)
    with open(target, "r+b") as f:
        f.seek(-10, 2)
        f.write(b"\x01" * 10)
    with pytest.raises(assemble.WorldFileError) as err:
        world.checkpoint(tmp_path)
    assert target.name in str(err.value) and "python -m devtools.world.assemble" in str(err.value)
    target.unlink()
    assert world.checkpoint(tmp_path) == target  # rebuilt


def test_corrupt_parameters_are_refused_naming_the_file(tmp_path, monkeypatch):
    params = tmp_path / "params"
    shutil.copytree(assemble.PARAMS, params)
    data = bytearray((params / "vae.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (params / "vae.safetensors").write_bytes(bytes(data))
    monkeypatch.setattr(assemble, "PARAMS", params)
    with pytest.raises(assemble.WorldFileError, match="vae.safetensors is corrupt.*git checkout"):
        world.checkpoint(tmp_path / "models")
    assert not (tmp_path / "models" / "checkpoints" / assemble.file_name("checkpoint")).exists()


def test_shipped_parameters_are_small_and_mostly_fp16():
    total = sum(p.stat().st_size for p in assemble.PARAMS.glob("*.safetensors"))
    assert total < 40e6
    for part in ("unet", "text", "vae"):
        dtypes = {v.dtype for v in assemble.load_params(part).values() if v.ndim > 0}
        assert dtypes == {np.dtype(np.float16)}, part


# Measured on the shipped parameters (docs/world.md): classifier accuracy of the images that
# KSampler draws for the 16 prompts below; the bars keep a margin under the measured values
# (shape 0.375 = 6 of 16, colour 1.0 = 16 of 16; two images may flip). Random weights give about 1/8.
ACCURACY_BARS = {"shape": 0.25, "colour": 0.875}


def test_the_model_draws_what_it_is_asked_for(comfy, world_models):
    from devtools.world import evalset, generate

    ev = evalset.load()
    # 16 prompts, every shape and every colour twice ("single" is shape-major, 8 colours a shape)
    truth = [ev["single"][s * 8 + (s + k) % 8] for s in range(8) for k in (0, 4)]
    imgs = generate.images(comfy, world_models["checkpoint"].name, [t["prompt"] for t in truth],
                           [ev["sample_seeds"][0]] * len(truth), steps=12)
    acc = generate.accuracy(imgs, truth)
    for key, bar in ACCURACY_BARS.items():
        assert acc[key] >= bar, (key, acc)
