"""Quality metrics of a sweep's images. ``METRICS`` is the one place where a metric is added.

Each ``Metric`` names its column (key, header, format, chart title), the command-line options that
give it its model, and ``make(args, context)``, which returns its scorer or raises ``Unavailable``
with the reason it is left out (printed by the run and written in summary.md). A scorer of a
per-image metric has ``score(item) -> float | None`` (``Item``: the image, its a = 0 twin, the
prompt); one of a per-window metric (FID) has ``score_windows(rows, out_dir) -> {window: value}``.

* L1 to the a = 0 image of the same prompt: always (pixels in [0, 1]).
* Image-CLIPScore (cosine of the image embeddings with the a = 0 image): with a CLIP vision model
  ComfyUI can load (--clip-vision), embedded by ComfyUI's own CLIPVisionLoader and CLIPVisionEncode
  run as a graph by the in-process executor (devtools/harness.py): core ComfyUI has no output node
  that returns an embedding over HTTP.
* Text-CLIPScore (100 x cosine of image and prompt, as the paper reports it): with a local
  transformers CLIP folder that has both towers (--clip-hf); opened with local_files_only.
* FID of each window's images against a reference folder: with torchmetrics installed and the
  Inception weights file given (--fid-weights).
* Toy-CLIPScore (image to the a = 0 image, and text) from the text and image towers of ShapeFirst
  World (docs/world.md), given its parameter folder (--toy-clip devtools/world/params): the paper's
  Image- and Text-CLIPScore for the world's model, plain cosines.

Adding a metric (e.g. an image-text score from a small model of one's own): write its scorer and
append a ``Metric`` to ``METRICS`` with its option; the command line, the table, the CSV, the chart
and the "left out" line follow from the entry. Nothing downloads weights, and a metric whose model
is missing is left out, never estimated. This module imports only the standard library at the top,
so ``sweep.py --help`` can list the options without the runtime.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from shapefirst.sweep_table import Column

from .sweep_scorers import (FidScore, GraphClipVision, HFTextClip, ImageClipScore, Item, L1Score, NodeClipVision,
                            TextClipScore, ToyClip, load_image)

LOG = logging.getLogger("shapefirst.sweep")

__all__ = ["METRICS", "Metric", "Option", "Unavailable", "Item", "prepare", "score", "load_image",
           "GraphClipVision", "NodeClipVision", "HFTextClip"]


class Unavailable(Exception):
    """A metric cannot run in this sweep; the message says why (and what would enable it)."""


@dataclass(frozen=True)
class Option:
    flag: str  # "--clip-vision"
    help: str
    metavar: str = "PATH"

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class Metric:
    column: Column
    make: Callable  # (args, context) -> scorer; raises Unavailable
    options: tuple[Option, ...] = ()
    per_window: bool = False  # scorer.score_windows(rows, out_dir) instead of scorer.score(item)


@dataclass
class Context:
    """What a metric's ``make`` may need besides the options: where the sweep writes, and an
    in-process ComfyUI (booted on first use, for metrics that run ComfyUI nodes)."""
    out_dir: Path
    boot_harness: Callable | None = None
    _harness: object = field(default=None, repr=False)

    def harness(self):
        if self._harness is None:
            self._harness = self.boot_harness()
        return self._harness


def _need(args, option: str, what: str):
    value = getattr(args, option.lstrip("-").replace("-", "_"), None)
    if not value:
        raise Unavailable(f"no {option} given ({what})")
    return value


def _l1(args, ctx):
    return L1Score()


def _image_clip(args, ctx):
    name = _need(args, "--clip-vision", "a CLIP vision model ComfyUI's CLIPVisionLoader can load")
    return ImageClipScore(GraphClipVision(ctx.harness(), name))


def _text_clip(args, ctx):
    return TextClipScore(HFTextClip(_need(args, "--clip-hf", "a local transformers CLIP folder with both towers")))


def _fid(args, ctx):
    weights = Path(_need(args, "--fid-weights", "the Inception weights file of torchmetrics' FID"))
    if not weights.is_file():
        raise FileNotFoundError(f"--fid-weights {weights} does not exist; give the Inception weights file or leave "
                                "the option out (FID is then not computed)")
    try:
        import torchmetrics  # noqa: F401
    except ImportError:
        raise Unavailable("torchmetrics is not installed (pip install torchmetrics)") from None
    return FidScore(weights, getattr(args, "fid_reference", None))


def _toy_clip(args, ctx):
    folder = Path(_need(args, "--toy-clip", "the parameter folder of ShapeFirst World, devtools/world/params"))
    if not (folder / "world.json").is_file():
        raise FileNotFoundError(f"--toy-clip {folder} has no world.json; give ShapeFirst World's parameter folder "
                                "(devtools/world/params) or leave the option out (Toy-CLIPScore is then not computed)")
    return ToyClip.shared(folder)


def _toy_image(args, ctx):
    return ImageClipScore(_toy_clip(args, ctx))


def _toy_text(args, ctx):
    return TextClipScore(_toy_clip(args, ctx))


METRICS: list[Metric] = [
    Metric(Column("l1", "L1", "{:.3f}", "L1 to a=0 (lower is closer)"), _l1),
    Metric(Column("image_clip", "Image-CLIPScore", "{:.3f}", "Image-CLIPScore to a=0"), _image_clip,
           (Option("--clip-vision", "CLIP vision .safetensors for Image-CLIPScore (ComfyUI's CLIPVisionLoader; a "
                   "file path or a name in models/clip_vision)", "FILE"),)),
    Metric(Column("text_clip", "Text-CLIPScore", "{:.3f}", "Text-CLIPScore"), _text_clip,
           (Option("--clip-hf", "local transformers CLIP folder (both towers) for Text-CLIPScore", "DIR"),)),
    Metric(Column("fid", "FID", "{:.3f}", "FID"), _fid,
           (Option("--fid-weights", "Inception weights file for torchmetrics' FID", "FILE"),
            Option("--fid-reference", "folder of reference images for FID (default: the a=0 images)", "DIR")),
           per_window=True),
    Metric(Column("toy_image", "Toy-CLIPScore (image)", "{:.3f}", "Toy-CLIPScore (image) to a=0"), _toy_image,
           (Option("--toy-clip", "ShapeFirst World's parameter folder (devtools/world/params) for Toy-CLIPScore, "
                   "image to a=0 and text (docs/world.md)", "DIR"),)),
    Metric(Column("toy_text", "Toy-CLIPScore (text)", "{:.3f}", "Toy-CLIPScore (text)"), _toy_text),
]


def prepare(args, ctx: Context, metrics: list[Metric] | None = None):
    """(active [(metric, scorer)], left_out [(metric, reason)]). A metric whose option names a file
    that does not exist raises FileNotFoundError: the sweep stops before anything is queued."""
    active, left_out = [], []
    for m in METRICS if metrics is None else metrics:
        try:
            active.append((m, m.make(args, ctx)))
        except Unavailable as exc:
            left_out.append((m, str(exc)))
    return active, left_out


def score(records: dict[str, dict], out_dir: Path, active) -> tuple[list[dict], dict[str, dict[str, float]]]:
    """Per-image rows (each record with its metric values) and the per-window values (key -> {window: value})."""
    from shapefirst.sweep import REFERENCE

    rows = sorted(records.values(), key=lambda r: (r["prompt_index"], r["window"] != REFERENCE, r["key"]))
    ref = {r["prompt_index"]: r for r in rows if r["window"] == REFERENCE}
    ref_images: dict[int, object] = {}
    out = []
    for r in rows:
        r = dict(r)
        base = ref.get(r["prompt_index"])
        if base is not None and r["prompt_index"] not in ref_images:
            ref_images[r["prompt_index"]] = load_image(out_dir / base["image"])
        item = Item(load_image(out_dir / r["image"]), ref_images.get(r["prompt_index"]), r["prompt"],
                    base["image"] if base is not None else None)
        for metric, scorer in active:
            if not metric.per_window:
                value = scorer.score(item)
                if value is not None:
                    r[metric.column.key] = value
        out.append(r)
    per_window = {m.column.key: scorer.score_windows(out, out_dir) for m, scorer in active if m.per_window}
    return out, per_window
