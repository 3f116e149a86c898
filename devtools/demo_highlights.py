"""The top of the demo's summary when the SD1.5 workflows ran on ShapeFirst World: its pictures.

Three workflows show what the pack is about: shapes drawn from text, the [EOS] swap (Fig. 4) and
truncated guidance beside plain CFG (Fig. 10 / Table 2). Their images (64 px) are copied enlarged
(nearest neighbour, so the pixels stay the model's) to ``highlights/`` and shown with what they
are; the truncation sweep gets a table of each image's guided steps, the model work saved and its
mean absolute difference to the plain-CFG image, measured on the saved PNGs.
"""

from __future__ import annotations

import os
from pathlib import Path

SCALE = 3  # enlargement of the 64 px images in the summary
GAP = 4  # px between the panels of a strip (before enlarging)
# (workflow, heading, what the picture shows: the paper's claim, not a result on this model)
HIGHLIGHTS = (
    ("fast_txt2img_truncated_cfg", "Shapes from text",
     ("What the World draws for the prompt below, with truncated guidance (how often it draws the named "
      "shape, colour and place is measured in docs/world.md).")),
    ("fig4_eos_swap_bird_chair", "The [EOS] swap (the paper's Fig. 4)",
     ("Left to right: prompt A, prompt B, A's tokens with B's [EOS], B's tokens with A's [EOS] (same seed). "
      "The paper finds that the swapped images follow the prompt that gave the [EOS] (its shape), while "
      "attributes of the other prompt may leak through; docs/world.md says how far this model follows.")),
    ("fig10_table2_truncation_sweep", "Truncated guidance beside plain CFG (the paper's Fig. 10 / Table 2)",
     ("Left to right: guidance removed from the last a steps, a growing from 0 (plain CFG, the first image) "
      "to every step (no text at all). The paper finds the image nearly unchanged while a stays in the "
      "second (detail) stage.")),
)


def _strip(paths: list[Path]):
    """The images side by side on white, GAP px apart, enlarged SCALE times (a PIL image)."""
    from PIL import Image

    images = [Image.open(p).convert("RGB") for p in paths]
    width = sum(i.width for i in images) + GAP * (len(images) - 1)
    strip = Image.new("RGB", (width, max(i.height for i in images)), "white")
    x = 0
    for image in images:
        strip.paste(image, (x, 0))
        x += image.width + GAP
    return strip.resize((strip.width * SCALE, strip.height * SCALE), Image.NEAREST)


def mean_abs_difference(a: Path, b: Path) -> float | None:
    """Mean |a - b| of two images of one size, as a share of the full range (None: sizes differ)."""
    import numpy as np
    from PIL import Image

    x, y = (np.asarray(Image.open(p).convert("RGB"), dtype=np.float64) / 255 for p in (a, b))
    return float(np.abs(x - y).mean()) if x.shape == y.shape else None


def _sweep_table(images: list[Path], reports: list[dict]) -> list[str]:
    lines = ["| image | steps with text | model work saved | mean abs. difference to plain CFG |", "|---|---|---|---|"]
    for k, (path, report) in enumerate(zip(images, reports), 1):
        diff = mean_abs_difference(images[0], path)
        lines.append(f"| {k} | {report.get('guided_evaluations', 0)} of {report.get('evaluations', 0)} | "
                     f"{100 * report.get('saved_fraction', 0.0):.1f}% | "
                     f"{'-' if diff is None else f'{100 * diff:.1f}%'} |")
    return lines


def highlights(runs: dict, out: Path) -> list[str]:
    """Markdown lines for the summary's top. ``runs``: workflow -> (images, guidance reports in node
    order, prompt lines); workflows that did not run are left out."""
    lines = []
    for name, heading, text in HIGHLIGHTS:
        images, reports, words = runs.get(name, ([], [], []))
        if not images:
            continue
        dest = out / "highlights" / f"{name}.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        _strip(images).save(dest)
        rel = Path(os.path.relpath(dest, out)).as_posix()
        lines += [f"### {heading}", "", f"![{name}]({rel})", "", text + f" ([{name}](#{name}))", ""]
        lines += [f"- {w}" for w in words] + ([""] if words else [])
        if name == "fig10_table2_truncation_sweep" and len(reports) == len(images) > 1:
            lines += _sweep_table(images, reports) + [""]
    return (["## What ShapeFirst World shows", ""] + lines) if lines else []
