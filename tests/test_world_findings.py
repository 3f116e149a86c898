"""The paper's findings on ShapeFirst World, as the quick findings benchmark measures them
(benchmarks/findings.py --quick, run here as a user runs it: real ComfyUI, the pack's nodes, the
sweep tool with a local server). Deterministic: fixed weights, prompts, seeds and samplers.

The bars are set from the values measured on the shipped parameters (docs/world.md), with a
margin: a change to the swap, the truncation or the capture that keeps the mechanics but breaks
the science moves a value past its bar."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.comfy

REPO = Path(__file__).resolve().parent.parent

# Measured in quick mode on the shipped parameters (docs/world.md); each bar keeps a margin. The
# classifier's shares move in steps of 0.25 here (2 pairs x 2 samples): the bars allow two images to flip.
SWAP_SHAPE_SHIFT = 0.25  # (B's shape - A's shape) of the swap minus that of A's own image: measured 0.75
SWAP_TEXT_MARGIN = 0.06  # swap A->B, shape pairs: Toy-CLIP (text) with B minus with A: measured 0.125
SWAP_COLOUR_B = 0.5  # swap A->B, colour pairs: share with B's colour: measured 1.0
TRUNCATED_IMAGE_BAR = 0.8  # a = 40% of 25 DPM++ 2M steps: Toy-CLIPScore (image) to the a = 0 image: measured 0.923
RELATIVE_F1_BAR = 0.6  # Fig. 1b: relative edge F1 of the SEM maps at 40% of the steps: measured 0.817


@pytest.fixture(scope="module")
def quick(runtime_paths, tmp_path_factory):
    """The quick benchmark's report and results.json."""
    out = tmp_path_factory.mktemp("findings")
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "findings.py"), "--quick", "--servers", "2",
                           "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout, json.loads((out / "results.json").read_text())


def _mean(xs):
    return sum(xs) / len(xs)


def test_the_quick_benchmark_prints_every_table(quick):
    text, results = quick
    for heading in ("Table 1: [EOS] swap A -> B, pairs that differ in shape", "pairs that differ in colour",
                    "Table 4: the swap in Keys only / Values only", "Table 3: semantic tokens or [EOS] replaced",
                    "Table 2: dpmpp_2m (karras), 25 steps", "Fig. 1b / 3 / 8b / 2"):
        assert heading in text, heading
    assert results["mode"] == "quick"
    assert set(results["seconds"]) == {"table1", "table3", "table2", "figures"}


def _shift(row, a, b):
    return _mean(row[b]) - _mean(row[a])


def test_the_eos_swap_moves_the_shape_towards_b(quick):
    shape = quick[1]["table1"]["shape"]
    swap, plain = shape["swap A->B (K and V)"], shape["A"]
    assert _shift(swap, "shape_a", "shape_b") - _shift(plain, "shape_a", "shape_b") >= SWAP_SHAPE_SHIFT, (swap, plain)
    assert _shift(swap, "text_a", "text_b") >= SWAP_TEXT_MARGIN, swap
    assert _shift(plain, "text_a", "text_b") < 0, plain  # A's own image is closer to A
    colour = quick[1]["table1"]["colour"]["swap A->B (K and V)"]
    assert _mean(colour["colour_b"]) >= SWAP_COLOUR_B, colour


def test_keys_only_stays_with_a_and_values_only_moves_to_b(quick):
    shape = quick[1]["table1"]["shape"]
    assert _shift(shape["swap, Keys only"], "text_a", "text_b") < 0, shape["swap, Keys only"]
    assert _shift(shape["swap, Values only"], "text_a", "text_b") > 0, shape["swap, Values only"]


def test_the_eos_carries_the_prompt(quick):
    t3 = quick[1]["table3"]
    # semantic tokens zeroed keep the image (EOS carries the prompt); EOS zeroed loses it
    assert _mean(t3["Zero + EOS"]["image"]) - _mean(t3["Sem + Zero"]["image"]) >= 0.2, t3


def test_truncated_guidance_at_40_percent_keeps_the_image(quick):
    table2 = quick[1]["table2"]["dpmpp_2m"]
    kept, none = table2["a=10"], table2["a=25"]
    assert _mean(kept["image"]) >= TRUNCATED_IMAGE_BAR, kept
    assert _mean(kept["image"]) > _mean(none["image"]), (kept, none)  # no text at all loses more
    assert _mean(kept["l1"]) < _mean(none["l1"]), (kept, none)


def test_the_shape_forms_first(quick):
    figs = quick[1]["figures"]
    f1 = figs["Fig 1b: relative edge F1 (SEM maps vs final image)"]
    assert f1[3] >= RELATIVE_F1_BAR, f1  # POINTS[3] = 40% of the steps
    low, high = figs["Fig 2: ratio_denoise_low"], figs["Fig 2: ratio_denoise_high"]
    assert low[3] < 0.5 * high[3], (low, high)  # low frequencies are recovered first
    guidance = figs["Fig 8b: RMS w(eps(C)-eps(empty)) x sigma"]
    assert guidance[4] < 0.5 * guidance[0], guidance  # the guidance term fades


def test_the_sweeps_toy_clip_metric_scores_images_of_the_world(tmp_path):
    """The sweep's Toy-CLIPScore columns (--toy-clip): an image's score with itself is 1, and a
    rendered scene scores higher with its own caption than with the caption of another shape."""
    import numpy as np

    from devtools import sweep_cli, sweep_metrics
    from devtools.world.assemble import PARAMS
    from devtools.world.render import render
    from devtools.world.scenes import single
    from devtools.world.vocab import SHAPES

    args = sweep_cli.parse_args(["--prompts", "p.txt", "--checkpoint", "c", "--toy-clip", str(PARAMS)])
    active, left_out = sweep_metrics.prepare(args, sweep_metrics.Context(tmp_path))
    scorers = {m.column.key: s for m, s in active}
    assert {"toy_image", "toy_text"} <= set(scorers), [m.column.key for m, _ in left_out]
    own, other = [], []
    for k, shape in enumerate(SHAPES):
        scene = single(7, k, shape, "red")
        image = render(scene).astype(np.float32) / 255
        item = sweep_metrics.Item(image, image, scene["caption"], f"reference {k}")
        assert scorers["toy_image"].score(item) == pytest.approx(1.0, abs=1e-4)
        own.append(scorers["toy_text"].score(item))
        other.append(scorers["toy_text"].score(sweep_metrics.Item(image, None, f"a red {SHAPES[k - 1]}")))
    assert sum(o > x for o, x in zip(own, other)) >= 6, (own, other)


def test_without_its_folder_the_toy_clip_metric_is_left_out_saying_why(tmp_path):
    from devtools import sweep_cli, sweep_metrics

    args = sweep_cli.parse_args(["--prompts", "p.txt", "--checkpoint", "c"])
    _, left_out = sweep_metrics.prepare(args, sweep_metrics.Context(tmp_path))
    reasons = {m.column.key: why for m, why in left_out}
    assert "--toy-clip" in reasons["toy_image"] and "--toy-clip" in reasons["toy_text"]
    with pytest.raises(FileNotFoundError, match="world.json"):
        sweep_metrics.prepare(sweep_cli.parse_args(["--prompts", "p", "--checkpoint", "c", "--toy-clip",
                                                    str(tmp_path)]), sweep_metrics.Context(tmp_path))
