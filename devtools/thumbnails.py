"""Thumbnails of the shipped SD1.5 workflows, rendered by each workflow on ShapeFirst World.

    python3 scripts/make_thumbnails.py            # (re)write workflows/<name>.jpg for every SD1.5 workflow
    python3 scripts/make_thumbnails.py --check    # say which shipped thumbnails differ from a new render

ComfyUI's template browser shows ``<workflow>.jpg`` beside a pack's workflow as its picture. Each
thumbnail is what the workflow itself draws on the World: its graph as shipped (its samplers, seeds
and step counts) with the World's checkpoint, 64 px latents and the prompts in the World's words
(``demo_world``), run in the in-process ComfyUI with one torch thread. The images of its first node
that shows sampled pictures (64 px high; else its first node with any image, e.g. a chart) are cut
into their panels where ImageStitch put several side by side, laid out in a grid and fitted into a
white square, saved as a small baseline JPEG without metadata. The same parameters, workflow and
ComfyUI give the same pixels (tests/test_thumbnails.py renders some again and compares).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

from .demo_world import WORLD_SIZE

SIDE = 256  # px, the thumbnail's square
GAP = 4  # px between panels in the grid (before fitting)
STITCH_GAP = 8  # px ImageStitch puts between images in the shipped workflows (white)
QUALITY = 85


def world_prompt(workflow: dict, object_info: dict, ckpt_name: str, size: int = WORLD_SIZE) -> dict:
    """The API prompt a shipped SD1.5 workflow (UI format) runs on the World: its checkpoint, ``size``
    px latents, its words; steps, seeds and samplers as shipped."""
    from . import world
    from .workflows.convert import apply_overrides, ui_to_api

    return apply_overrides(world.in_world_words(ui_to_api(workflow, object_info)), ckpt=ckpt_name, size=size)


def _load(image: dict):
    import folder_paths
    from PIL import Image

    root = folder_paths.get_output_directory() if image.get("type") == "output" else folder_paths.get_temp_directory()
    with Image.open(Path(root) / image.get("subfolder", "") / image["filename"]) as im:
        return im.convert("RGB")


def pictures(ui: dict) -> list:
    """The images (PIL) of a run's first node showing sampled pictures, else of its first node with images."""
    from .demo_report import node_order

    nodes = [(nid, [_load(i) for i in payload.get("images", [])])
             for nid, payload in sorted(ui.items(), key=lambda item: node_order(item[0]))]
    nodes = [(nid, images) for nid, images in nodes if images]
    for _, images in nodes:
        if all(im.height == WORLD_SIZE for im in images):
            return images
    return nodes[0][1] if nodes else []


def panels(image) -> list:
    """``image`` cut into its panels when it is ImageStitch's strip of 64 px pictures, else [image]."""
    step = WORLD_SIZE + STITCH_GAP
    n = (image.width + STITCH_GAP) // step
    if image.height != WORLD_SIZE or n < 2 or n * step - STITCH_GAP != image.width:
        return [image]
    return [image.crop((k * step, 0, k * step + WORLD_SIZE, WORLD_SIZE)) for k in range(n)]


def layout(images: list):
    """The panels in a near-square grid on white, fitted into a SIDE x SIDE white square (PIL RGB)."""
    from PIL import Image

    cells = [p for im in images for p in panels(im)]
    if not cells:
        raise ValueError("the workflow showed no image to make a thumbnail of")
    cols = math.ceil(math.sqrt(len(cells)))
    rows = math.ceil(len(cells) / cols)
    cw, ch = max(c.width for c in cells), max(c.height for c in cells)
    grid = Image.new("RGB", (cols * cw + (cols - 1) * GAP, rows * ch + (rows - 1) * GAP), "white")
    for k, cell in enumerate(cells):
        r, c = divmod(k, cols)
        grid.paste(cell, (c * (cw + GAP) + (cw - cell.width) // 2, r * (ch + GAP) + (ch - cell.height) // 2))
    scale = min(SIDE / grid.width, SIDE / grid.height)
    size = (max(1, round(grid.width * scale)), max(1, round(grid.height * scale)))
    fitted = grid.resize(size, Image.NEAREST if scale == int(scale) else Image.LANCZOS)
    square = Image.new("RGB", (SIDE, SIDE), "white")
    square.paste(fitted, ((SIDE - size[0]) // 2, (SIDE - size[1]) // 2))
    return square


def encode(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=QUALITY, optimize=True)  # baseline, no EXIF: the bytes follow the pixels
    return buf.getvalue()


def render(harness, object_info: dict, path: Path, ckpt_name: str) -> bytes:
    """The JPEG thumbnail of the shipped workflow at ``path``, drawn by it on the World."""
    prompt = world_prompt(json.loads(Path(path).read_text()), object_info, ckpt_name)
    try:
        result = harness.run(prompt)
    finally:
        harness.release()
    return encode(layout(pictures(result.ui)))


def thumbnail_path(workflow: Path) -> Path:
    return Path(workflow).with_suffix(".jpg")


def main(only: list[str] | None = None, check: bool = False) -> int:
    import tempfile
    import time

    import torch

    from . import boot, world
    from .demo_world import sd15_workflows
    from .harness import ComfyHarness
    from .paths import WORKFLOWS

    boot.quiet_logs()
    torch.set_num_threads(1)  # the pixels do not depend on the machine's core count
    files = [p for p in sd15_workflows(WORKFLOWS) if not only or p.stem in only or p.name in only]
    stale = []
    with tempfile.TemporaryDirectory(prefix="shapefirst-thumbnails-") as tmp:
        ckpt = world.checkpoint(boot.runtime().models)  # the host's model cache, assembled there once
        h = ComfyHarness(Path(tmp) / "work", checkpoints_dir=ckpt.parent).boot()
        import comfy.utils

        comfy.utils.set_progress_bar_enabled(False)
        info = h.object_info()
        for path in files:
            t0 = time.perf_counter()
            data = render(h, info, path, ckpt.name)
            print(f"{path.stem}: ran in {time.perf_counter() - t0:.1f}s", flush=True)
            target = thumbnail_path(path)
            same = target.exists() and target.read_bytes() == data
            if check:
                stale += [] if same else [target.name]
                print(f"{target.name}: {'up to date' if same else 'differs from a new render'}")
            elif not same:
                target.write_bytes(data)
                print(f"wrote {target} ({len(data) / 1024:.1f} KiB)")
            else:
                print(f"{target.name}: unchanged")
    return 1 if stale else 0
