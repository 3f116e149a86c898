"""Small line charts rendered with Pillow (no plotting library needed inside ComfyUI).

``render_panels`` draws panels side by side, each with its own y axis, and returns an
(H, W, 3) float32 array in [0, 1], ready to become a ComfyUI IMAGE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PALETTE = [
    (31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14),
    (148, 103, 189), (140, 86, 75), (227, 119, 194), (23, 190, 207),
]


@dataclass
class Series:
    label: str
    values: list[float]
    dashed: bool = False
    color: tuple[int, int, int] | None = None


@dataclass
class Panel:
    title: str
    series: list[Series] = field(default_factory=list)
    x_label: str = "step"
    y_label: str = ""


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return [0.0, 1.0]
    if hi <= lo:
        hi = lo + (abs(lo) if lo else 1.0)
    raw = (hi - lo) / max(1, count - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=10 * mag)
    start = math.floor(lo / step) * step
    ticks, t = [], start
    while t <= hi + step * 1e-6:
        ticks.append(round(t, 12))
        t += step
    if ticks[-1] < hi:
        ticks.append(round(ticks[-1] + step, 12))
    return ticks


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000 or abs(v) < 0.01:
        return f"{v:.1e}"
    return f"{v:.3g}"


def _dashed_line(draw: ImageDraw.ImageDraw, pts, color, width=2, dash=6):
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        seg = math.hypot(x1 - x0, y1 - y0)
        n = max(1, int(seg // dash))
        for k in range(0, n, 2):
            a, b = k / n, min(1.0, (k + 1) / n)
            draw.line([(x0 + (x1 - x0) * a, y0 + (y1 - y0) * a), (x0 + (x1 - x0) * b, y0 + (y1 - y0) * b)],
                      fill=color, width=width)


def _draw_panel(draw: ImageDraw.ImageDraw, font, panel: Panel, box: tuple[int, int, int, int]):
    left, top, right, bottom = box
    legend_h = 14 * len(panel.series) + 6
    plot = (left + 58, top + 24, right - 12, bottom - 40 - legend_h)
    px0, py0, px1, py1 = plot
    draw.text((left + 8, top + 4), panel.title, fill=(0, 0, 0), font=font)
    values = [v for s in panel.series for v in s.values if v is not None and math.isfinite(v)]
    n = max((len(s.values) for s in panel.series), default=1)
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    lo = min(lo, 0.0)
    yt = nice_ticks(lo, hi)
    ylo, yhi = yt[0], yt[-1]

    def xy(i: int, v: float):
        fx = i / max(1, n - 1)
        fy = (v - ylo) / (yhi - ylo) if yhi > ylo else 0.5
        return px0 + fx * (px1 - px0), py1 - fy * (py1 - py0)

    draw.rectangle(plot, outline=(90, 90, 90))
    for t in yt:
        _, y = xy(0, t)
        draw.line([(px0 - 4, y), (px0, y)], fill=(90, 90, 90))
        draw.line([(px0 + 1, y), (px1 - 1, y)], fill=(235, 235, 235))
        draw.text((left + 4, y - 6), _fmt(t), fill=(60, 60, 60), font=font)
    for t in nice_ticks(0, n - 1, 6):
        if t > n - 1:
            continue
        x, _ = xy(t, ylo)
        draw.line([(x, py1), (x, py1 + 4)], fill=(90, 90, 90))
        draw.text((x - 6, py1 + 6), str(int(t)), fill=(60, 60, 60), font=font)
    draw.text(((px0 + px1) // 2 - 12, py1 + 20), panel.x_label, fill=(0, 0, 0), font=font)
    for k, s in enumerate(panel.series):
        color = s.color or PALETTE[k % len(PALETTE)]
        pts = [xy(i, v) for i, v in enumerate(s.values) if v is not None and math.isfinite(v)]
        if len(pts) >= 2:
            if s.dashed:
                _dashed_line(draw, pts, color)
            else:
                draw.line(pts, fill=color, width=2)
        elif pts:
            x, y = pts[0]
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=color)
        ly = py1 + 38 + 14 * k
        if s.dashed:
            _dashed_line(draw, [(px0, ly + 6), (px0 + 22, ly + 6)], color, dash=4)
        else:
            draw.line([(px0, ly + 6), (px0 + 22, ly + 6)], fill=color, width=2)
        draw.text((px0 + 28, ly), s.label, fill=(0, 0, 0), font=font)


def render_panels(panels: list[Panel], panel_width: int = 420, height: int = 360) -> np.ndarray:
    """Render panels side by side; returns float32 (H, W, 3) in [0, 1]."""
    if not panels:
        raise ValueError("at least one panel is needed")
    width = panel_width * len(panels)
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    for k, panel in enumerate(panels):
        _draw_panel(draw, font, panel, (k * panel_width, 0, (k + 1) * panel_width, height))
    return np.asarray(img, dtype=np.float32) / 255.0
