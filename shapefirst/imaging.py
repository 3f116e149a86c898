"""Preview strips: several (B, H, W, 3) images side by side with a label under each."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from . import text

LABEL_HEIGHT = 16
GAP = 4


def latent_to_rgb(z: torch.Tensor, scale: float | None = None, upscale: int = 8) -> torch.Tensor:
    """View a latent (B, C, H, W) as an image (B, H*up, W*up, 3) in [0, 1].

    The first three channels (repeated when fewer) are mapped ``0.5 + v / (2 * scale)``, so 0
    is mid-grey. Pass the same ``scale`` for several latents to compare them on one scale.
    """
    if z.ndim != 4:
        raise ValueError(f"expected (B, C, H, W), got {tuple(z.shape)}")
    z = z.to(torch.float32)
    c = z.shape[1]
    rgb = z[:, [min(i, c - 1) for i in range(3)]]
    if scale is None:
        scale = float(rgb.abs().amax()) or 1.0
    img = (0.5 + rgb / (2.0 * scale)).clamp(0.0, 1.0)
    if upscale > 1:
        img = img.repeat_interleave(upscale, dim=2).repeat_interleave(upscale, dim=3)
    return img.permute(0, 2, 3, 1).contiguous()


def side_by_side(panels: list[torch.Tensor], labels: list[str]) -> torch.Tensor:
    """Join (B, H, W, 3) panels left to right with a gap and a label row; returns (B, H', W', 3)."""
    if not panels or len(panels) != len(labels):
        raise ValueError("one label per panel is needed")
    b = panels[0].shape[0]
    h = max(p.shape[1] for p in panels)
    w = sum(p.shape[2] for p in panels) + GAP * (len(panels) - 1)
    out = torch.ones((b, h + LABEL_HEIGHT, w, 3), dtype=torch.float32)
    label_row = Image.new("RGB", (w, LABEL_HEIGHT), (255, 255, 255))
    draw = ImageDraw.Draw(label_row)
    font = text.font()
    x = 0
    for p, label in zip(panels, labels):
        if p.shape[0] != b or p.shape[-1] != 3:
            raise ValueError(f"panels must share the batch size and have 3 channels, got {tuple(p.shape)}")
        out[:, : p.shape[1], x : x + p.shape[2]] = p.to(torch.float32).cpu().clamp(0, 1)
        draw.text((x + 2, 1), text.drawable(label), fill=(0, 0, 0), font=font)
        x += p.shape[2] + GAP
    row = torch.from_numpy(np.asarray(label_row, dtype=np.float32) / 255.0)
    out[:, h:] = row
    return out
