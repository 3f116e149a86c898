"""Small line charts rendered with Pillow (no plotting library needed inside ComfyUI).

Every chart of the pack is described once in ``js/figures.json``, which the browser's
``js/chart.js`` reads too: ``figure_panels`` turns a description and a node's payload into
panels, ``render_figure`` draws them. ``render_panels`` draws panels side by side, each with its
own y axis, and returns an (H, W, 3) float32 array in [0, 1], ready to become a ComfyUI IMAGE.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FIGURES_PATH = Path(__file__).resolve().parent.parent / "js" / "figures.json"


@lru_cache(maxsize=1)
def figures() -> dict:
    """The chart descriptions shared with the browser (``js/figures.json``)."""
    return json.loads(FIGURES_PATH.read_text(encoding="utf-8"))


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    h = hex_colour.lstrip("#")
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


PALETTE = [_rgb(c) for c in figures()["palette"]]


@dataclass
class Series:
    label: str
    values: list[float]
    dashed: bool = False
    color: tuple[int, int, int] | None = None
    x: list[float] | None = None  # step of each value (default 0, 1, 2 ...)


@dataclass
class Panel:
    title: str
    series: list[Series] = field(default_factory=list)
    x_label: str = "step"
    y_label: str = ""
    x_range: tuple[float, float] | None = None  # default: the steps of the series


def _finite(v) -> bool:
    return v is not None and math.isfinite(v)


def _xs(s: Series) -> list[float]:
    return list(s.x) if s.x is not None else list(range(len(s.values)))


def _x_ticks(lo: float, hi: float) -> list[float]:
    """Whole-step ticks inside [lo, hi]."""
    if hi <= lo:
        return [lo]
    ticks = [t for t in nice_ticks(lo, hi, 6) if lo - 1e-9 <= t <= hi + 1e-9 and float(t).is_integer()]
    return ticks or [lo, hi]


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
    values = [v for s in panel.series for v in s.values if _finite(v)]
    xs = [x for s in panel.series for x in _xs(s)]
    x_lo, x_hi = (min(xs), max(xs)) if xs else (0.0, 1.0)
    if panel.x_range is not None:
        x_lo, x_hi = panel.x_range
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    lo = min(lo, 0.0)
    yt = nice_ticks(lo, hi)
    ylo, yhi = yt[0], yt[-1]

    def xy(x: float, v: float):
        fx = (x - x_lo) / (x_hi - x_lo) if x_hi > x_lo else 0.0
        fy = (v - ylo) / (yhi - ylo) if yhi > ylo else 0.5
        return px0 + fx * (px1 - px0), py1 - fy * (py1 - py0)

    draw.rectangle(plot, outline=(90, 90, 90))
    for t in yt:
        _, y = xy(0, t)
        draw.line([(px0 - 4, y), (px0, y)], fill=(90, 90, 90))
        draw.line([(px0 + 1, y), (px1 - 1, y)], fill=(235, 235, 235))
        draw.text((left + 4, y - 6), _fmt(t), fill=(60, 60, 60), font=font)
    for t in _x_ticks(x_lo, x_hi):
        x, _ = xy(t, ylo)
        draw.line([(x, py1), (x, py1 + 4)], fill=(90, 90, 90))
        draw.text((x - 6, py1 + 6), _fmt(t), fill=(60, 60, 60), font=font)
    draw.text(((px0 + px1) // 2 - 12, py1 + 20), panel.x_label, fill=(0, 0, 0), font=font)
    for k, s in enumerate(panel.series):
        color = s.color or PALETTE[k % len(PALETTE)]
        pts = [xy(x, v) for x, v in zip(_xs(s), s.values) if _finite(v)]
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


def _path(payload, path: str):
    """The value at a dotted path of the payload, None where any part is missing."""
    value = payload
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _numbers(values) -> list[float]:
    return [float("nan") if v is None else float(v) for v in values]


def _series(spec: dict, payload: dict, figure_x) -> list[Series]:
    if "each" in spec:
        out = []
        for name in spec["each"]:
            one = {k: (v.replace("{}", name) if isinstance(v, str) else v) for k, v in spec.items() if k != "each"}
            if _path(payload, one["y"]) is not None:
                out += _series(one, payload, figure_x)
        return out
    dashed = bool(spec.get("dashed", False))
    if "points" in spec:
        points = [p for p in (_path(payload, spec["points"]) or []) if isinstance(p, dict)]
        return [Series(spec["label"], _numbers(p.get(spec["y"]) for p in points), dashed,
                       x=[float(p[spec["x"]]) for p in points])]
    values = _numbers(_path(payload, spec["y"]) or [])
    x = _path(payload, spec["x"]) if "x" in spec else figure_x
    return [Series(spec["label"], values, dashed, x=None if x is None else [float(v) for v in x][:len(values)])]


def figure_panels(name: str, payload: dict) -> list[Panel]:
    """The panels of figure ``name`` of ``js/figures.json`` with the payload's values."""
    fig = figures()["figures"][name]
    figure_x = _path(payload, fig["x"]) if "x" in fig else None
    x_range = None
    if "x_count" in fig:
        count = _path(payload, fig["x_count"])
        x_range = (0.0, float(max(1, int(count or 1) - 1)))
    return [Panel(p["title"], [s for spec in p["series"] for s in _series(spec, payload, figure_x)],
                  x_label=fig.get("x_label", "step"), x_range=x_range) for p in fig["panels"]]


def render_figure(name: str, payload: dict, panel_width: int = 420, height: int = 360) -> np.ndarray:
    """Draw figure ``name`` of ``js/figures.json`` from a node's payload; float32 (H, W, 3) in [0, 1]."""
    return render_panels(figure_panels(name, payload), panel_width, height)
