"""Training stages of the world before the UNet: Toy-CLIP (text encoder + image tower), the VAE
and the attribute classifier. Each returns its trained module; state lives in its own folder."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from .classifier import Classifier, classifier_loss
from .compact_text import EOS, ToyCLIP
from .compact_vae import CompactTAESD
from .dataset import Dataset
from .layout import Widths
from .trainer import Run, batch_indices, generator


def train_clip(ds: Dataset, directory: Path, w: Widths, token_ids: list[int], tokens: torch.Tensor,
               steps: int, batch: int = 128, seed: int = 11) -> ToyCLIP:
    """Contrastive pretraining (InfoNCE with CLIP's learned temperature) of the pooled first-[EOS]
    output against the image tower. Identical captions in a batch count as positives of each other."""
    torch.manual_seed(seed)
    model = ToyCLIP(w, token_ids)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.05)
    run = Run(directory, "clip", model, opt, steps, 5e-4, warmup=150)
    lengths = (tokens != EOS).sum(1) + 1  # through the first [EOS]: the causal mask makes the rest irrelevant
    for step in ([] if run.done else run):
        idx = batch_indices(seed, ds.n, batch, step)
        tok = tokens[idx][:, : int(lengths[idx].max())]
        t = model.text_features(tok)
        v = model.image_features(ds.image_batch(idx))
        logits = t @ v.T * model.logit_scale.clamp(max=4.6052).exp()
        same = (tok[:, None, :] == tok[None, :, :]).all(-1).float()
        target = same / same.sum(1, keepdim=True)
        loss = 0.5 * (torch.sum(-target * logits.log_softmax(1), 1).mean() +
                      torch.sum(-target * logits.log_softmax(0), 0).mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        acc = (logits.argmax(1) == torch.arange(len(idx))).float().mean().item()
        run.log(step, loss.item(), scale=model.logit_scale.exp().item(), acc=acc)
    if not run.done:
        run.finish()
    return model.eval()


def object_weight(x: torch.Tensor, extra: float = 4.0) -> torch.Tensor:
    """Per-pixel loss weight (B, 1, H, W): 1 + ``extra`` where a pixel differs from the image's median
    colour (the background, nearly always): small objects would otherwise count for little."""
    median = x.flatten(2).median(dim=2).values[:, :, None, None]
    return 1 + extra * ((x - median).abs().sum(1, keepdim=True) > 0.15).float()


def vae_loss(vae: CompactTAESD, x: torch.Tensor, g: torch.Generator, noise: float = 0.05):
    z, y = vae(x, noise * torch.randn((x.shape[0], 4, x.shape[2] // 8, x.shape[3] // 8), generator=g))
    wgt = object_weight(x)
    rec = ((y - x).abs() * wgt).mean() + ((y - x).pow(2) * wgt).mean()
    edges = sum(((y.diff(dim=d) - x.diff(dim=d)).abs().mean() for d in (2, 3)))
    mean, var = z.mean(dim=(0, 2, 3)), z.var(dim=(0, 2, 3))
    reg = (mean.pow(2) + (var - 1).pow(2)).sum()
    return rec + 0.5 * edges + 0.05 * reg, rec, z


def train_vae(ds: Dataset, directory: Path, w: Widths, steps: int, batch: int = 48, seed: int = 12,
              rank: int = 0, world: int = 1) -> CompactTAESD:
    """Reconstruction (L1 + L2, objects weighted up, + image gradients) through noisy latents,
    latents pulled towards zero mean and unit variance per channel. ``rank``/``world``: one process
    of a data-parallel run (see ``train_unet``)."""
    torch.manual_seed(seed)
    vae = CompactTAESD(w)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    run = Run(directory, "vae", vae, opt, steps, 1e-3, warmup=100, writer=rank == 0)
    model = vae
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(vae)
    for step in ([] if run.done else run):
        idx = batch_indices(seed, ds.n, batch, step)[rank::world]
        loss, rec, z = vae_loss(model, ds.image_batch(idx), generator(seed * 16 + rank, step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        run.log(step, loss.item(), rec=rec.item(), zstd=z.std().item())
    if not run.done:
        run.finish()
    return vae.eval()


def train_classifier(ds: Dataset, directory: Path, steps: int, batch: int = 96, seed: int = 13) -> Classifier:
    """Shape, colour, size and position of the object in one-object images."""
    torch.manual_seed(seed)
    single = torch.from_numpy((ds.labels[:, 1, 0] < 0).nonzero()[0])
    model = Classifier()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    run = Run(directory, "classifier", model, opt, steps, 1e-3, warmup=100)
    for step in ([] if run.done else run):
        idx = single[batch_indices(seed, len(single), batch, step)].numpy()
        x = ds.image_batch(idx)
        labels = torch.from_numpy(ds.labels[idx, 0].astype("int64"))
        loss, acc = classifier_loss(model(x), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        run.log(step, loss.item(), acc=acc)
    if not run.done:
        run.finish()
    return model.eval()
