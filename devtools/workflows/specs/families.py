"""Everyday use of the model patch, and the other model families: SD3.5, Wan 2.1 and Qwen-Image with
truncated guidance, the [EOS] swap on SD3.

File names are the ones the families' official releases use, so users who have them can run the
workflows as shipped; the loaders are the ones core ComfyUI's examples use for each family.
"""

from __future__ import annotations

from ..builder import WorkflowBuilder
from .common import BIRD, CHAIR, DOG_PROMPT, _txt2img_base, side_by_side

SD35_CKPT = "sd3.5_large.safetensors"
SD3_TEXT_ENCODERS = ("clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors")
SD3_SHIFT = 3.0
WAN_UNET = "wan2.1_t2v_1.3B_fp16.safetensors"
WAN_TEXT_ENCODER = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
WAN_VAE = "wan_2.1_vae.safetensors"
WAN_SHIFT = 8.0
QWEN_IMAGE_UNET = "qwen_image_fp8_e4m3fn.safetensors"
QWEN_IMAGE_TEXT_ENCODER = "qwen_2.5_vl_7b_fp8_scaled.safetensors"
QWEN_IMAGE_VAE = "qwen_image_vae.safetensors"
QWEN_IMAGE_SHIFT = 3.1  # core's Qwen-Image example: ModelSamplingAuraFlow shift 3.1
WAN_PROMPT = "A red fox trotting through fresh snow in a pine forest, morning light, the camera follows it."
# the steps window's default: the first 40% of the steps guided (the paper's a = 30 of 50 / 15 of 25)
STEPS_WINDOW = {"guidance_start": 0.0, "guidance_end": 0.4, "tail": "uncond", "window": "fixed",
                "adaptive_threshold": 0.1, "window_units": "steps", "sigma_low": 2.4, "sigma_high": 1000.0,
                "text_cache": "off"}
# SD3 with shift 3: sigma 0.8 is about where the first 40% of the steps end (sigma = 3t / (1 + 2t) at t = 0.6)
SD3_SIGMA_WINDOW = {**STEPS_WINDOW, "window_units": "sigma", "sigma_low": 0.8, "sigma_high": 1.0}
RANDOM_WEIGHTS = ("Tested with random-weight models of the real architectures (the images are noise there); with "
                  "real weights look for")


def _patch(b: WorkflowBuilder, model, column: int, row: float, title: str, window: dict):
    # the size its guidance report opens to after a run (js/shapefirst.js), reserved
    return b.add("TruncatedCFGModel", title, column, row, size=(440, 800), model=model, **window)


def _decode_save(b: WorkflowBuilder, samples, vae, column: int, prefix: str):
    image = b.add("VAEDecode", None, column, 0, size=(220, 60), samples=samples, vae=vae)
    b.add("SaveImage", None, column, 0.5, images=image.out(0), filename_prefix=prefix)


def everyday_truncated_cfg_model_patch(info: dict) -> dict:
    b = WorkflowBuilder(info)
    ckpt, pos, neg, latent = _txt2img_base(b, DOG_PROMPT)
    patched = _patch(b, ckpt.out(0), 2, 0, "Truncated CFG (model patch): guidance in the first 40% of steps",
                     STEPS_WINDOW)
    sampled = b.add("KSampler", "KSampler (core), fed the patched model", 3, 0, model=patched.out(0), seed=42,
                    steps=25, cfg=7.5, sampler_name="dpmpp_2m", scheduler="karras", positive=pos.out(0),
                    negative=neg.out(0), latent_image=latent.out(0), denoise=1.0)
    _decode_save(b, sampled.out(0), ckpt.out(2), 4, "shapefirst/everyday_truncated_cfg")
    b.note(
        "ShapeFirst - everyday truncated guidance as a MODEL patch (Yi et al., NeurIPS 2024, eq. 9): put Truncated "
        "CFG (model patch) between your loader and any sampler node. Guidance runs in the first 40% of the steps; "
        "the rest skip the text-conditional pass. The sampler's cfg is the guidance scale. The node reports the "
        "passes skipped. " + RANDOM_WEIGHTS + " about 25% less sampling time at the default window and nearly "
        "the same image as without the patch (guidance_end = 1 gives exactly core KSampler). Keep the negative "
        "prompt empty for the paper's behaviour, or set tail to 'cond'.", 0, 1)
    return b.to_ui()


def _sd3_base(b: WorkflowBuilder, prompt, rows: tuple[float, float] = (0, 1)):
    """SD3.5 as core's example loads it: the checkpoint (model + VAE), the three text encoders,
    ModelSamplingSD3; an empty negative prompt and an SD3 latent."""
    ckpt = b.add("CheckpointLoaderSimple", "Load Checkpoint (SD3.5)", 0, rows[0], ckpt_name=SD35_CKPT)
    clip = b.add("TripleCLIPLoader", "Text encoders (clip_l, clip_g, t5xxl)", 0, rows[1], size=(320, 130),
                 clip_name1=SD3_TEXT_ENCODERS[0], clip_name2=SD3_TEXT_ENCODERS[1], clip_name3=SD3_TEXT_ENCODERS[2])
    sampling = b.add("ModelSamplingSD3", None, 1, 0, size=(320, 60), model=ckpt.out(0), shift=SD3_SHIFT)
    neg = b.add("CLIPTextEncode", "Empty negative prompt (the paper's uncond)", 1, 1.5, size=(320, 120), text="",
                clip=clip.out(0))
    latent = b.add("EmptySD3LatentImage", None, 1, 2, size=(320, 130), width=1024, height=1024, batch_size=1)
    pos = b.add("CLIPTextEncode", "Prompt", 1, 0.5, size=(320, 120), text=prompt, clip=clip.out(0)) if prompt else None
    return ckpt, clip, sampling, pos, neg, latent


def sd35_truncated_cfg(info: dict) -> dict:
    b = WorkflowBuilder(info)
    ckpt, _, sampling, pos, neg, latent = _sd3_base(b, DOG_PROMPT)
    patched = _patch(b, sampling.out(0), 2, 0, "Truncated CFG (model patch): guided while sigma >= 0.8",
                     SD3_SIGMA_WINDOW)
    sampled = b.add("KSampler", "KSampler (core): SD3.5 settings", 3, 0, model=patched.out(0), seed=42, steps=28,
                    cfg=4.5, sampler_name="euler", scheduler="sgm_uniform", positive=pos.out(0), negative=neg.out(0),
                    latent_image=latent.out(0), denoise=1.0)
    _decode_save(b, sampled.out(0), ckpt.out(2), 4, "shapefirst/sd35_truncated_cfg")
    b.note(
        "ShapeFirst - truncated guidance on SD3.5 (MMDiT, a flow model: sigmas run from 1 to 0). The window is in "
        "noise levels (window_units 'sigma'): guidance while sigma is between 0.8 and 1, which with shift 3 is "
        "about the first 40% of the steps for any step count; below it only the empty-prompt pass runs (eq. 9). Put "
        "sd3.5_large (or medium) in checkpoints and clip_l, clip_g, t5xxl in text_encoders. " + RANDOM_WEIGHTS
        + " the same composition as plain CFG with 30% fewer diffusion-model passes (the node reports them; the time "
        "saved is somewhat less, as one pass of a batch costs more than half of two). sigma_low = 0 gives plain "
        "CFG.", 0, 2.6)
    return b.to_ui()


def _wan_base(b: WorkflowBuilder, prompt):
    """Wan 2.1 T2V as core's example loads it (UNETLoader, CLIPLoader type wan, VAELoader,
    ModelSamplingSD3 shift 8), the prompt (text or a link), an empty negative and an 832 x 480 x 33
    video latent: (VAE, ModelSamplingSD3, positive, negative, latent)."""
    unet = b.add("UNETLoader", "Load Diffusion Model (Wan 2.1 T2V)", 0, 0, size=(320, 100), unet_name=WAN_UNET,
                 weight_dtype="default")
    clip = b.add("CLIPLoader", "Load CLIP (umT5, type wan)", 0, 0.5, size=(320, 110), clip_name=WAN_TEXT_ENCODER,
                 type="wan", device="default")
    vae = b.add("VAELoader", "Load VAE (Wan 2.1)", 0, 1, size=(320, 60), vae_name=WAN_VAE)
    sampling = b.add("ModelSamplingSD3", "ModelSamplingSD3 (Wan: shift 8)", 1, 0, size=(320, 60), model=unet.out(0),
                     shift=WAN_SHIFT)
    pos = b.add("CLIPTextEncode", "Prompt", 1, 0.5, size=(320, 120), text=prompt, clip=clip.out(0))
    neg = b.add("CLIPTextEncode", "Empty negative prompt (the paper's uncond)", 1, 1, size=(320, 120), text="",
                clip=clip.out(0))
    latent = b.add("EmptyHunyuanLatentVideo", "Empty video latent (832 x 480, 33 frames)", 1, 1.5, size=(320, 150),
                   width=832, height=480, length=33, batch_size=1)
    return clip, vae, sampling, pos, neg, latent


def wan21_t2v_truncated_cfg(info: dict) -> dict:
    b = WorkflowBuilder(info)
    _, vae, sampling, pos, neg, latent = _wan_base(b, WAN_PROMPT)
    patched = _patch(b, sampling.out(0), 2, 0, "Truncated CFG (model patch): guidance in the first 40% of steps",
                     STEPS_WINDOW)
    sampled = b.add("KSampler", "KSampler (core): Wan 2.1 settings", 3, 0, model=patched.out(0), seed=42, steps=30,
                    cfg=6.0, sampler_name="uni_pc", scheduler="simple", positive=pos.out(0), negative=neg.out(0),
                    latent_image=latent.out(0), denoise=1.0)
    frames = b.add("VAEDecode", None, 4, 0, size=(220, 60), samples=sampled.out(0), vae=vae.out(0))
    b.add("SaveAnimatedWEBP", "Save video (animated WEBP)", 4, 0.5, size=(420, 340), images=frames.out(0),
          filename_prefix="shapefirst/wan21_t2v_truncated_cfg", fps=16.0, lossless=False, quality=90,
          method="default")
    b.note(
        "ShapeFirst - truncated guidance on Wan 2.1 text-to-video: guidance in the first 40% of the steps, the rest "
        "skip the text-conditional pass (eq. 9); the overall shape is set in the early steps. Core's negative "
        "prompt is left out: with a non-empty negative, set tail to 'cond'. Files: diffusion_models, "
        "text_encoders, vae. " + RANDOM_WEIGHTS + " nearly the same video as plain CFG (guidance_end = 1) with "
        "30% fewer diffusion-model passes (the node reports them; the time saved is somewhat less).", 0, 2.2)
    return b.to_ui()


def qwen_image_loaders(b: WorkflowBuilder, col, row):
    """Core's Qwen-Image loaders (its release's files) and its ModelSamplingAuraFlow at (col, row):
    (the model with its shift, the CLIP, the VAE)."""
    unet = b.add("UNETLoader", "Load Diffusion Model (Qwen-Image)", 0, 0, size=(320, 100), unet_name=QWEN_IMAGE_UNET,
                 weight_dtype="default")
    clip = b.add("CLIPLoader", "Load CLIP (Qwen2.5-VL, type qwen_image)", 0, 0.5, size=(320, 110),
                 clip_name=QWEN_IMAGE_TEXT_ENCODER, type="qwen_image", device="default")
    vae = b.add("VAELoader", "Load VAE (Qwen-Image)", 0, 1, size=(320, 60), vae_name=QWEN_IMAGE_VAE)
    sampling = b.add("ModelSamplingAuraFlow", "ModelSamplingAuraFlow (Qwen-Image: shift 3.1)", col, row,
                     size=(320, 60), model=unet.out(0), shift=QWEN_IMAGE_SHIFT)
    return sampling, clip, vae


def qwen_image_truncated_cfg(info: dict) -> dict:
    b = WorkflowBuilder(info)
    sampling, clip, vae = qwen_image_loaders(b, 1, 0)
    pos = b.add("CLIPTextEncode", "Prompt", 1, 0.5, size=(320, 120), text=DOG_PROMPT, clip=clip.out(0))
    neg = b.add("CLIPTextEncode", "Empty negative prompt (the paper's uncond)", 1, 1, size=(320, 120), text="",
                clip=clip.out(0))
    latent = b.add("EmptySD3LatentImage", None, 1, 1.5, size=(320, 130), width=1328, height=1328, batch_size=1)
    patched = _patch(b, sampling.out(0), 2, 0, "Truncated CFG (model patch): guidance in the first 40% of steps",
                     STEPS_WINDOW)
    sampled = b.add("KSampler", "KSampler (core): Qwen-Image settings", 3, 0, model=patched.out(0), seed=42,
                    steps=20, cfg=2.5, sampler_name="euler", scheduler="simple", positive=pos.out(0),
                    negative=neg.out(0), latent_image=latent.out(0), denoise=1.0)
    _decode_save(b, sampled.out(0), vae.out(0), 4, "shapefirst/qwen_image_truncated_cfg")
    b.note(
        "ShapeFirst - truncated guidance on Qwen-Image (joint text-image attention, a flow model): guidance in the "
        "first 40% of the steps, the rest skip the text-conditional pass (eq. 9). The prompt and the empty negative "
        "have different token counts, so ComfyUI runs them as two passes: each skipped step saves a whole pass. "
        "Files: diffusion_models, text_encoders, vae. text_cache must stay 'off' (joint attention). "
        + RANDOM_WEIGHTS + " the same layout as plain CFG (guidance_end = 1) with 30% fewer diffusion-model "
        "passes (the node reports them); fine text rendering, which Qwen-Image is known for, may need a longer "
        "window (raise guidance_end).", 0, 2.2)
    return b.to_ui()


def sd3_eos_swap_ab(info: dict) -> dict:
    b = WorkflowBuilder(info)
    ckpt, clip, sampling, _, neg, latent = _sd3_base(b, "")
    pa = b.add("CLIPTextEncode", "Prompt A (bird)", 2, 0, size=(320, 120), text=BIRD, clip=clip.out(0))
    pb = b.add("CLIPTextEncode", "Prompt B (chair)", 2, 0.5, size=(320, 120), text=CHAIR, clip=clip.out(0))
    swap = b.add("EOSSwapConditioning", "bird + [EOS] of chair", 2, 1, size=(420, 800), clip=clip.out(0),
                 prompt_a=BIRD, prompt_b=CHAIR, eos_from="B", sem_from="A", sos_from="A", padding_is_eos=True,
                 layout="prompt A", sem_repeats=1, apply_to="keys and values", start_percent=0.0, end_percent=1.0,
                 pooled_from="B", noise_seed=0, swap_encoders="all")
    images = []
    for k, (title, cond) in enumerate((("bird", pa), ("chair", pb), ("bird + EOS chair", swap))):
        sampler = b.add("KSampler", f"Sample: {title}", 3, k, size=(320, 262), model=sampling.out(0), seed=42,
                        steps=28, cfg=4.5, sampler_name="euler", scheduler="sgm_uniform", positive=cond.out(0),
                        negative=neg.out(0), latent_image=latent.out(0), denoise=1.0)
        images.append(b.add("VAEDecode", title, 4, k, size=(220, 50), samples=sampler.out(0), vae=ckpt.out(2)))
    side_by_side(b, images, 5, "Save: bird, chair, bird + EOS chair", "shapefirst/sd3_eos_swap_ab")
    b.note(
        "ShapeFirst - the [EOS] swap of Yi et al. (NeurIPS 2024, Fig. 4) on SD3.5: \"[SOS] + A + [EOS] of B\" with "
        "A = a bird and B = a chair, beside A alone and B alone (left to right), same seed. swap_encoders 'all': "
        "each text encoder (clip_l, clip_g, t5xxl) takes B's [EOS] rows, and the pooled vector is B's; name some "
        "of them to swap only those. " + RANDOM_WEIGHTS + " the swapped image following B: a chair's shape, "
        "maybe with the bird's colours.", 0, 2.6)
    return b.to_ui()

