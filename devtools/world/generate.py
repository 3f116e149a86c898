"""Generate with the world through ComfyUI's own nodes (CheckpointLoaderSimple, CLIPTextEncode,
KSampler, VAEDecode), and measure what the images show.

    python -m devtools.world.generate [--steps 20] [--out docs/world]   # sample grids + accuracy

Used by the tests (fixed prompts, seeds and sampler) and to make the pictures in docs/world.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SAMPLER = {"steps": 20, "cfg": 5.0, "sampler_name": "dpmpp_2m", "scheduler": "karras"}


def graph(ckpt: str, prompts: list[str], seeds: list[int], negative: str = "", **sampler):
    """An API graph: one KSampler + VAEDecode per (prompt, seed); returns (prompt, decode node ids)."""
    from ..graph import Graph

    s = {**SAMPLER, **sampler}
    g = Graph()
    loader = g.node("CheckpointLoaderSimple", ckpt_name=ckpt)
    neg = g.node("CLIPTextEncode", text=negative, clip=loader.out(1))
    latent = g.node("EmptyLatentImage", width=64, height=64, batch_size=1)
    decodes = []
    for text, seed in zip(prompts, seeds):
        pos = g.node("CLIPTextEncode", text=text, clip=loader.out(1))
        ks = g.node("KSampler", model=loader.out(0), seed=int(seed), positive=pos.out(0), negative=neg.out(0),
                    latent_image=latent.out(0), denoise=1.0, **s)
        decodes.append(g.node("VAEDecode", samples=ks.out(0), vae=loader.out(2)).id)
    return g.prompt(), decodes


def images(harness, ckpt: str, prompts: list[str], seeds: list[int], **sampler):
    """IMAGE tensor (N, 64, 64, 3) of the prompts, sampled through ComfyUI."""
    import torch

    prompt, decodes = graph(ckpt, prompts, seeds, **sampler)
    run = harness.run(prompt, outputs=decodes)
    return torch.cat([run.output_value(d) for d in decodes])


def accuracy(imgs, truth: list[dict]) -> dict[str, float]:
    """Share of images whose classified attributes equal the truth, per attribute the truth names."""
    from .evaluate import attributes

    pred = attributes(imgs)
    out = {}
    for key in ("shape", "colour", "position", "size"):
        pairs = [(p, t[key]) for p, t in zip(pred[key], truth) if t.get(key)]
        if pairs:
            out[key] = sum(p == t for p, t in pairs) / len(pairs)
    return out


def save_grid(imgs, path: Path, columns: int, scale: int = 2) -> None:
    import numpy as np
    from PIL import Image

    a = (imgs.clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    rows = -(-len(a) // columns)
    pad = np.zeros((rows * columns - len(a),) + a.shape[1:], dtype=np.uint8)
    a = np.concatenate([a, pad]).reshape(rows, columns, *a.shape[1:])
    grid = np.concatenate([np.concatenate(list(r), axis=1) for r in a], axis=0)
    Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).save(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=SAMPLER["steps"])
    p.add_argument("--seeds", type=int, default=2, help="seeds per prompt")
    p.add_argument("--out", type=Path, help="write sample grids (PNG) here")
    args = p.parse_args(argv)
    from .. import boot, paths
    from ..harness import ComfyHarness
    from . import checkpoint, evalset

    boot.quiet_logs()
    ckpt = checkpoint(Path(boot.runtime().models))
    h = ComfyHarness(paths.RUNTIME_DIR / "world-generate", ckpt.parent).boot()
    ev = evalset.load()
    report = {}
    for name in ("single", "positioned"):
        truth = [t for t in ev[name] for _ in range(args.seeds)]
        seeds = [s for _ in ev[name] for s in ev["sample_seeds"][: args.seeds]]
        imgs = images(h, ckpt.name, [t["prompt"] for t in truth], seeds, steps=args.steps)
        report[name] = accuracy(imgs, truth)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            save_grid(imgs, args.out / f"samples_{name}.png", columns=8 * args.seeds if name == "single" else 10)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
