"""Small line charts rendered with Pillow (no plotting library needed inside ComfyUI).

Every chart of the pack is described once in ``js/figures.json``, which the browser's
``js/chart.js`` reads too: ``figure_panels`` turns a description and a node's payload into
panels, ``render_figure`` draws them. ``render_panels`` draws panels side by side, each with its
own labelled y axis, and returns an (H, W, 3) float32 array in [0, 1], ready to become a ComfyUI IMAGE.
Token classes (SOS, SEM, EOS, PAD) have one colour, marker and line style in every chart
(``CLASS_STYLES``, from the same file); markers at the data points keep a line visible where another
class's line covers it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from . import text

FIGURES_PATH = Path(__file__).resolve().parent.parent / "js" / "figures.json"


@lru_cache(maxsize=1)
def figures() -> dict:
    """The chart descriptions shared with the browser (``js/figures.json``)."""
    return json.loads(FIGURES_PATH.read_text(encoding="utf-8"))


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    h = hex_colour.lstrip("#")
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


PALETTE = [_rgb(c) for c in figures()["palette"]]
CLASS_STYLES = {name: {**style, "color": _rgb(style["color"])} for name, style in figures()["classes"].items()}
MARKERS = ("circle", "square", "triangle", "diamond")


@dataclass
class Series:
    label: str
    values: list[float]
    dashed: bool = False
    color: tuple[int, int, int] | None = None
    x: list[float] | None = None  # step of each value (default 0, 1, 2 ...)
    marker: str | None = None  # one of MARKERS, drawn at every value


@dataclass
class Panel:
    title: str
    series: list[Series] = field(default_factory=list)
    x_label: str = "step"
    y_label: str = ""  # the y axis' name, drawn along it
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


HOLLOW = ("circle", "diamond")  # drawn larger and after the filled ones, so a filled marker shows inside


def _marker(draw: ImageDraw.ImageDraw, kind: str | None, x: float, y: float, color):
    if kind == "circle":
        draw.ellipse([x - 6, y - 6, x + 6, y + 6], outline=color, width=2)
    elif kind == "diamond":
        draw.polygon([(x, y - 7), (x + 7, y), (x, y + 7), (x - 7, y)], outline=color, width=2)
    elif kind == "square":
        draw.rectangle([x - 3, y - 3, x + 3, y + 3], fill=color)
    elif kind == "triangle":
        draw.polygon([(x, y - 4), (x - 4, y + 3), (x + 4, y + 3)], fill=color)


def _y_label(image: Image.Image, label: str, x: int, y_mid: float):
    """``label`` written bottom to top, centred on ``y_mid``, its left edge at ``x``."""
    if not label:
        return
    font = text.font()
    label = text.drawable(label)
    w = int(font.getlength(label)) + 4
    strip = Image.new("RGB", (w, text.LINE), (255, 255, 255))
    ImageDraw.Draw(strip).text((2, 1), label, fill=(0, 0, 0), font=font)
    strip = strip.rotate(90, expand=True)
    image.paste(strip, (x, int(y_mid - w / 2)))


def _draw_panel(image: Image.Image, draw: ImageDraw.ImageDraw, font, panel: Panel, box: tuple[int, int, int, int]):
    left, top, right, bottom = box
    legend_h = text.LINE * len(panel.series) + 6
    plot = (left + 72, top + 26, right - 12, bottom - 44 - legend_h)
    px0, py0, px1, py1 = plot
    draw.text((left + 8, top + 5), text.drawable(panel.title), fill=(0, 0, 0), font=font)
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
        tick = _fmt(t)
        draw.text((px0 - 6 - font.getlength(tick), y - 7), tick, fill=(60, 60, 60), font=font)
    _y_label(image, panel.y_label, left + 4, (py0 + py1) / 2)
    for t in _x_ticks(x_lo, x_hi):
        x, _ = xy(t, ylo)
        draw.line([(x, py1), (x, py1 + 4)], fill=(90, 90, 90))
        tick = _fmt(t)
        draw.text((x - font.getlength(tick) / 2, py1 + 6), tick, fill=(60, 60, 60), font=font)
    x_label = text.drawable(panel.x_label)
    draw.text(((px0 + px1) / 2 - font.getlength(x_label) / 2, py1 + 21), x_label, fill=(0, 0, 0), font=font)
    drawn = []
    for k, s in enumerate(panel.series):
        color = s.color or PALETTE[k % len(PALETTE)]
        pts = [xy(x, v) for x, v in zip(_xs(s), s.values) if _finite(v)]
        drawn.append((s, color, pts))
        if len(pts) >= 2:
            if s.dashed:
                _dashed_line(draw, pts, color)
            else:
                draw.line(pts, fill=color, width=2)
        elif pts and s.marker is None:
            x, y = pts[0]
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=color)
    for s, color, pts in sorted(drawn, key=lambda d: d[0].marker in HOLLOW):  # markers over every line
        for x, y in pts:
            _marker(draw, s.marker, x, y, color)
    for k, s in enumerate(panel.series):
        color = drawn[k][1]
        ly = py1 + 42 + text.LINE * k
        if s.dashed:
            _dashed_line(draw, [(px0, ly + 7), (px0 + 26, ly + 7)], color, dash=4)
        else:
            draw.line([(px0, ly + 7), (px0 + 26, ly + 7)], fill=color, width=2)
        _marker(draw, s.marker, px0 + 13, ly + 7, color)
        draw.text((px0 + 32, ly), text.drawable(s.label), fill=(0, 0, 0), font=font)


def render_panels(panels: list[Panel], panel_width: int = 420, height: int = 360) -> np.ndarray:
    """Render panels side by side; returns float32 (H, W, 3) in [0, 1]."""
    if not panels:
        raise ValueError("at least one panel is needed")
    width = panel_width * len(panels)
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font = text.font()
    for k, panel in enumerate(panels):
        _draw_panel(img, draw, font, panel, (k * panel_width, 0, (k + 1) * panel_width, height))
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
            one = {k: (v.replace("{}", name) if isinstance(v, str) else v) for k, v in spec.items()
                   if k not in ("each", "style")}
            if _path(payload, one["y"]) is not None:
                made = _series(one, payload, figure_x)
                if spec.get("style") == "classes":
                    look = CLASS_STYLES[name]
                    for s in made:
                        s.color, s.marker, s.dashed = look["color"], look["marker"], bool(look["dashed"])
                out += made
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
                  x_label=fig.get("x_label", "step"), y_label=p.get("y_label", ""), x_range=x_range)
            for p in fig["panels"]]


def render_figure(name: str, payload: dict, panel_width: int = 420, height: int = 360) -> np.ndarray:
    """Draw figure ``name`` of ``js/figures.json`` from a node's payload; float32 (H, W, 3) in [0, 1]."""
    return render_panels(figure_panels(name, payload), panel_width, height)
