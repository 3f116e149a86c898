"""Seeded random-weight checkpoints of REAL Stable Diffusion architectures, small enough for CPU.

No pretrained weights can be downloaded here, so tests build checkpoints from ComfyUI's own
classes (UNetModel, CLIPTextModel, TAESD) with every tensor initialised by torch's default init
under a fixed seed, and save them in the single-file checkpoint layout that ComfyUI's
``CheckpointLoaderSimple`` (``comfy.sd.load_checkpoint_guess_config``) loads and detects:

* the UNet keeps what ComfyUI's detection needs (model_channels, context_dim, linear-in-transformer,
  ADM input, and for SDXL the input transformer depths) at reduced depth;
* the text encoders are full size: ComfyUI fixes their configs, a shallower one loads with
  "clip missing" keys left uninitialised;
* the VAE is a TAESD (``first_stage_model.taesd_encoder/decoder...``), which ComfyUI builds instead
  of the 84 M parameter AutoencoderKL.

Adding an architecture = one ``SPECS`` entry. The builders make ComfyUI importable themselves
(devtools.boot.importable), so they work before or without a booted harness.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .seeding import check_finite, seeded_init

log = logging.getLogger(__name__)

# Bump whenever the produced tensors change: it is part of the cached file name.
BUILD_VERSION = 1


@dataclass(frozen=True)
class TextEncoderSpec:
    prefix: str  # checkpoint key prefix of the encoder
    config: str  # ComfyUI's json config, relative to the ``comfy`` package
    layout: str  # "hf": transformers CLIPTextModel keys; "openclip": open_clip keys (SD2, SDXL's G)


@dataclass(frozen=True)
class ArchSpec:
    config_class: str  # class name in comfy.supported_models that detection must pick
    unet: dict  # UNetModel config as comfy.model_detection.detect_unet_config reports it
    text_encoders: tuple[TextEncoderSpec, ...]
    vae_prefix: str = "first_stage_model."
    revision: int = 0  # bump when this kind's tensors change (part of its cached file name)
    # detect_unet_config keys a reduced spec keeps from the real model; None = the full architecture
    kept: tuple[str, ...] | None = ("in_channels", "out_channels", "model_channels", "context_dim",
                                    "use_linear_in_transformer", "adm_in_channels")


def _unet(context_dim, linear, adm=None, channel_mult=(1,), res_blocks=1, depth=(1,),
          depth_out=(1, 1), depth_middle=1):
    return {
        "image_size": 32, "use_spatial_transformer": True, "legacy": False, "use_checkpoint": False,
        "in_channels": 4, "out_channels": 4, "model_channels": 320,
        "num_res_blocks": [res_blocks] * len(channel_mult), "channel_mult": list(channel_mult),
        "transformer_depth": list(depth), "transformer_depth_output": list(depth_out),
        "transformer_depth_middle": depth_middle, "use_linear_in_transformer": linear,
        "context_dim": context_dim, "adm_in_channels": adm,
        **({"num_classes": "sequential"} if adm else {}),
        "use_temporal_resblock": False, "use_temporal_attention": False,
    }


CLIP_L = "sd1_clip_config.json"
SPECS: dict[str, ArchSpec] = {
    # SD1.x: 320 channels, context 768, conv proj_in/out, no ADM. UNet about 26 M parameters.
    "sd15": ArchSpec("SD15", _unet(768, linear=False),
                     (TextEncoderSpec("cond_stage_model.transformer.", CLIP_L, "hf"),)),
    # The full SD1.5 UNet (860 M parameters, 2 GB file): for benchmarks, not for tests. Output
    # transformers on the three highest resolutions, as in SD1.5 (ComfyUI pops the list from the end).
    "sd15_full": ArchSpec("SD15", _unet(768, linear=False, channel_mult=(1, 2, 4, 4), res_blocks=2,
                                        depth=(1, 1, 1, 1, 1, 1, 0, 0), depth_out=(1,) * 9 + (0,) * 3),
                          (TextEncoderSpec("cond_stage_model.transformer.", CLIP_L, "hf"),), revision=1, kept=None),
    # SD2.x: context 1024, linear proj_in/out; OpenCLIP ViT-H text encoder (pads with token 0).
    # Always detected as EPS: SD20.model_type reads output_blocks.11, which this depth lacks.
    "sd2x": ArchSpec("SD20", _unet(1024, linear=True),
                     (TextEncoderSpec("cond_stage_model.model.", "text_encoders/sd2_clip_config.json",
                                      "openclip"),)),
    # SDXL: detection requires the input transformer depths [0, 0, 2, 2, 10, 10] (6 res blocks),
    # kept at 320 channels everywhere with no output transformers. clip_l + clip_g (bigG).
    "sdxl": ArchSpec("SDXL", _unet(2048, linear=True, adm=2816, channel_mult=(1, 1, 1), res_blocks=2,
                                   depth=(0, 0, 2, 2, 10, 10), depth_out=(0,) * 9),
                     (TextEncoderSpec("conditioner.embedders.0.transformer.", CLIP_L, "hf"),
                      TextEncoderSpec("conditioner.embedders.1.model.", "clip_config_bigg.json",
                                      "openclip")),
                     kept=ArchSpec.kept + ("transformer_depth",)),
}
UNET_PREFIX = "model.diffusion_model."


# ---------------------------------------------------------------- shared helpers
def _unet_model(spec: ArchSpec, device: str):
    import comfy.ops
    import comfy.supported_models
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    config = getattr(comfy.supported_models, spec.config_class)(spec.unet).unet_config
    return UNetModel(**config, device=device, operations=comfy.ops.disable_weight_init)


def unet_shapes(kind: str) -> dict:
    """The UNet's checkpoint keys with meta tensors (shapes only, no memory): what detection reads."""
    return {UNET_PREFIX + k: v for k, v in _unet_model(SPECS[kind], "meta").state_dict().items()}


def _unet_state_dict(spec: ArchSpec, seed: int) -> dict:
    unet = seeded_init(_unet_model(spec, "cpu"), seed)
    # No rescaling needed: the output is conv(silu(GroupNorm(h))), bounded whatever the input, so
    # euler + cfg 7.5 stays finite (the final latent simply keeps most of the initial noise).
    return {UNET_PREFIX + k: v for k, v in unet.state_dict().items()}


def _to_openclip(sd: dict) -> dict:
    """transformers CLIPTextModel keys -> open_clip keys (inverse of comfy.utils.transformers_convert)."""
    import torch

    out = {"token_embedding.weight": sd.pop("text_model.embeddings.token_embedding.weight"),
           "positional_embedding": sd.pop("text_model.embeddings.position_embedding.weight"),
           "ln_final.weight": sd.pop("text_model.final_layer_norm.weight"),
           "ln_final.bias": sd.pop("text_model.final_layer_norm.bias"),
           "text_projection": sd.pop("text_projection.weight").t().contiguous()}
    names = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc",
             "mlp.fc2": "mlp.c_proj", "self_attn.out_proj": "attn.out_proj"}
    i = 0
    while f"text_model.encoder.layers.{i}.layer_norm1.weight" in sd:
        src, dst = f"text_model.encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for a, b in names.items():
            for t in ("weight", "bias"):
                out[f"{dst}{b}.{t}"] = sd.pop(f"{src}{a}.{t}")
        for t in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{t}"] = torch.cat([sd.pop(f"{src}self_attn.{p}_proj.{t}") for p in "qkv"])
        i += 1
    if sd:
        raise RuntimeError(f"unconverted text encoder keys: {sorted(sd)[:5]}")
    return out


def _text_encoder_state_dict(te: TextEncoderSpec, seed: int) -> dict:
    import comfy.clip_model
    import comfy.ops

    with open(Path(comfy.clip_model.__file__).parent / te.config) as f:
        config = json.load(f)
    model = comfy.clip_model.CLIPTextModel(config, None, "cpu", comfy.ops.disable_weight_init)
    sd = seeded_init(model, seed).state_dict()
    if te.layout == "openclip":
        sd = _to_openclip(sd)
    else:  # real SD1.x / SDXL checkpoints carry no projection for CLIP-L (ComfyUI ignores it)
        sd.pop("text_projection.weight")
    return {te.prefix + k: v for k, v in sd.items()}


def _vae_state_dict(spec: ArchSpec, seed: int) -> dict:
    import comfy.taesd.taesd

    taesd = seeded_init(comfy.taesd.taesd.TAESD(latent_channels=4), seed, keep=("vae_scale", "vae_shift"))
    return {spec.vae_prefix + k: v for k, v in taesd.state_dict().items()}


def build_state_dict(kind: str, seed: int = 0) -> dict:
    """All tensors of a tiny ``kind`` checkpoint (fp16, contiguous, finite), keyed as on disk."""
    import torch

    spec = SPECS[kind]
    sd = _unet_state_dict(spec, seed * 16)
    for i, te in enumerate(spec.text_encoders):
        sd.update(_text_encoder_state_dict(te, seed * 16 + 1 + i))
    sd.update(_vae_state_dict(spec, seed * 16 + 15))
    sd = {k: v.detach().to(torch.float16).contiguous() for k, v in sd.items()}
    check_finite(sd, kind)
    return sd


def detected_config_class(sd: dict) -> str | None:
    """Name of the comfy.supported_models class ComfyUI's detection picks for a checkpoint dict."""
    import comfy.model_detection

    config = comfy.model_detection.model_config_from_unet(sd, UNET_PREFIX)
    return None if config is None else type(config).__name__


def build(kind: str, path, seed: int = 0) -> Path:
    """Build a tiny ``kind`` checkpoint and write it to ``path`` (.safetensors)."""
    import safetensors.torch

    t0 = time.perf_counter()
    sd = build_state_dict(kind, seed)
    found = detected_config_class(sd)
    if found != SPECS[kind].config_class:
        raise RuntimeError(f"{kind}: ComfyUI detects {found}, expected {SPECS[kind].config_class}")
    # One metadata entry: safetensors writes several in random (hash map) order, and the file
    # must be byte-identical for the same seed.
    meta = {"shapefirst": json.dumps({"kind": kind, "seed": seed, "build_version": _version(kind)})}
    safetensors.torch.save_file(sd, str(path), metadata=meta)
    n = sum(v.numel() for v in sd.values())
    log.info("built %s seed %d: %.1f M parameters in %.1f s -> %s", kind, seed, n / 1e6,
             time.perf_counter() - t0, path)
    return Path(path)


def _version(kind: str) -> int | str:
    """BUILD_VERSION, with the kind's revision after a dot when it has one."""
    revision = SPECS[kind].revision
    return f"{BUILD_VERSION}.{revision}" if revision else BUILD_VERSION


def checkpoint_name(kind: str, seed: int = 0) -> str:
    return f"shapefirst-tiny-{kind}-s{seed}-v{_version(kind)}.safetensors"


def ensure_checkpoint(kind: str, models_dir, seed: int = 0) -> Path:
    """Path of the cached tiny ``kind`` checkpoint in ``models_dir``, built first if missing."""
    if kind not in SPECS:
        raise ValueError(f"unknown kind {kind!r}; known: {sorted(SPECS)}")
    return _ensure_file(Path(models_dir) / checkpoint_name(kind, seed), lambda tmp: build(kind, tmp, seed))


def _ensure_file(path: Path, builder) -> Path:
    """``path``, built by ``builder(tmp)`` first if missing.

    The file is written under a temporary name and renamed into place atomically, so concurrent
    callers never see a partial file."""
    if path.exists():
        return path
    from .boot import importable

    importable()  # a first run builds before any harness boots ComfyUI
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        builder(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


# ---------------------------------------------------------------- ControlNet
def controlnet_name(kind: str, seed: int = 0) -> str:
    return f"shapefirst-tiny-{kind}-controlnet-s{seed}-v{_version(kind)}.safetensors"


def build_controlnet(kind: str, path, seed: int = 0) -> Path:
    """A random-weight ControlNet (ComfyUI's ``comfy.cldm.cldm.ControlNet``, RGB hint) matching the
    tiny ``kind`` UNet, in the layout ``ControlNetLoader`` detects (``zero_convs.*`` keys).

    The zero convolutions get torch's default init, not zeros, so the control visibly changes
    the result (a trained ControlNet's residuals are not zero either)."""
    import safetensors.torch
    import torch

    import comfy.cldm.cldm
    import comfy.ops
    import comfy.supported_models

    spec = SPECS[kind]
    config = dict(getattr(comfy.supported_models, spec.config_class)(spec.unet).unet_config)
    config.pop("out_channels")
    net = comfy.cldm.cldm.ControlNet(**config, hint_channels=3, device="cpu",
                                     operations=comfy.ops.disable_weight_init)
    sd = {k: v.detach().to(torch.float16).contiguous()
          for k, v in seeded_init(net, seed * 16 + 14).state_dict().items()}
    check_finite(sd, f"{kind} controlnet")
    meta = {"shapefirst": json.dumps({"kind": f"{kind}-controlnet", "seed": seed, "build_version": _version(kind)})}
    safetensors.torch.save_file(sd, str(path), metadata=meta)
    return Path(path)


def ensure_controlnet(kind: str, models_dir, seed: int = 0) -> Path:
    """Path of the cached random ControlNet for the tiny ``kind`` UNet in ``models_dir``."""
    if kind not in SPECS:
        raise ValueError(f"unknown kind {kind!r}; known: {sorted(SPECS)}")
    return _ensure_file(Path(models_dir) / controlnet_name(kind, seed),
                        lambda tmp: build_controlnet(kind, tmp, seed))
