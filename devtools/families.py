"""Seeded random-weight tiny models of the CFG model families ComfyUI 0.3.75 ships, for CPU tests.

No pretrained weights can be downloaded here, so every model is ComfyUI's own class at a reduced
size, with every tensor initialised explicitly under a fixed seed (ComfyUI's layers skip init)
and checked finite. Files are built once and cached under the runtime's models folder.

How each part reaches ComfyUI:

* **Diffusion model** - a standalone diffusion-model file (``models/diffusion_models``) that core
  ``UNETLoader`` (``comfy.sd.load_diffusion_model``) detects from tensor shapes alone. Only what
  the detector reads from shapes is reduced; the builder checks that detection picks the
  expected ``comfy.supported_models`` class.
* **VAE** - a file in ``models/vae`` that core ``VAELoader`` detects: a 16-channel TAESD for SD3
  (``taesd_*`` keys, with SD3's scale and shift), the real Wan 2.1 VAE at ``dim`` 16 (the
  detector reads ``dim`` from ``decoder.head.0.gamma``; Wan 2.2's A14B experts use this VAE too).
* **Text encoders** - ComfyUI's text-encoder loaders accept no reduced config: ``CLIPLoader``
  builds T5-XXL / UMT5-XXL / CLIP / Qwen / Gemma from fixed json configs (4.7 B parameters for
  T5-XXL, 5.7 B for UMT5-XXL). :func:`build_text_encoder` therefore builds ComfyUI's own text
  encoder class for the family (``comfy.sd.CLIP`` with the family's real tokenizer and encoder
  classes) through the ``<name>_model_config`` option the classes read, at one layer:
  SD3 uses its T5-XXL branch (``sd3_clip(t5=True)``, what ``CLIPLoader`` type ``sd3`` builds from
  a T5 file) at width 64 (MMDiT reads its context width from ``context_embedder``); Wan uses
  UMT5 at the real width 4096 (``WanModel``'s text width is not detected, it is fixed at 4096).
  UMT5's sentencepiece model ships inside users' text-encoder files, not with ComfyUI, so the
  Wan tokenizer runs on the sentencepiece model ComfyUI does ship (AuraFlow's, 32000 pieces)
  and the UMT5 vocabulary is that size. Qwen-Image's encoder is a stand-in (below).

Families whose width detection fixes (``FULL_WIDTH``): only the depth is reduced, to the fewest
blocks detection accepts, and the file is fp16 (ComfyUI runs it in fp32 on the CPU). Measured on
the 2-core, 24 GB development machine shared with other jobs, one torch thread, a 64 px image
(16 image tokens); one evaluation = one diffusion-model call:

==========  ==========================================  ======  ======  =====  ===============  ========
family      built                                       params  file    load   per evaluation   peak RAM
==========  ==========================================  ======  ======  =====  ===============  ========
Flux dev    3072 wide, 1 double block, 0 single blocks, 389 M   779 MB  5 s    2.7 s (batch 2)  2.6 GB
            guidance_in kept (detected as ``Flux``)
Lumina 2    2304 wide, 1 layer + the 2 noise and 2      422 M   844 MB  8 s    2.8 s (batch 1)  2.8 GB
            context refiners detection always builds
Qwen-Image  3072 wide, 1 block, 3584-wide context       380 M   761 MB  1-2 s  0.4-0.9 s        2.6 GB
            (detected as ``QwenImage``)                                        (batch 1)
==========  ==========================================  ======  ======  =====  ===============  ========

Building takes about 30 s of seeded initialisation (torch's CPU random generator over 400 M
values) plus saving; one to three minutes in all when the machine is busy. Peak RAM is one process
loading (the fp16 file and the fp32 model) and sampling; the test process of one family peaks at
4.0 GB (Flux), 4.2 GB (Lumina 2) and 5.8 GB (Qwen-Image). The text encoders stay tiny because the
diffusion model reads their width from shapes: Flux's T5 (``txt_in``, width 64) and CLIP-L
(``vector_in``, width 64), one layer each, T5 padding reduced from 256 to ``FLUX_TEXT_TOKENS`` = 8
tokens through the tokenizer's ``t5xxl_min_length`` option (the only change to what a user's graph
computes, to keep an evaluation near a second per row); Lumina 2's Gemma 2 (``cap_embedder``, width
64) with three layers, as ComfyUI reads its second-to-last hidden state and requires it inside the
model, on AuraFlow's sentencepiece model like UMT5.

Qwen-Image (load time with the file in the page cache; an evaluation with 10 context tokens; it
builds in about 25 s) decodes with the Wan 2.1 VAE above (its latent format is Wan 2.1's). Its
text encoder is **replaced**: the diffusion model reads a 3584-wide context (fixed by the class,
not detected), and ComfyUI's Qwen2.5-VL class always builds the 152064 x 3584 token table (545 M)
and the 32-layer vision tower (about 670 M, width fixed): 1.2 B parameters, 2.4 GB in fp16 before
the diffusion model. ``build_text_encoder("qwen_image")`` is therefore core's ``QwenImageTokenizer``
(the real tokenizer and chat template) feeding a seeded stand-in (``qwen_stand_in.qwen_image_stand_in_encoder``):
one 3584-wide row of a seeded table per token, with the template's system part dropped as core
drops it, no pooled output and no attention mask (core drops an all-ones mask). It is not a
language model: it fixes the context's width and length, not its meaning; prompts of different
token counts give contexts of different lengths, as with the real encoder.

Families not built, with the reason measured or computed on this machine:

* **Chroma**: the 3072-wide double block is buildable, but the fixed modulation approximator
  (5 layers, 5120 wide, about 270 M parameters) runs on 344 modulation rows per image: its
  matrix products alone take 13 s per image row here (> 5 s per evaluation).
* **Z-Image**: width 3840 (30 heads), one layer plus four refiners of about 180 M parameters each:
  0.9 B parameters, 1.8 GB in fp16, 3.6 GB in fp32 in RAM.

Usage: the ComfyUI folder must be importable with ``comfy.cli_args.args.cpu = True`` set before
``comfy.model_management`` is imported (the test harness does both); then
``ensure_diffusion_model("sd3", models_dir)``, ``ensure_vae("taesd3", models_dir)``,
``build_text_encoder("sd3")``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from .checkpoints import _ensure_file  # written aside, renamed into place
from .hosts import host_unet

log = logging.getLogger(__name__)

# Bump whenever the produced tensors change: it is part of the cached file names.
BUILD_VERSION = 1
SD3_TEXT_WIDTH = 64  # T5 width of the tiny SD3 text encoder = MMDiT's detected context width
FLUX_TEXT_WIDTH = 64  # T5 width of the Flux/Chroma text encoders = the detected txt_in width
FLUX_POOLED_WIDTH = 64  # CLIP-L width of the Flux text encoder = the detected vector_in width
LUMINA2_TEXT_WIDTH = 64  # Gemma 2 width of the Lumina 2 text encoder = the detected cap_embedder width
QWEN_IMAGE_TEXT_WIDTH = 3584  # Qwen-Image's context width: fixed by its class (joint_attention_dim), not detected
QWEN_IMAGE_STAND_IN_ROWS = 2048  # rows of the stand-in text encoder's seeded table (token id modulo this)
FLUX_TEXT_TOKENS = 8  # T5 pads Flux/Chroma prompts to this many tokens (ComfyUI: 256, see module doc)


@dataclass(frozen=True)
class Family:
    config_class: str  # comfy.supported_models class that detection must pick
    unet: dict  # the diffusion model's config, as comfy.model_detection reports it
    seed: int
    vae: str  # key of VAES
    text_encoder: str  # key for build_text_encoder
    dtype: str = "float32"  # dtype of the saved tensors (full-width families: float16)


def _sd3_unet(depth=2):
    hidden = 64 * depth  # MMDiT: hidden size = 64 * depth, one head per 64 channels
    return {"in_channels": 16, "patch_size": 2, "out_channels": 16, "depth": depth, "input_size": None,
            "adm_in_channels": 2048,  # pooled CLIP-L + CLIP-G width (zeros without those encoders)
            "context_embedder_config": {"target": "torch.nn.Linear",
                                        "params": {"in_features": SD3_TEXT_WIDTH, "out_features": hidden}},
            "num_patches": 256, "pos_embed_max_size": 16, "qk_norm": "rms",  # SD3.5's RMS q/k norm
            "pos_embed_scaling_factor": None, "x_block_self_attn_layers": []}


def _wan_unet(dim=128, layers=2):
    # num_heads = dim // 128 is what the detector assumes: dim 128 = one 128-wide head
    return {"image_model": "wan2.1", "dim": dim, "out_dim": 16, "num_heads": dim // 128, "ffn_dim": 2 * dim,
            "num_layers": layers, "patch_size": (1, 2, 2), "freq_dim": 256, "window_size": (-1, -1),
            "qk_norm": True, "cross_attn_norm": True, "eps": 1e-6, "in_dim": 16, "model_type": "t2v"}


def _flux_unet(guidance=True):
    # what detection reports for a Flux file with 1 double block and no single block; the width
    # (3072 = 24 heads x 128 rotary channels) is fixed, the text and pooled widths are read from shapes
    return {"image_model": "flux", "axes_dim": [16, 56, 56], "num_heads": 24, "mlp_ratio": 4.0, "theta": 10000,
            "out_channels": 16, "qkv_bias": True, "in_channels": 16, "hidden_size": 3072,
            "context_in_dim": FLUX_TEXT_WIDTH, "patch_size": 2, "vec_in_dim": FLUX_POOLED_WIDTH,
            "depth": 1, "depth_single_blocks": 0, "guidance_embed": guidance}


def _lumina2_unet():
    # what detection reports for a Lumina 2 file with one layer: width 2304 with 24 heads (8 key/value
    # heads) is what fits the rotary axes; 2 noise-refiner and 2 context-refiner layers always follow
    return {"image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 2304,
            "cap_feat_dim": LUMINA2_TEXT_WIDTH, "n_layers": 1, "qk_norm": True, "n_heads": 24, "n_kv_heads": 8,
            "axes_dims": [32, 32, 32], "axes_lens": [300, 512, 512], "rope_theta": 10000.0,
            "ffn_dim_multiplier": 4.0}


def _qwen_image_unet():
    # what detection reports for a Qwen-Image file with one block: only the input width (16 latent channels
    # x 2 x 2 patch = 64) and the block count are read; 3072 wide (24 heads of 128) and the 3584-wide
    # context are the class's fixed defaults
    return {"image_model": "qwen_image", "in_channels": 64, "num_layers": 1}


FAMILIES: dict[str, Family] = {
    "sd3": Family("SD3", _sd3_unet(), 301, "taesd3", "sd3"),
    "wan21_t2v": Family("WAN21_T2V", _wan_unet(), 302, "wan21", "wan"),
    # Wan 2.2 A14B: two Wan-2.1-architecture experts (same detection), different weights
    "wan22_high_noise": Family("WAN21_T2V", _wan_unet(), 303, "wan21", "wan"),
    "wan22_low_noise": Family("WAN21_T2V", _wan_unet(), 304, "wan21", "wan"),
    # Flux dev (guidance embed kept: detection picks Flux, not FluxSchnell)
    "flux": Family("Flux", _flux_unet(), 305, "taesd3", "flux", "float16"),
    "lumina2": Family("Lumina2", _lumina2_unet(), 306, "taesd3", "lumina2", "float16"),
    # Qwen-Image decodes with the Wan 2.1 VAE (its latent format is Wan21's)
    "qwen_image": Family("QwenImage", _qwen_image_unet(), 307, "wan21", "qwen_image", "float16"),
}
VAES = {"taesd3": 311, "wan21": 312}  # name -> seed
# families at the real width (only their depth is reduced): hundreds of MB each, built on demand
FULL_WIDTH = tuple(name for name, spec in FAMILIES.items() if spec.dtype != "float32")


# ---------------------------------------------------------------- initialisation
def _torch_reset(cls):
    """torch.nn's own reset_parameters for a (ComfyUI subclass of a) torch layer, else None."""
    for c in cls.__mro__:
        if c.__module__.startswith("torch.nn.") and "reset_parameters" in vars(c):
            return vars(c)["reset_parameters"]
    return None


def seeded_init(module, seed: int):
    """Give every parameter and floating buffer of ``module`` a value under ``seed``.

    torch layers get torch's default init; other 1-D ``weight``/``gamma``/``scale`` tensors (norm
    gains) are ones, 1-D ``bias`` zeros, everything else (modulation tables, position tables,
    learned tokens) normal with std ``1 / sqrt(last dim)``. Buffers keep their values (a buffer that
    a constructor leaves empty must be set by the caller: the finiteness check catches it). The
    global RNG state is restored."""
    import torch

    covered = set()
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for m in module.modules():
            reset = _torch_reset(type(m))
            if reset is not None:
                reset(m)
                covered.update(id(p) for p in m.parameters(recurse=False))
        for name, p in module.named_parameters():
            if id(p) in covered:
                continue
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("weight", "gamma", "scale") and p.squeeze().ndim <= 1 and p.numel() > 1:
                p.fill_(1.0)
            elif leaf == "bias":
                p.zero_()
            else:
                p.normal_(0.0, p.shape[-1] ** -0.5 if p.ndim else 1.0)
    check_finite(module.state_dict(), type(module).__name__)
    return module


def check_finite(sd: dict, what: str):
    import torch

    bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise RuntimeError(f"{what}: non-finite tensors {bad[:5]}")


# ---------------------------------------------------------------- diffusion models
def diffusion_state_dict(family: str) -> dict:
    """The tiny diffusion model's tensors (float32, contiguous, finite), keyed as a standalone file."""
    import torch

    import comfy.supported_models

    spec = FAMILIES[family]
    dtype = getattr(torch, spec.dtype)
    config = getattr(comfy.supported_models, spec.config_class)(host_unet(spec.unet))
    config.set_inference_dtype(dtype, None)  # built in the file's dtype: no second copy at full width
    model = config.get_model({}, device="cpu")
    net = model.diffusion_model
    if getattr(net, "pos_embed", None) is not None:  # MMDiT: a buffer ComfyUI creates empty; SD3's is sin-cos
        from comfy.ldm.modules.diffusionmodules.mmdit import get_2d_sincos_pos_embed

        size = spec.unet["pos_embed_max_size"]
        table = get_2d_sincos_pos_embed(net.pos_embed.shape[-1], size)
        net.pos_embed.copy_(torch.from_numpy(table).reshape(net.pos_embed.shape))
    seeded_init(net, spec.seed)
    sd = {k: v.detach().to(dtype).contiguous() for k, v in net.state_dict().items()}
    check_finite(sd, family)
    return sd


def detected_config_class(sd: dict) -> str | None:
    """Name of the comfy.supported_models class ComfyUI's detection picks for a diffusion-model file."""
    import comfy.model_detection

    config = comfy.model_detection.model_config_from_unet(sd, "")
    return None if config is None else type(config).__name__


def build_diffusion_model(family: str, path) -> Path:
    sd = diffusion_state_dict(family)
    found = detected_config_class(sd)
    if found != FAMILIES[family].config_class:
        raise RuntimeError(f"{family}: ComfyUI detects {found}, expected {FAMILIES[family].config_class}")
    _save(sd, path, {"kind": family, "seed": FAMILIES[family].seed})
    log.info("built %s: %.2f M parameters -> %s", family, sum(v.numel() for v in sd.values()) / 1e6, path)
    return Path(path)


def diffusion_model_name(family: str) -> str:
    return f"shapefirst-tiny-{family}-v{BUILD_VERSION}.safetensors"


def ensure_diffusion_model(family: str, models_dir) -> Path:
    """Path of the cached tiny ``family`` model in ``models_dir/diffusion_models``, built if missing."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {sorted(FAMILIES)}")
    path = Path(models_dir) / "diffusion_models" / diffusion_model_name(family)
    return _ensure_file(path, lambda tmp: build_diffusion_model(family, tmp))


# ---------------------------------------------------------------- VAEs
def vae_state_dict(name: str) -> dict:
    import torch

    seed = VAES[name]
    if name == "taesd3":
        import comfy.taesd.taesd

        vae = seeded_init(comfy.taesd.taesd.TAESD(latent_channels=16), seed)
        with torch.no_grad():  # the values ComfyUI's VAELoader gives SD3's TAESD
            vae.vae_scale.fill_(1.5305)
            vae.vae_shift.fill_(0.0609)
    elif name == "wan21":
        import comfy.ldm.wan.vae

        vae = seeded_init(comfy.ldm.wan.vae.WanVAE(dim=16, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                                                   attn_scales=[], temperal_downsample=[False, True, True],
                                                   dropout=0.0), seed)
    else:
        raise ValueError(f"unknown VAE {name!r}; known: {sorted(VAES)}")
    sd = {k: v.detach().to(torch.float32).contiguous() for k, v in vae.state_dict().items()}
    check_finite(sd, name)
    return sd


def vae_name(name: str) -> str:
    return f"shapefirst-tiny-vae-{name}-v{BUILD_VERSION}.safetensors"


def ensure_vae(name: str, models_dir) -> Path:
    """Path of the cached tiny VAE ``name`` in ``models_dir/vae``, built if missing."""
    if name not in VAES:
        raise ValueError(f"unknown VAE {name!r}; known: {sorted(VAES)}")
    path = Path(models_dir) / "vae" / vae_name(name)
    return _ensure_file(path, lambda tmp: _save(vae_state_dict(name), tmp, {"kind": f"vae-{name}",
                                                                           "seed": VAES[name]}))


# ---------------------------------------------------------------- text encoders
def build_text_encoder(kind: str, seed: int = 321):
    """ComfyUI's own text encoder of a family (``comfy.sd.CLIP``), one layer, seeded (see module doc)."""
    tokenizer_data = {}
    if kind == "sd3":
        import comfy.text_encoders.sd3_clip as sd3

        classes = sd3.sd3_clip(clip_l=False, clip_g=False, t5=True), sd3.SD3Tokenizer
        options = {"t5xxl_model_config": {"d_model": SD3_TEXT_WIDTH, "num_layers": 1, "d_ff": 128,
                                          "num_heads": 2, "d_kv": 32}}
    elif kind == "wan":
        import comfy.text_encoders.wan as wan

        spiece = Path(wan.__file__).parent / "t5_pile_tokenizer" / "tokenizer.model"
        tokenizer_data["spiece_model"] = spiece.read_bytes()
        classes = wan.te(), wan.WanT5Tokenizer
        options = {"umt5xxl_model_config": {"num_layers": 1, "d_ff": 64, "num_heads": 2, "d_kv": 16,
                                            "vocab_size": 32000}}
    elif kind == "flux":
        import comfy.text_encoders.flux as flux

        classes = flux.flux_clip(), flux.FluxTokenizer
        tokenizer_data["t5xxl_min_length"] = FLUX_TEXT_TOKENS
        options = {"t5xxl_model_config": {"d_model": FLUX_TEXT_WIDTH, "num_layers": 1, "d_ff": 128,
                                          "num_heads": 2, "d_kv": 32},
                   "clip_l_model_config": {"hidden_size": FLUX_POOLED_WIDTH, "intermediate_size": 128,
                                           "num_attention_heads": 2, "num_hidden_layers": 1,
                                           "projection_dim": FLUX_POOLED_WIDTH}}
    elif kind == "lumina2":
        import comfy.text_encoders.lumina2 as lumina2
        import comfy.text_encoders.wan as wan

        # Gemma's sentencepiece model ships inside users' text-encoder files: AuraFlow's stands in
        spiece = Path(wan.__file__).parent / "t5_pile_tokenizer" / "tokenizer.model"
        tokenizer_data["spiece_model"] = spiece.read_bytes()
        classes = lumina2.te(), lumina2.LuminaTokenizer
        # three layers: Lumina 2 reads the second-to-last hidden state, which ComfyUI requires to be inside
        options = {"gemma2_2b_model_config": {"hidden_size": LUMINA2_TEXT_WIDTH, "intermediate_size": 128,
                                              "num_hidden_layers": 3, "num_attention_heads": 2,
                                              "num_key_value_heads": 1, "vocab_size": 32000}}
    elif kind == "qwen_image":
        import comfy.text_encoders.qwen_image as qwen_image

        # ComfyUI's Qwen2.5-VL encoder cannot be built small (module doc): core's Qwen-Image tokenizer
        # (the real one, with its chat template) feeds a seeded stand-in of the encoder
        from .qwen_stand_in import qwen_image_stand_in_encoder

        classes = qwen_image_stand_in_encoder(), qwen_image.QwenImageTokenizer
        options = {}
    else:
        raise ValueError(f"unknown text encoder {kind!r}; known: sd3, wan, flux, lumina2, qwen_image")
    return seeded_clip(*classes, options, tokenizer_data, seed)


def seeded_clip(clip_class, tokenizer_class, model_options: dict, tokenizer_data: dict | None = None, seed: int = 321):
    """``comfy.sd.CLIP`` of ComfyUI's text-encoder and tokenizer classes (sizes through ``model_options``,
    e.g. ``t5xxl_model_config``), float32, every weight seeded by :func:`seeded_init`."""
    import torch

    import comfy.sd

    class Target:
        clip = clip_class
        tokenizer = tokenizer_class
        params: dict = {}

    clip = comfy.sd.CLIP(target=Target, tokenizer_data=dict(tokenizer_data or {}),
                         model_options={**model_options, "dtype": torch.float32})
    seeded_init(clip.cond_stage_model, seed)
    return clip


# ---------------------------------------------------------------- files
def _save(sd: dict, path, meta: dict):
    import safetensors.torch

    # one metadata entry: safetensors writes several in hash-map order, and the file must be
    # byte-identical for the same seed
    meta = {"shapefirst": json.dumps({**meta, "build_version": BUILD_VERSION}, sort_keys=True)}
    safetensors.torch.save_file(sd, str(path), metadata=meta)
