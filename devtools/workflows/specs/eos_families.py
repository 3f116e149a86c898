"""The [EOS] swap on the modern families: Flux's pooled vector (CLIP-L's [EOS]) and Qwen-Image's
end-of-turn region. File names are those of the families' official releases; the loaders are the
ones core ComfyUI's examples use for each family."""

from __future__ import annotations

from ..builder import WorkflowBuilder
from .common import BIRD, CHAIR, side_by_side
from .families import RANDOM_WEIGHTS, qwen_image_loaders

FLUX_UNET = "flux1-dev.safetensors"
FLUX_TEXT_ENCODERS = ("clip_l.safetensors", "t5xxl_fp16.safetensors")
FLUX_VAE = "ae.safetensors"
SWAP = {"eos_from": "B", "sem_from": "A", "sos_from": "A", "padding_is_eos": True, "layout": "prompt A",
        "sem_repeats": 1, "apply_to": "keys and values", "start_percent": 0.0, "end_percent": 1.0,
        "pooled_from": "B", "noise_seed": 0, "swap_encoders": "all"}


def flux_eos_swap_pooled(info: dict) -> dict:
    b = WorkflowBuilder(info)
    unet = b.add("UNETLoader", "Load Diffusion Model (Flux dev)", 0, 0, size=(320, 100), unet_name=FLUX_UNET,
                 weight_dtype="default")
    clip = b.add("DualCLIPLoader", "Text encoders (clip_l, t5xxl; type flux)", 0, 0.45, size=(320, 130),
                 clip_name1=FLUX_TEXT_ENCODERS[0], clip_name2=FLUX_TEXT_ENCODERS[1], type="flux", device="default")
    vae = b.add("VAELoader", "Load VAE (Flux)", 0, 1, size=(320, 60), vae_name=FLUX_VAE)
    neg = b.add("CLIPTextEncode", "Empty negative prompt (unused at cfg 1)", 0, 1.5, size=(320, 120), text="",
                clip=clip.out(0))
    latent = b.add("EmptySD3LatentImage", None, 0, 2, size=(320, 130), width=1024, height=1024, batch_size=1)
    pa = b.add("CLIPTextEncode", "Prompt A (bird)", 1, 0, size=(320, 120), text=BIRD, clip=clip.out(0))
    pb = b.add("CLIPTextEncode", "Prompt B (chair)", 1, 0.5, size=(320, 120), text=CHAIR, clip=clip.out(0))
    ab = b.add("EOSSwapConditioning", "bird's T5 rows + chair's pooled vector", 1, 1, size=(340, 800),
               clip=clip.out(0), prompt_a=BIRD, prompt_b=CHAIR, **{**SWAP, "eos_from": "A", "swap_encoders": "clip_l"})
    ba = b.add("EOSSwapConditioning", "chair's T5 rows + bird's pooled vector", 1, 3.8, size=(340, 800),
               clip=clip.out(0), prompt_a=CHAIR, prompt_b=BIRD, **{**SWAP, "eos_from": "A", "swap_encoders": "clip_l"})
    images = []
    runs = (("bird", pa), ("chair", pb), ("bird + pooled chair", ab), ("chair + pooled bird", ba))
    for k, (title, cond) in enumerate(runs):
        guided = b.add("FluxGuidance", f"Guidance 3.5: {title}", 2, k, size=(320, 60), conditioning=cond.out(0),
                       guidance=3.5)
        sampler = b.add("KSampler", f"Sample: {title}", 3, k, size=(320, 262), model=unet.out(0), seed=42,
                        steps=20, cfg=1.0, sampler_name="euler", scheduler="simple", positive=guided.out(0),
                        negative=neg.out(0), latent_image=latent.out(0), denoise=1.0)
        images.append(b.add("VAEDecode", title, 4, k, size=(220, 50), samples=sampler.out(0), vae=vae.out(0)))
    side_by_side(b, images, 5, "Save: bird, chair, bird + pooled chair, chair + pooled bird",
                 "shapefirst/flux_eos_swap_pooled")
    b.note(
        "ShapeFirst - the [EOS] analogue on Flux (Yi et al., NeurIPS 2024, Fig. 4). Flux reads T5's rows as its "
        "text tokens and CLIP-L's pooled vector (CLIP's [EOS] output) as a global vector. Left to right: A (bird), "
        "B (chair), A's T5 rows with B's pooled vector, and the reverse (eos_from A, pooled_from B, swap_encoders "
        "clip_l: only the pooled vector is swapped). Same seed, guidance 3.5 on every prompt. Put flux1-dev in "
        "diffusion_models, clip_l and t5xxl in text_encoders, ae in vae. " + RANDOM_WEIGHTS + " how far the "
        "pooled vector alone moves the image toward B: the T5 rows usually keep A's content, so a change in "
        "style or layout rather than B's object is the expected outcome. swap_encoders 'all' with eos_from B also "
        "swaps T5's [EOS] region.", 0, 2.6)
    return b.to_ui()


def qwen_image_eos_swap_end_of_turn(info: dict) -> dict:
    b = WorkflowBuilder(info)
    sampling, clip, vae = qwen_image_loaders(b, 0, 1.5)
    neg = b.add("CLIPTextEncode", "Empty negative prompt (the paper's uncond)", 0, 2, size=(320, 120), text="",
                clip=clip.out(0))
    latent = b.add("EmptySD3LatentImage", None, 0, 2.5, size=(320, 130), width=1328, height=1328, batch_size=1)
    pa = b.add("CLIPTextEncode", "Prompt A (bird)", 1, 0, size=(320, 120), text=BIRD, clip=clip.out(0))
    pb = b.add("CLIPTextEncode", "Prompt B (chair)", 1, 0.5, size=(320, 120), text=CHAIR, clip=clip.out(0))
    swap = b.add("EOSSwapConditioning", "bird + end of turn of chair", 1, 1, size=(340, 800), clip=clip.out(0),
                 prompt_a=BIRD, prompt_b=CHAIR, **SWAP)
    images = []
    for k, (title, cond) in enumerate((("bird", pa), ("chair", pb), ("bird + end of turn of chair", swap))):
        sampler = b.add("KSampler", f"Sample: {title}", 2, k, size=(320, 262), model=sampling.out(0), seed=42,
                        steps=20, cfg=2.5, sampler_name="euler", scheduler="simple", positive=cond.out(0),
                        negative=neg.out(0), latent_image=latent.out(0), denoise=1.0)
        images.append(b.add("VAEDecode", title, 3, k, size=(220, 50), samples=sampler.out(0), vae=vae.out(0)))
    side_by_side(b, images, 4, "Save: bird, chair, bird + end of turn of chair",
                 "shapefirst/qwen_image_eos_swap_end_of_turn")
    b.note(
        "ShapeFirst - the [EOS] swap of Yi et al. (NeurIPS 2024, Fig. 4) on Qwen-Image, whose text encoder is an "
        "LLM (Qwen2.5-VL) that reads the prompt inside a chat template. The rows after the prompt, "
        "<|im_end|>\\n<|im_start|>assistant\\n, see the whole prompt through causal attention as CLIP's [EOS] does: "
        "here A's rows (bird) keep its words and take B's (chair) end-of-turn rows. Left to right: A, B, the swap; "
        "same seed. Type prompts alone: the node adds the template as CLIP Text Encode does. Put the Qwen-Image "
        "model in diffusion_models, Qwen2.5-VL 7B in text_encoders, its VAE in vae. Tested here on a one-block Qwen-Image with random "
        "weights and a stand-in text encoder, and its text nodes on ComfyUI's Qwen-Image text encoder at a reduced "
        "width. With real weights look for the swapped "
        "image following B (a chair) if the end-of-turn rows carry the prompt as CLIP's [EOS] does, or staying "
        "with A if the model reads the prompt's own rows: both answer the paper's question for this family.",
        0, 3.1)
    return b.to_ui()
