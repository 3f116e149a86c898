"""Attention heatmaps over images: colour maps, overlays, labelled token x step grids, sprites.

Maps are normalised per cell (min-max) before colouring, as DAAM and the paper's Fig. 1a do,
so each cell shows where that token looks at that step, not how strongly compared to others.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from . import text
from .metrics import normalize01

# A perceptual "inferno"-like ramp: black -> purple -> orange -> yellow.
_RAMP = torch.tensor([
    [0.0, 0.0, 0.02], [0.26, 0.04, 0.41], [0.58, 0.15, 0.40], [0.87, 0.32, 0.23],
    [0.98, 0.60, 0.04], [0.99, 0.99, 0.64],
])
LABEL_W = 120
HEADER_H = 18
GAP = 2


def colorize(x: torch.Tensor) -> torch.Tensor:
    """(..., H, W) values in [0, 1] -> (..., H, W, 3) colours of the ramp."""
    x = x.to(torch.float32).clamp(0, 1) * (len(_RAMP) - 1)
    i = x.floor().long().clamp(max=len(_RAMP) - 2)
    f = (x - i)[..., None]
    return _RAMP[i] * (1 - f) + _RAMP[i + 1] * f


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(..., h, w) -> (..., H, W) bilinear."""
    lead = maps.shape[:-2]
    x = maps.reshape(-1, 1, *maps.shape[-2:]).to(torch.float32)
    y = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return y.reshape(*lead, *size)


def overlay(image: torch.Tensor, maps: torch.Tensor, alpha: float = 0.6) -> torch.Tensor:
    """Blend (..., h, w) maps, normalised per map, over an (H, W, 3) image: (..., H, W, 3)."""
    h, w = image.shape[:2]
    heat = colorize(normalize01(upsample(maps, (h, w))))
    return (1 - alpha) * image.to(torch.float32) + alpha * heat


def _fit(label: str, font, width: int) -> str:
    """``label`` cut to ``width`` pixels (with an ellipsis when cut)."""
    if font.getlength(label) <= width:
        return label
    while label and font.getlength(label + "...") > width:
        label = label[:-1]
    return label + "..."


def token_step_grid(image: torch.Tensor, maps: torch.Tensor, row_labels: list[str], col_labels: list[str],
                    cell: int = 128, alpha: float = 0.6) -> torch.Tensor:
    """A labelled grid (1, H', W', 3): rows = tokens, columns = steps, each cell a heatmap over the image.

    ``image``: (H, W, 3) in [0, 1]; ``maps``: (rows, cols, h, w). Labels are drawn with ``text.drawable``
    (a T5 piece "\u2581" as "_", never as an empty box)."""
    rows, cols = maps.shape[:2]
    if len(row_labels) != rows or len(col_labels) != cols:
        raise ValueError("one label per row and per column is needed")
    ih, iw = image.shape[:2]
    ch = max(8, round(cell * ih / max(ih, iw)))
    cw = max(8, round(cell * iw / max(ih, iw)))
    small = upsample(image.permute(2, 0, 1), (ch, cw)).permute(1, 2, 0).clamp(0, 1)
    cells = overlay(small, maps, alpha)  # (rows, cols, ch, cw, 3)
    height = HEADER_H + rows * (ch + GAP)
    width = LABEL_W + cols * (cw + GAP)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = text.font()
    arr = (cells.clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    for c, label in enumerate(col_labels):
        draw.text((LABEL_W + c * (cw + GAP) + 2, 2), text.drawable(str(label)[:24]), fill=(0, 0, 0), font=font)
    for r, label in enumerate(row_labels):
        y = HEADER_H + r * (ch + GAP)
        draw.text((3, y + ch // 2 - 7), _fit(text.drawable(str(label)), font, LABEL_W - 6), fill=(0, 0, 0), font=font)
        for c in range(cols):
            canvas.paste(Image.fromarray(arr[r, c]), (LABEL_W + c * (cw + GAP), y))
    return torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0)[None]


def sprite(maps: torch.Tensor) -> np.ndarray:
    """(rows, cols, h, w) maps -> one uint8 grey image (rows*h, cols*w), each cell min-max normalised."""
    rows, cols, h, w = maps.shape
    cells = (normalize01(maps.to(torch.float32)) * 255).round().to(torch.uint8)
    return cells.permute(0, 2, 1, 3).reshape(rows * h, cols * w).numpy()


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(H, W, 3) float in [0, 1] -> uint8 array."""
    return (image.to(torch.float32).clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
