"""The pure parts of a truncation sweep (the paper's Table 2 for any model and prompt set).

Prompt files, window specs, the job list, the shared work queue that spreads jobs over
several servers, resuming from a results file, and the per-window aggregation. Nothing here
talks to ComfyUI; the HTTP side lives in devtools/sweep.py.
"""

from __future__ import annotations

import csv
import io
import json
import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

REFERENCE = "a=0"  # plain CFG everywhere: the image every other window is compared with


class SweepInputError(ValueError):
    """Bad sweep input; the message says what to change."""


@dataclass(frozen=True)
class PromptItem:
    index: int
    text: str
    seed: int


@dataclass(frozen=True)
class Window:
    label: str  # "a=10", "end=0.6", "adaptive=0.1"
    end: float  # guidance_end fraction (1.0 = plain CFG)
    mode: str = "fixed"
    threshold: float = 0.1
    a: int | None = None  # final steps without text (fixed windows only)


@dataclass(frozen=True)
class Job:
    prompt: PromptItem
    window: Window

    @property
    def key(self) -> str:
        return f"p{self.prompt.index}|{self.window.label}"


# -- inputs ---------------------------------------------------------------------------------
def parse_prompts(text: str, kind: str = "txt", default_seed: int = 0) -> list[PromptItem]:
    """Prompts from a file's text. ``kind``: 'txt' (one per line, '#' comments), 'csv' (a header
    with 'prompt' and optionally 'seed') or 'jsonl' ({"prompt": ..., "seed": ...} per line).
    A prompt without a seed gets ``default_seed``, so each window sees the same noise."""
    rows: list[tuple[str, object]] = []
    if kind == "txt":
        rows = [(line.strip(), None) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    elif kind == "csv":
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames is None or "prompt" not in reader.fieldnames:
            raise SweepInputError("the CSV prompt file needs a header row with a 'prompt' column (and optionally "
                                  f"'seed'); got columns {reader.fieldnames}")
        rows = [((r.get("prompt") or "").strip(), r.get("seed")) for r in reader]
    elif kind == "jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SweepInputError(f"line {n} of the JSONL prompt file is not JSON ({exc}); write one "
                                      '{"prompt": "...", "seed": 1} object per line') from None
            if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
                raise SweepInputError(f'line {n} of the JSONL prompt file needs a "prompt" string')
            rows.append((obj["prompt"].strip(), obj.get("seed")))
    else:
        raise SweepInputError(f"unknown prompt file kind {kind!r}: use a .txt, .csv or .jsonl file")
    items = []
    for text_, seed in rows:
        if not text_:
            continue
        try:
            s = default_seed if seed in (None, "") else int(seed)
        except (TypeError, ValueError):
            raise SweepInputError(f"seed {seed!r} of prompt {text_!r} is not a whole number") from None
        if s < 0:
            raise SweepInputError(f"seed {s} of prompt {text_!r} is negative; seeds are 0 or more")
        items.append(PromptItem(len(items), text_, s))
    if not items:
        raise SweepInputError("the prompt file has no prompts: write one prompt per line (or a CSV with a "
                              "'prompt' column, or JSONL with a \"prompt\" key)")
    return items


def read_prompt_file(path, default_seed: int = 0) -> list[PromptItem]:
    path = Path(path)
    if not path.is_file():
        raise SweepInputError(f"prompt file {path} does not exist; pass --prompts with a .txt/.csv/.jsonl file")
    kind = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}.get(path.suffix.lower(), "txt")
    return parse_prompts(path.read_text(encoding="utf-8"), kind, default_seed)


def parse_window(spec: str, steps: int) -> Window:
    """'10' or 'a=10': the last 10 steps without text; 'end=0.6': guidance_end = 0.6;
    'adaptive=0.1': the adaptive window with that threshold."""
    spec = str(spec).strip()
    name, _, value = spec.partition("=") if "=" in spec else ("a", "", spec)
    name = name.strip().lower()
    try:
        v = float(value)
    except ValueError:
        raise SweepInputError(f"window {spec!r} is not understood: write a=10 (final steps without text), "
                              "end=0.6 (guidance_end fraction) or adaptive=0.1 (threshold)") from None
    if name == "a":
        if not v.is_integer() or not 0 <= v <= steps:
            raise SweepInputError(f"window {spec!r}: a counts the final steps without text, a whole number "
                                  f"from 0 to steps ({steps}); use end=FRACTION for a fraction")
        a = int(v)
        return Window(f"a={a}", (steps - a) / steps, a=a)
    if name == "end":
        if not (math.isfinite(v) and 0.0 <= v <= 1.0):
            raise SweepInputError(f"window {spec!r}: guidance_end must be a fraction in [0, 1] (1 = plain CFG, "
                                  "0.4 = the paper's default)")
        a = steps - int(round(v * steps))
        return Window(f"end={v:g}", v, a=a)
    if name == "adaptive":
        if not (math.isfinite(v) and v > 0):
            raise SweepInputError(f"window {spec!r}: the adaptive threshold must be > 0 (try adaptive=0.1)")
        return Window(f"adaptive={v:g}", 1.0, mode="adaptive", threshold=v)
    raise SweepInputError(f"window {spec!r}: unknown kind {name!r}; use a=, end= or adaptive=")


def parse_windows(specs: list[str], steps: int) -> list[Window]:
    """The windows in order, the reference a = 0 first (added when missing), duplicates dropped."""
    if steps < 1:
        raise SweepInputError(f"steps must be at least 1 (got {steps})")
    out = [Window(REFERENCE, 1.0, a=0)]
    for spec in specs:
        w = parse_window(spec, steps)
        if w.mode == "fixed" and w.a == 0:
            continue
        if all(w.label != o.label for o in out):
            out.append(w)
    return out


def build_jobs(prompts: list[PromptItem], windows: list[Window]) -> list[Job]:
    """Every (prompt, window) once, prompt by prompt (a prompt's images finish close together)."""
    return [Job(p, w) for p in prompts for w in windows]


# -- distribution ---------------------------------------------------------------------------
class WorkQueue:
    """Jobs shared by several servers. A job is pending, in flight on one server, or done;
    ``drop(server)`` puts a lost server's unfinished jobs back in front. Thread-safe."""

    def __init__(self, jobs: list[Job], done: set[str] = frozenset()):
        self._lock = threading.Lock()
        self.pending = deque(j for j in jobs if j.key not in done)
        self.in_flight: dict[str, tuple[Job, str]] = {}
        self.done: set[str] = {j.key for j in jobs if j.key in done}
        self.requeued = 0

    def take(self, server: str) -> Job | None:
        with self._lock:
            if not self.pending:
                return None
            job = self.pending.popleft()
            self.in_flight[job.key] = (job, server)
            return job

    def complete(self, job: Job, server: str) -> bool:
        """Mark done; False (and nothing changes) unless the job is in flight on ``server``."""
        with self._lock:
            entry = self.in_flight.get(job.key)
            if entry is None or entry[1] != server or job.key in self.done:
                return False
            del self.in_flight[job.key]
            self.done.add(job.key)
            return True

    def give_back(self, job: Job, server: str) -> None:
        with self._lock:
            entry = self.in_flight.get(job.key)
            if entry is not None and entry[1] == server:
                del self.in_flight[job.key]
                self.pending.appendleft(job)
                self.requeued += 1

    def drop(self, server: str) -> list[Job]:
        """Return a lost server's unfinished jobs to the front of the queue."""
        with self._lock:
            lost = [job for job, s in self.in_flight.values() if s == server]
            for job in lost:
                del self.in_flight[job.key]
            self.pending.extendleft(reversed(lost))
            self.requeued += len(lost)
            return lost

    @property
    def finished(self) -> bool:
        with self._lock:
            return not self.pending and not self.in_flight


class Progress:
    """done/total, rate and ETA of the jobs run in this session."""

    def __init__(self, total: int, already: int = 0, clock=time.monotonic):
        self.total, self.already, self.done, self.clock = total, already, already, clock
        self.t0 = clock()

    def step(self) -> str:
        self.done += 1
        return self.line()

    def line(self) -> str:
        new, dt = self.done - self.already, max(self.clock() - self.t0, 1e-9)
        rate = new / dt
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta_s = f"{eta:.0f}s" if math.isfinite(eta) else "?"
        return f"{self.done}/{self.total} images, {rate * 60:.1f}/min, ETA {eta_s}"


# -- results file ---------------------------------------------------------------------------
def load_results(path, config: dict) -> dict[str, dict]:
    """Records already in a results file (JSONL: a header with the sweep's settings, then one
    record per finished job). A torn last line (an interrupted write) is ignored. Raises when the
    file belongs to a sweep with other settings."""
    path = Path(path)
    if not path.exists():
        return {}
    records: dict[str, dict] = {}
    lines = path.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines) - 1:
                continue
            raise SweepInputError(f"{path} line {n + 1} is damaged; remove that line to resume") from None
        if "sweep" in obj:
            if obj["sweep"] != config:
                diff = sorted(k for k in set(config) | set(obj["sweep"]) if config.get(k) != obj["sweep"].get(k))
                raise SweepInputError(f"{path} holds a sweep with other settings ({', '.join(diff)}); pass a "
                                      "new --out folder, or the same settings to resume it")
        elif "key" in obj:
            records.setdefault(obj["key"], obj)
    return records


def drop_torn_tail(path) -> None:
    """Cut an unfinished last line (an interrupted write) so new records start on a fresh line."""
    path = Path(path)
    if path.exists():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            path.write_bytes(data[: data.rfind(b"\n") + 1])


def record_line(obj: dict) -> str:
    return json.dumps(obj, sort_keys=True) + "\n"


# -- metrics and the table ------------------------------------------------------------------
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


COLUMNS = [  # (key, header, format); the paper's Table 2 plus the node's own accounting
    ("window", "window", "{}"), ("a", "a", "{}"), ("images", "images", "{}"),
    ("image_clip", "Image-CLIPScore", "{:.3f}"), ("l1", "L1", "{:.3f}"),
    ("saved_latency", "saved latency", "{:.1%}"), ("fid", "FID", "{:.3f}"),
    ("text_clip", "Text-CLIPScore", "{:.3f}"), ("unet_saved", "UNet work saved", "{:.1%}"),
    ("skipped_passes", "skipped passes/image", "{:.1f}"), ("seconds", "s/image", "{:.3f}"),
]


def aggregate(rows: list[dict], windows: list[Window], fid: dict | None = None) -> list[dict]:
    """One row per window: means over its images. Saved latency = 1 - (time of this window's
    images) / (time of the same prompts' a = 0 images). Metrics nobody computed stay absent."""
    ref_time = {r["prompt_index"]: r["seconds"] for r in rows if r["window"] == REFERENCE}
    out = []
    for w in windows:
        mine = [r for r in rows if r["window"] == w.label]
        if not mine:
            continue
        row = {"window": w.label, "a": w.a if w.a is not None else "-", "images": len(mine)}
        paired = [r for r in mine if r["prompt_index"] in ref_time]
        if paired:
            row["saved_latency"] = 1 - sum(r["seconds"] for r in paired) / sum(ref_time[r["prompt_index"]]
                                                                              for r in paired)
        for key, src in (("image_clip", "image_clip"), ("l1", "l1"), ("text_clip", "text_clip"),
                         ("unet_saved", "saved_fraction"), ("skipped_passes", "skipped_passes"),
                         ("seconds", "seconds")):
            vals = [r[src] for r in mine if r.get(src) is not None]
            if vals and len(vals) == len(mine):
                row[key] = sum(vals) / len(vals)
        if fid and w.label in fid:
            row["fid"] = fid[w.label]
        out.append(row)
    return out


def present_columns(table: list[dict]) -> list[tuple[str, str, str]]:
    return [c for c in COLUMNS if any(c[0] in r for r in table)]


def table_markdown(table: list[dict]) -> str:
    cols = present_columns(table)
    lines = ["| " + " | ".join(h for _, h, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in table:
        lines.append("| " + " | ".join(f.format(r[k]) if k in r else "" for k, _, f in cols) + " |")
    return "\n".join(lines) + "\n"


def table_csv(table: list[dict]) -> str:
    cols = present_columns(table)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([k for k, _, _ in cols])
    for r in table:
        w.writerow([r.get(k, "") for k, _, _ in cols])
    return buf.getvalue()


QUALITY = [("l1", "L1 to a=0 (lower is closer)"), ("image_clip", "Image-CLIPScore to a=0"),
           ("text_clip", "Text-CLIPScore"), ("fid", "FID")]


def render_tradeoff(table: list[dict], panel_width: int = 360, height: int = 320):
    """Saved latency (x) against each quality metric present (one panel each, one point per
    window, labelled); returns a PIL image."""
    from PIL import Image, ImageDraw, ImageFont

    from .chart import PALETTE, _fmt, nice_ticks

    panels = [(k, t) for k, t in QUALITY if any(k in r for r in table)]
    if not panels:
        raise ValueError("no quality metric to plot")
    img = Image.new("RGB", (panel_width * len(panels), height), (255, 255, 255))
    draw, font = ImageDraw.Draw(img), ImageFont.load_default()
    for n, (key, title) in enumerate(panels):
        pts = [(r["saved_latency"] * 100, r[key], r["window"]) for r in table if key in r and "saved_latency" in r]
        x0, y0, x1, y1 = n * panel_width + 56, 26, (n + 1) * panel_width - 14, height - 40
        draw.text((n * panel_width + 8, 6), title, fill=(0, 0, 0), font=font)
        draw.rectangle((x0, y0, x1, y1), outline=(90, 90, 90))
        xs, ys = [p[0] for p in pts] or [0.0], [p[1] for p in pts] or [0.0]
        xt, yt = nice_ticks(min(0.0, min(xs)), max(xs)), nice_ticks(min(ys), max(ys))

        def xy(x, y):
            fx = (x - xt[0]) / ((xt[-1] - xt[0]) or 1)
            fy = (y - yt[0]) / ((yt[-1] - yt[0]) or 1)
            return x0 + fx * (x1 - x0), y1 - fy * (y1 - y0)

        for t in yt:
            _, y = xy(xt[0], t)
            draw.line([(x0 + 1, y), (x1 - 1, y)], fill=(235, 235, 235))
            draw.text((n * panel_width + 4, y - 6), _fmt(t), fill=(60, 60, 60), font=font)
        for t in xt:
            x, _ = xy(t, yt[0])
            draw.text((x - 8, y1 + 4), _fmt(t), fill=(60, 60, 60), font=font)
        draw.text(((x0 + x1) // 2 - 40, y1 + 20), "saved latency %", fill=(0, 0, 0), font=font)
        line = [xy(x, y) for x, y, _ in sorted(pts)]
        if len(line) > 1:
            draw.line(line, fill=(200, 200, 200), width=1)
        for k, (x, y, label) in enumerate(pts):
            px, py = xy(x, y)
            color = PALETTE[k % len(PALETTE)]
            draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=color)
            draw.text((px + 6, py - 12), label, fill=color, font=font)
    return img
