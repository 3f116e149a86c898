"""The world's fixed evaluation prompts (``devtools/world/eval_prompts.json``), drawn once from
their own seed: one-object prompts with their ground truth, and A/B prompt pairs of the paper's
kind (Table 1) that differ in shape only or in colour only.

    python -m devtools.world.evalset      # (re)write the JSON file; the result never changes
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from .vocab import COLOURS, POSITION_PHRASES, POSITIONS, SHAPES

PATH = Path(__file__).resolve().parent / "eval_prompts.json"
SEED = 20240515
# What the shipped SD1.5 workflows say, in the world's words (same roles: A/B differ in shape and colour).
WORKFLOW_PROMPTS = {
    "A blue bird": "a blue circle",
    "A brown chair": "a red square",
    "A dog standing on a bench during the day.": "a yellow star above a blue square",
    "The square coaster was next to the circular mug.": "a red square next to a blue circle",
    "A blue bird sitting on a red flower.": "a blue heart above a red circle",
    "The sharp, angular edges of the city skyline pierced the clouds, a symbol of human innovation and progress.":
        "a big white star at the top on a striped background",
    "The delicate, fluttering wings of the butterfly signaled the arrival of spring, a natural symbol of rebirth "
    "and renewal.": "a small pink heart at the bottom on a black background",
}


def _prompt(o: dict) -> str:
    article = "an" if o["colour"][0] in "aeiou" else "a"
    text = f"{article} {o['colour']} {o['shape']}"
    if o.get("position"):
        text += " " + POSITION_PHRASES[o["position"]][0]
    return text


def build() -> dict:
    rng = np.random.default_rng(SEED)
    colours = list(COLOURS)
    single = [{"shape": s, "colour": c} for s in SHAPES for c in colours]
    for o in single:
        o["prompt"] = _prompt(o)
    positioned = []
    for i in range(20):
        o = {"shape": str(rng.choice(SHAPES)), "colour": str(rng.choice(colours)), "position": POSITIONS[i % 5]}
        o["prompt"] = _prompt(o)
        positioned.append(o)
    pairs = []
    for kind in ("shape", "colour"):
        for _ in range(24):
            a = {"shape": str(rng.choice(SHAPES)), "colour": str(rng.choice(colours))}
            b = dict(a)
            pool = SHAPES if kind == "shape" else colours
            b[kind] = str(rng.choice([v for v in pool if v != a[kind]]))
            pairs.append({"differs": kind, "a": {**a, "prompt": _prompt(a)}, "b": {**b, "prompt": _prompt(b)}})
    return {"seed": SEED, "sample_seeds": [int(s) for s in rng.integers(0, 2**31, 8)], "single": single,
            "positioned": positioned, "pairs": pairs, "workflow_prompts": WORKFLOW_PROMPTS}


def load() -> dict:
    return json.loads(PATH.read_text())


def main() -> int:
    PATH.write_text(json.dumps(build(), indent=1) + "\n")
    print(f"wrote {PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
