"""The shipped SD1.5 workflows' thumbnails (workflows/<name>.jpg) and their World copies.

Every SD1.5 workflow has a small square JPEG beside it and nothing else does; the layout cuts
ImageStitch strips into panels and fits them into the square; the World copies of a workflow
change only its checkpoint, latent size and prompts, and never the workflow given; and the shipped
thumbnails are what their workflows draw on ShapeFirst World now (rendered again through the real
ComfyUI and compared), so new World parameters or a changed workflow without new thumbnails fail
here (regenerate with scripts/make_thumbnails.py).
"""

from __future__ import annotations

import copy
import json

import pytest

from devtools import paths
from devtools.demo_world import SD15_CHECKPOINT, is_sd15, sd15_workflows, world_copy

PIL = pytest.importorskip("PIL")
from PIL import Image

from devtools import thumbnails

SD15 = sd15_workflows(paths.WORKFLOWS)
MAX_BYTES = 24 * 1024


def test_the_sd15_workflows_are_the_ones_that_load_only_an_sd15_checkpoint():
    others = [p for p in sorted(paths.WORKFLOWS.glob("*.json")) if p not in SD15]
    assert len(SD15) == 16 and len(others) == 8
    for path in others:  # the other families load their own files
        assert SD15_CHECKPOINT not in path.read_text() and not is_sd15(path)


def test_every_sd15_workflow_has_a_small_square_thumbnail_and_nothing_else_does():
    jpgs = sorted(p.name for p in paths.WORKFLOWS.glob("*.jpg"))
    assert jpgs == sorted(thumbnails.thumbnail_path(p).name for p in SD15)
    for path in SD15:
        thumb = thumbnails.thumbnail_path(path)
        assert 0 < thumb.stat().st_size <= MAX_BYTES, thumb.name
        with Image.open(thumb) as im:
            assert im.format == "JPEG" and im.size == (thumbnails.SIDE, thumbnails.SIDE) and im.mode == "RGB"
            assert not im.info.get("progressive") and "exif" not in im.info


def _panel(colour):
    return Image.new("RGB", (64, 64), colour)


def test_a_stitched_strip_is_cut_into_its_panels_and_the_grid_fills_the_square():
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    strip = Image.new("RGB", (4 * 64 + 3 * thumbnails.STITCH_GAP, 64), "white")
    for k, c in enumerate(colours):
        strip.paste(_panel(c), (k * (64 + thumbnails.STITCH_GAP), 0))
    cut = thumbnails.panels(strip)
    assert [im.getpixel((32, 32)) for im in cut] == colours and all(im.size == (64, 64) for im in cut)
    assert thumbnails.panels(Image.new("RGB", (300, 64))) != []  # not a strip of 64 px panels: kept whole
    assert len(thumbnails.panels(Image.new("RGB", (300, 64)))) == 1
    square = thumbnails.layout([strip])  # 2 x 2 grid of 64 px panels, 4 px apart: 132 px, fitted to 256
    assert square.size == (thumbnails.SIDE, thumbnails.SIDE)
    assert square.getpixel((60, 60))[0] > 200 and square.getpixel((60, 60))[1] < 60  # red, top left
    assert square.getpixel((196, 196))[:2] == pytest.approx((255, 255), abs=30)  # yellow, bottom right
    chart = thumbnails.layout([Image.new("RGB", (640, 320), (0, 0, 0))])  # a wide chart: fitted, white bands
    assert chart.getpixel((128, 128)) == (0, 0, 0) and chart.getpixel((128, 10)) == (255, 255, 255)
    with pytest.raises(ValueError, match="no image"):
        thumbnails.layout([])


def test_world_copy_changes_checkpoint_size_and_prompts_only_and_not_its_input():
    shipped = json.loads((paths.WORKFLOWS / "fig4_eos_swap_bird_chair.json").read_text())
    before = copy.deepcopy(shipped)
    out = world_copy(shipped, "shapefirst-world-v1.safetensors")
    assert shipped == before
    changed = {}
    for a, b in zip(shipped["nodes"], out["nodes"]):
        assert {k: v for k, v in a.items() if k != "widgets_values"} == {k: v for k, v in b.items()
                                                                        if k != "widgets_values"}
        if a.get("widgets_values") != b.get("widgets_values"):
            changed[a["type"]] = b["widgets_values"]
    assert changed["CheckpointLoaderSimple"] == ["shapefirst-world-v1.safetensors"]
    assert changed["EmptyLatentImage"] == [64, 64, 1]
    assert set(changed) == {"CheckpointLoaderSimple", "EmptyLatentImage", "CLIPTextEncode", "EOSSwapConditioning"}
    assert "a blue circle" in json.dumps(changed) and "A blue bird" not in json.dumps(changed)
    assert {k: v for k, v in out.items() if k != "nodes"} == {k: v for k, v in shipped.items() if k != "nodes"}


@pytest.fixture(scope="module")
def world_ckpt(comfy, checkpoints_dir):
    from devtools import world

    return world.checkpoint(checkpoints_dir.parent).name


@pytest.mark.comfy
@pytest.mark.parametrize("name", ["fast_txt2img_truncated_cfg", "fig3_attention_token_classes"])
def test_shipped_thumbnails_are_what_the_workflow_draws_on_the_world(comfy, world_ckpt, name):
    """A sampled picture and a chart: rendered again, the pixels are the shipped ones (up to a rounding
    difference of the CPU's arithmetic); stale: run scripts/make_thumbnails.py."""
    import io

    import numpy as np
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the script renders
    try:
        data = thumbnails.render(comfy, comfy.object_info(), paths.WORKFLOWS / f"{name}.json", world_ckpt)
    finally:
        torch.set_num_threads(threads)
    shipped = thumbnails.thumbnail_path(paths.WORKFLOWS / f"{name}.json")
    new, old = (np.asarray(Image.open(io.BytesIO(b)).convert("RGB"), dtype=np.float64)
                for b in (data, shipped.read_bytes()))
    diff = np.abs(new - old).mean()
    assert diff < 1.0, f"{shipped.name} differs from a new render by {diff:.2f} levels: run scripts/make_thumbnails.py"
