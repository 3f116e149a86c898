"""Drawing a scene: anti-aliased flat-colour shapes on plain or textured backgrounds (numpy + PIL).

A scene is the plain dict ``devtools.world.scenes`` samples; drawing is deterministic given it
(every random choice, jitter included, is made when the scene is sampled).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64  # image side in pixels
_SS = 4  # supersampling factor of the shape masks


def _polygon(shape: str, r: float) -> list[tuple[float, float]] | None:
    """Vertices (unit: pixels, centred at 0) of a polygonal shape of half-extent ``r``."""
    if shape == "square":
        s = 0.82 * r
        return [(-s, -s), (s, -s), (s, s), (-s, s)]
    if shape == "triangle":
        return [(1.08 * r * math.cos(a), 1.08 * r * math.sin(a) + 0.16 * r)
                for a in (math.radians(d) for d in (-90, 30, 150))]
    if shape == "star":
        return [((r if i % 2 == 0 else 0.45 * r) * math.cos(math.radians(-90 + 36 * i)),
                 (r if i % 2 == 0 else 0.45 * r) * math.sin(math.radians(-90 + 36 * i))) for i in range(10)]
    if shape == "heart":
        pts = []
        for i in range(48):
            t = 2 * math.pi * i / 48
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((x * r / 16.5, -(y + 2.5) * r / 16.5))
        return pts
    if shape == "cross":
        a, w = 0.95 * r, 0.34 * r
        return [(-w, -a), (w, -a), (w, -w), (a, -w), (a, w), (w, w), (w, a), (-w, a), (-w, w), (-a, w),
                (-a, -w), (-w, -w)]
    if shape == "diamond":
        return [(0, -r), (0.72 * r, 0), (0, r), (-0.72 * r, 0)]
    return None


def shape_mask(shape: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """Coverage in [0, 1] (SIZE x SIZE float32) of one shape, anti-aliased by supersampling
    (drawn in the shape's bounding box only)."""
    x0, y0 = max(0, int(math.floor(cx - r - 2))), max(0, int(math.floor(cy - r - 2)))
    x1, y1 = min(SIZE, int(math.ceil(cx + r + 2))), min(SIZE, int(math.ceil(cy + r + 2)))
    big = Image.new("L", ((x1 - x0) * _SS, (y1 - y0) * _SS), 0)
    draw = ImageDraw.Draw(big)
    ca, sa = math.cos(angle), math.sin(angle)

    def place(pts):
        return [((cx - x0 + x * ca - y * sa) * _SS, (cy - y0 + x * sa + y * ca) * _SS) for x, y in pts]

    def disc(x, y, rad, fill):
        draw.ellipse([x - rad * _SS, y - rad * _SS, x + rad * _SS, y + rad * _SS], fill=fill)

    if shape in ("circle", "moon"):
        disc((cx - x0) * _SS, (cy - y0) * _SS, r, 255)
        if shape == "moon":
            disc(*place([(0.5 * r, -0.2 * r)])[0], 0.82 * r, 0)  # the bite
    else:
        draw.polygon(place(_polygon(shape, r)), fill=255)
    a = np.asarray(big, dtype=np.float32) / 255.0
    out = np.zeros((SIZE, SIZE), dtype=np.float32)
    out[y0:y1, x0:x1] = a.reshape(y1 - y0, _SS, x1 - x0, _SS).mean(axis=(1, 3))
    return out


_GRID = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)


def background(bg: dict) -> np.ndarray:
    """The background (SIZE x SIZE x 3 float32 in [0, 255])."""
    base = np.full((SIZE, SIZE, 3), bg["level"], dtype=np.float32)
    if bg["kind"] == "striped":
        yy, xx = _GRID
        a = bg["angle"]
        u = (xx * math.cos(a) + yy * math.sin(a) + bg["phase"]) / bg["period"]
        on = (np.sin(2 * math.pi * u) > 0).astype(np.float32)
        base += on[..., None] * bg["contrast"]
    elif bg["kind"] == "dotted":
        yy, xx = _GRID
        p = bg["period"]
        dx = (xx + bg["phase"]) % p - p / 2
        dy = (yy + bg["phase"]) % p - p / 2
        d = np.sqrt(dx * dx + dy * dy)
        base += np.clip(bg["dot"] + 0.5 - d, 0, 1)[..., None] * bg["contrast"]
    return base


def render(scene: dict) -> np.ndarray:
    """The scene's image, SIZE x SIZE x 3 uint8."""
    img = background(scene["background"])
    for o in scene["objects"]:
        a = shape_mask(o["shape"], o["x"], o["y"], o["r"], o["angle"])[..., None]
        img = img * (1 - a) + np.asarray(o["rgb"], dtype=np.float32) * a
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
