"""API-format graph snippets for the integration tests (core nodes + the pack's nodes)."""

from __future__ import annotations


def base(ckpt: str, prompt: str = "a photo of a cat", negative: str = "", width: int = 64, height: int = 64,
         batch: int = 1) -> dict:
    """Nodes 1-4: checkpoint, positive, negative, empty latent."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": batch}},
    }


def ksampler(model, latent, seed=7, steps=6, cfg=7.5, sampler="euler", scheduler="normal", denoise=1.0,
             positive=("2", 0), negative=("3", 0)) -> dict:
    return {"class_type": "KSampler", "inputs": {
        "model": list(model), "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler,
        "scheduler": scheduler, "positive": list(positive), "negative": list(negative),
        "latent_image": list(latent), "denoise": denoise}}
