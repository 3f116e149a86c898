"""API-format graph snippets for the integration tests (core nodes + the pack's nodes)."""

from __future__ import annotations

from devtools.graph import Graph, node


def base(ckpt: str, prompt: str = "a photo of a cat", negative: str = "", width: int = 64, height: int = 64,
         batch: int = 1) -> dict:
    """Nodes 1-4: checkpoint, positive, negative, empty latent."""
    g = Graph()
    loader = g.node("CheckpointLoaderSimple", ckpt_name=ckpt)
    g.node("CLIPTextEncode", text=prompt, clip=loader.out(1))
    g.node("CLIPTextEncode", text=negative, clip=loader.out(1))
    g.node("EmptyLatentImage", width=width, height=height, batch_size=batch)
    return g.prompt()


def ksampler(model, latent, seed=7, steps=6, cfg=7.5, sampler="euler", scheduler="normal", denoise=1.0,
             positive=("2", 0), negative=("3", 0)) -> dict:
    return node("KSampler", model=list(model), seed=seed, steps=steps, cfg=cfg, sampler_name=sampler,
                scheduler=scheduler, positive=list(positive), negative=list(negative), latent_image=list(latent),
                denoise=denoise)
