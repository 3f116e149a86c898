"""The world's VAE: the active part of ComfyUI's TAESD (``comfy/taesd/taesd.py``), pure torch.

Parameter names are TAESD's keys (``taesd_encoder.3.conv.0.weight`` ...) at ``Widths.vae``
channels. A TAESD Block is ``relu(conv(x) + x)``; with its last conv zero it is ``relu(x)``, so the
Blocks that ``Widths`` does not list are ReLUs here. ComfyUI's TAESD wraps the networks as::

    encode(x in [-1, 1]) = encoder(x / 2 + 1/2) / vae_scale + vae_shift
    decode(z) = 2 * decoder((z - vae_shift) * vae_scale) - 1      (decoder starts with 3 tanh(x / 3))

and SD1.5's latent format hands the UNet ``0.18215 * latent``. The world stores ``vae_scale`` and
``vae_shift`` such that the UNet sees ``(encoder output - mean) / std``, one mean and standard
deviation measured on the training images (``export.vae_scalars``); the encoder is trained to keep
its output near zero mean and unit variance per channel anyway.
"""

from __future__ import annotations

import torch
from torch import nn

from .layout import Widths

SD15_SCALE = 0.18215
ENCODER = ("conv3", "block", "down", "block", "block", "block", "down", "block", "block", "block",
           "down", "block", "block", "block", "conv_latent")
DECODER = ("clamp", "conv_latent", "relu", "block", "block", "block", "up", "conv", "block", "block", "block",
           "up", "conv", "block", "block", "block", "up", "conv", "block", "conv3")


class Clamp(nn.Module):
    def forward(self, x):
        return torch.tanh(x / 3) * 3


class Block(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(c, c, 3, padding=1))
        self.skip = nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x):
        return self.fuse(self.conv(x) + self.skip(x))


def _layers(plan, c: int, trained: tuple[int, ...], encoder: bool):
    out = []
    for i, kind in enumerate(plan):
        if kind == "block":
            out.append(Block(c) if i in trained else nn.ReLU())
        elif kind == "conv3":
            out.append(nn.Conv2d(3, c, 3, padding=1) if encoder else nn.Conv2d(c, 3, 3, padding=1))
        elif kind == "conv_latent":
            out.append(nn.Conv2d(c, 4, 3, padding=1) if encoder else nn.Conv2d(4, c, 3, padding=1))
        elif kind == "down":
            out.append(nn.Conv2d(c, c, 3, stride=2, padding=1, bias=False))
        elif kind == "conv":
            out.append(nn.Conv2d(c, c, 3, padding=1, bias=False))
        elif kind == "up":
            out.append(nn.Upsample(scale_factor=2))
        elif kind == "clamp":
            out.append(Clamp())
        else:
            out.append(nn.ReLU())
    return nn.Sequential(*out)


class CompactTAESD(nn.Module):
    def __init__(self, w: Widths):
        super().__init__()
        self.taesd_encoder = _layers(ENCODER, w.vae, w.vae_encoder_blocks, True)
        self.taesd_decoder = _layers(DECODER, w.vae, w.vae_decoder_blocks, False)

    def forward(self, images, noise):
        """(latents, reconstruction of the latents + ``noise``): one training pass."""
        z = self.encode(images)
        return z, self.decode(z + noise)

    def encode(self, images):
        """images (B, 3, H, W) in [0, 1] -> encoder output (B, 4, H/8, W/8)."""
        return self.taesd_encoder(images)

    def decode(self, latents):
        """encoder-space latents -> images in about [0, 1] (ComfyUI clamps to [0, 1] after this)."""
        return self.taesd_decoder(latents)
