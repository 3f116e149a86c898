"""Latent and text-embedding precomputation, and the UNet's training (eps prediction exactly as
ComfyUI samples SD1.5: 1000-step scaled-linear schedule, x_t = sqrt(abar) x0 + sqrt(1 - abar) eps,
the UNet called with timestep t)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch

from .compact_text import CompactCLIPText
from .compact_unet import CompactUNet
from .compact_vae import CompactTAESD
from .dataset import Dataset
from .layout import Widths
from .trainer import Run, batch_indices, generator

P_UNCOND = 0.1  # captions dropped to the empty prompt, for classifier-free guidance
MIN_SNR = 5.0  # min-SNR-gamma loss weighting (Hang et al. 2023)


def alphas_cumprod(n: int = 1000, start: float = 0.00085, end: float = 0.012) -> torch.Tensor:
    """SD1.5's schedule (ComfyUI's ``make_beta_schedule("linear", ...)``: linear in sqrt(beta))."""
    betas = torch.linspace(start ** 0.5, end ** 0.5, n, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()


@torch.no_grad()
def encode_all(ds: Dataset, directory: Path, text: CompactCLIPText, vae: CompactTAESD, tokens: torch.Tensor,
               batch: int = 256) -> None:
    """Latents of every image, and the 77 conditioning vectors of every distinct caption (fp16).

    Latents are the encoder's output normalised by one mean and standard deviation (measured on
    the first 4096 images): the VAE's stored ``vae_scale``/``vae_shift`` make ComfyUI hand the UNet
    exactly these (``export.vae_scalars``)."""
    directory = Path(directory)
    if (directory / "meta.json").exists():
        return
    directory.mkdir(parents=True, exist_ok=True)
    latents = np.lib.format.open_memmap(directory / "latents.npy", "w+", np.float16, (ds.n, 4, 8, 8))
    raw = torch.cat([vae.encode(ds.image_batch(np.arange(a, min(ds.n, a + batch)))) for a in range(0, 4096, batch)])
    mean, std = raw.mean().item(), raw.std().item()  # one scale and shift for all channels: what TAESD stores
    for a in range(0, ds.n, batch):
        z = vae.encode(ds.image_batch(np.arange(a, min(ds.n, a + batch))))
        latents[a:a + batch] = ((z - mean) / std).numpy()
        if a % (batch * 40) == 0:
            print(f"[encode] latents {a}/{ds.n}", flush=True)
    latents.flush()
    unique, inverse = np.unique(np.asarray(ds.captions + [""]), return_inverse=True)
    first = {c: i for i, c in reversed(list(enumerate(ds.captions + [""])))}
    u_tokens = torch.cat([tokens, empty_tokens()])[[first[c] for c in unique]]
    ctx = np.lib.format.open_memmap(directory / "contexts.npy", "w+", np.float16, (len(unique), 77, text_width(text)))
    for a in range(0, len(unique), batch):
        ctx[a:a + batch] = text(u_tokens[a:a + batch])[0].numpy()
        if a % (batch * 40) == 0:
            print(f"[encode] contexts {a}/{len(unique)}", flush=True)
    ctx.flush()
    np.save(directory / "caption_index.npy", inverse[: ds.n].astype(np.int32))
    lat = torch.from_numpy(np.asarray(latents[: min(ds.n, 4096)], dtype=np.float32))
    stats = {"n": ds.n, "captions": len(unique), "empty": int(inverse[-1]), "raw_mean": mean, "raw_std": std,
             "latent_channel_mean": lat.mean(dim=(0, 2, 3)).tolist(), "latent_channel_std": lat.std(dim=(0, 2, 3)).tolist()}
    (directory / "meta.json").write_text(json.dumps(stats, indent=1))
    print(f"[encode] done: {stats}", flush=True)


def empty_tokens() -> torch.Tensor:
    from .tokens import encode

    return encode([""])


def text_width(text: CompactCLIPText) -> int:
    return text.text_model.final_layer_norm.weight.shape[0]


class Encoded:
    def __init__(self, directory: Path):
        directory = Path(directory)
        self.meta = json.loads((directory / "meta.json").read_text())
        self.latents = np.load(directory / "latents.npy", mmap_mode="r")
        self.contexts = np.load(directory / "contexts.npy", mmap_mode="r")
        self.caption_index = np.load(directory / "caption_index.npy")
        self.empty = torch.from_numpy(np.asarray(self.contexts[self.meta["empty"]], dtype=np.float32))

    def batch(self, idx, g: torch.Generator):
        x0 = torch.from_numpy(np.asarray(self.latents[idx], dtype=np.float32))
        ctx = torch.from_numpy(np.asarray(self.contexts[self.caption_index[idx]], dtype=np.float32))
        drop = torch.rand(len(idx), generator=g) < P_UNCOND
        ctx[drop] = self.empty
        return x0, ctx


def diffusion_loss(unet, x0, ctx, abar, g: torch.Generator):
    t = torch.randint(0, len(abar), (x0.shape[0],), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    a = abar[t].view(-1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
    pred = unet(xt, t.float(), ctx)
    snr = abar[t] / (1 - abar[t])
    weight = torch.clamp(snr, max=MIN_SNR) / snr
    return (weight * (pred - eps).pow(2).mean(dim=(1, 2, 3))).mean()


def zero_init(unet: CompactUNet) -> CompactUNet:
    """Zero the last layer of every residual branch and the output conv (as SD's UNet starts)."""
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if name.startswith("out.2.") or ".out_layers.3." in name or ".proj_out." in name:
                p.zero_()
    return unet


def train_unet(enc: Encoded, directory: Path, w: Widths, steps: int, batch: int = 32, lr: float = 3e-4,
               seed: int = 14, ema_decay: float = 0.999, rank: int = 0, world: int = 1) -> CompactUNet:
    """Returns the EMA of the weights (what ships). With ``world`` > 1 this is rank ``rank`` of a
    data-parallel run (torch.distributed, gloo, already initialised): each process takes every
    world-th sample of the step's batch, gradients are averaged, rank 0 keeps the EMA, saves and logs."""
    torch.manual_seed(seed)
    unet = zero_init(CompactUNet(w))
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.01)
    run = Run(directory, "unet", unet, opt, steps, lr, warmup=200, extra={"ema": ema}, writer=rank == 0)
    model = unet
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(unet)
    abar = alphas_cumprod()
    n = enc.latents.shape[0]
    for step in ([] if run.done else run):
        g = generator(seed * 16 + rank, step)
        x0, ctx = enc.batch(batch_indices(seed, n, batch, step)[rank::world], g)
        loss = diffusion_loss(model, x0, ctx, abar, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        if rank == 0:
            d = min(ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for pe, p in zip(ema.parameters(), unet.parameters()):
                    pe.lerp_(p, 1 - d)
        loss = loss.detach()
        if world > 1:
            torch.distributed.all_reduce(loss)
            loss /= world
        run.log(step, loss.item())
    if not run.done:
        run.finish()
    return ema.eval()
