"""The table and chart of a truncation sweep: one row per window, from the per-image records.

Saved latency pairs every image with its a = 0 twin (same prompt, same seed) timed on the same
server in the same run, and compares the sums of their sampling times. An image whose twin ran
on another server or in an earlier run (a resumed sweep, a server that dropped out) is left out
of that column and counted in the notes: times taken under different loads are not comparable.
Quality metrics are columns described by ``Column``; which ones exist is decided by the caller
(devtools/sweep_metrics.py), so a new metric needs no change here.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass

from .sweep import REFERENCE, Window


@dataclass(frozen=True)
class Column:
    key: str  # the value's key in the per-image rows and the table rows
    header: str  # the table's column header
    fmt: str = "{:.3f}"
    chart: str | None = None  # the title of its panel in the trade-off chart; None: not charted


HEAD = [Column("window", "window", "{}"), Column("a", "a", "{}"), Column("images", "images", "{}"),
        Column("saved_latency", "saved latency", "{:.1%}"), Column("timed_pairs", "timed pairs", "{}")]
TAIL = [Column("unet_saved", "UNet work saved", "{:.1%}"), Column("skipped_passes", "skipped passes/image", "{:.1f}"),
        Column("seconds", "s/image", "{:.3f}")]
_ACCOUNTING = {"unet_saved": "saved_fraction", "skipped_passes": "skipped_passes", "seconds": "seconds"}

# why an image has no timing pair (the notes say how many of each)
NO_TWIN, UNTIMED, OTHER_SERVER, OTHER_RUN = ("its a=0 image is missing", "no sampling time was recorded",
                                             "its a=0 twin ran on another server", "its a=0 twin ran in an earlier run")


def l1(a, b) -> float:
    """Mean absolute difference of two images with values in [0, 1] (arrays of one shape)."""
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"images of different shapes: {a.shape} vs {b.shape}")
    return float(np.abs(a - b).mean())


def cosine(u, v) -> float:
    import numpy as np

    u, v = np.asarray(u, dtype=np.float64).ravel(), np.asarray(v, dtype=np.float64).ravel()
    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
    if nu == 0 or nv == 0:
        raise ValueError("cosine of a zero vector is undefined")
    return float(u @ v / (nu * nv))


def timing_pair(row: dict, reference: dict | None) -> tuple[float, float] | str:
    """(seconds, twin's seconds) when ``row`` and its a = 0 twin were timed on one server in one
    run; otherwise the reason they are not comparable."""
    if reference is None:
        return NO_TWIN
    if row.get("seconds") is None or reference.get("seconds") is None:
        return UNTIMED
    if row.get("server") != reference.get("server"):
        return OTHER_SERVER
    if row.get("session") != reference.get("session"):
        return OTHER_RUN
    return row["seconds"], reference["seconds"]


def aggregate(rows: list[dict], windows: list[Window], metrics: list[Column] = (),
              per_window: dict[str, dict[str, float]] | None = None) -> tuple[list[dict], list[str]]:
    """One row per window (means over its images) and the notes on what the numbers leave out.
    ``metrics``: the per-image quality columns (a metric nobody computed for every image of a window
    stays absent, never estimated); ``per_window``: column key -> {window label: value} (FID)."""
    refs = {r["prompt_index"]: r for r in rows if r["window"] == REFERENCE}
    table, left_out = [], Counter()
    for w in windows:
        mine = [r for r in rows if r["window"] == w.label]
        if not mine:
            continue
        row = {"window": w.label, "a": w.a if w.a is not None else "-", "images": len(mine)}
        pairs = []
        for r in mine:
            pair = timing_pair(r, refs.get(r["prompt_index"]))
            if not isinstance(pair, str):
                pairs.append(pair)
            elif w.label != REFERENCE:  # an a = 0 image is its own twin: nothing to leave out
                left_out[pair] += 1
        row["timed_pairs"] = len(pairs)
        if pairs:
            row["saved_latency"] = 1 - sum(t for t, _ in pairs) / sum(t for _, t in pairs)
        for key in [c.key for c in metrics] + list(_ACCOUNTING):
            src = _ACCOUNTING.get(key, key)
            vals = [r[src] for r in mine if r.get(src) is not None]
            if vals and len(vals) == len(mine):
                row[key] = sum(vals) / len(vals)
        for key, values in (per_window or {}).items():
            if w.label in values:
                row[key] = values[w.label]
        table.append(row)
    notes = []
    if left_out:
        why = "; ".join(f"{reason}: {n}" for reason, n in sorted(left_out.items()))
        notes.append(f"saved latency compares each image with its a = 0 twin timed on the same server in the same "
                     f"run; {sum(left_out.values())} image(s) left out ({why})")
    return table, notes


def columns(metrics: list[Column] = ()) -> list[Column]:
    return HEAD + list(metrics) + TAIL


def present_columns(table: list[dict], metrics: list[Column] = ()) -> list[Column]:
    return [c for c in columns(metrics) if any(c.key in r for r in table)]


def table_markdown(table: list[dict], metrics: list[Column] = ()) -> str:
    cols = present_columns(table, metrics)
    lines = ["| " + " | ".join(c.header for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in table:
        lines.append("| " + " | ".join(c.fmt.format(r[c.key]) if c.key in r else "" for c in cols) + " |")
    return "\n".join(lines) + "\n"


def table_csv(table: list[dict], metrics: list[Column] = ()) -> str:
    cols = present_columns(table, metrics)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([c.key for c in cols])
    for r in table:
        w.writerow([r.get(c.key, "") for c in cols])
    return buf.getvalue()


def render_tradeoff(table: list[dict], metrics: list[Column], panel_width: int = 380, height: int = 330):
    """Saved latency (x) against each charted quality metric present (one panel each, one point
    per window, labelled); returns a PIL image. Raises ValueError when there is nothing to draw."""
    from PIL import Image, ImageDraw

    from . import text
    from .chart import PALETTE, _fmt, nice_ticks

    panels = [c for c in metrics if c.chart and any(c.key in r and "saved_latency" in r for r in table)]
    if not panels:
        raise ValueError("no quality metric with a timed window to plot")
    img = Image.new("RGB", (panel_width * len(panels), height), (255, 255, 255))
    draw, font = ImageDraw.Draw(img), text.font()
    for n, col in enumerate(panels):
        pts = [(r["saved_latency"] * 100, r[col.key], r["window"]) for r in table
               if col.key in r and "saved_latency" in r]
        x0, y0, x1, y1 = n * panel_width + 62, 28, (n + 1) * panel_width - 16, height - 44
        draw.text((n * panel_width + 8, 6), text.drawable(col.chart), fill=(0, 0, 0), font=font)
        draw.rectangle((x0, y0, x1, y1), outline=(90, 90, 90))
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        xt, yt = nice_ticks(min(0.0, min(xs)), max(xs)), nice_ticks(min(ys), max(ys))

        def xy(x, y):
            fx = (x - xt[0]) / ((xt[-1] - xt[0]) or 1)
            fy = (y - yt[0]) / ((yt[-1] - yt[0]) or 1)
            return x0 + fx * (x1 - x0), y1 - fy * (y1 - y0)

        for t in yt:
            _, y = xy(xt[0], t)
            draw.line([(x0 + 1, y), (x1 - 1, y)], fill=(235, 235, 235))
            draw.text((x0 - 6 - font.getlength(_fmt(t)), y - 7), _fmt(t), fill=(60, 60, 60), font=font)
        for t in xt:
            x, _ = xy(t, yt[0])
            draw.text((x - font.getlength(_fmt(t)) / 2, y1 + 5), _fmt(t), fill=(60, 60, 60), font=font)
        label = "saved latency (%)"
        draw.text(((x0 + x1) / 2 - font.getlength(label) / 2, y1 + 22), label, fill=(0, 0, 0), font=font)
        line = [xy(x, y) for x, y, _ in sorted(pts)]
        if len(line) > 1:
            draw.line(line, fill=(200, 200, 200), width=1)
        for k, (x, y, name) in enumerate(pts):
            px, py = xy(x, y)
            color = PALETTE[k % len(PALETTE)]
            draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=color)
            name = text.drawable(name)
            lx = px + 6 if px + 6 + font.getlength(name) < (n + 1) * panel_width - 2 else px - 6 - font.getlength(name)
            draw.text((lx, py - 16), name, fill=color, font=font)
    return img
