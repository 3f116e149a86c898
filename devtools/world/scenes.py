"""Sampling the world's scenes and their captions (seeded; numpy only).

``scene(seed, index)`` is a pure function of its arguments: the data set is reproducible
item by item, in any order, on any machine. A scene is a plain dict::

    {"objects": [{"shape", "colour", "size", "position", "x", "y", "r", "angle", "rgb"}, ...],
     "background": {"kind", "level", ...}, "relation": str | None, "caption": str}
"""

from __future__ import annotations

import math

import numpy as np

from .vocab import (BACKGROUNDS, COLOURS, POSITION_PHRASES, POSITIONS, RELATIONS, SHAPES, SIZE_WORDS,
                    SIZES)

P_TWO = 0.4  # share of two-object scenes
P_COLOUR_WORD, P_SIZE_WORD, P_POSITION_WORDS, P_BACKGROUND_WORDS = 0.9, 0.8, 0.6, 0.35
SIZE = 64


def _rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index])


def _background(rng, kind: str) -> dict:
    if kind == "black":
        return {"kind": kind, "level": float(rng.uniform(12, 32))}
    if kind == "gray":
        return {"kind": kind, "level": float(rng.uniform(110, 140))}
    if kind == "white":
        return {"kind": kind, "level": float(rng.uniform(222, 242))}
    if kind == "striped":
        return {"kind": kind, "level": float(rng.uniform(35, 80)), "contrast": float(rng.uniform(40, 70)),
                "period": float(rng.uniform(6, 10)), "angle": float(rng.choice([0, 45, 90, 135]) + rng.uniform(-8, 8))
                * math.pi / 180, "phase": float(rng.uniform(0, 10))}
    return {"kind": kind, "level": float(rng.uniform(30, 70)), "contrast": float(rng.uniform(50, 90)),
            "period": float(rng.uniform(6, 8.5)), "dot": float(rng.uniform(1.0, 1.6)),
            "phase": float(rng.uniform(0, 8))}


def _colour_rgb(rng, colour: str) -> list[float]:
    return [float(np.clip(c + rng.uniform(-14, 14), 0, 255)) for c in COLOURS[colour]]


def _place(rng, position: str, r: float) -> tuple[float, float]:
    lo, hi = r + 1.5, SIZE - 1.5 - r
    ranges = {"left": ((lo, 24), (22, 42)), "right": ((40, hi), (22, 42)), "top": ((22, 42), (lo, 24)),
              "bottom": ((22, 42), (40, hi)), "middle": ((28, 36), (28, 36))}
    (x0, x1), (y0, y1) = ranges[position]
    return float(rng.uniform(x0, max(x0, x1))), float(rng.uniform(y0, max(y0, y1)))


def _object(rng, shape=None, colour=None, size=None, sizes=tuple(SIZES)) -> dict:
    shape = shape or str(rng.choice(SHAPES))
    colour = colour or str(rng.choice(list(COLOURS)))
    size = size or str(rng.choice(sizes))
    r = float(rng.uniform(*SIZES[size]))
    angle = 0.0 if shape == "circle" else float(rng.uniform(-10, 10)) * math.pi / 180
    return {"shape": shape, "colour": colour, "size": size, "r": r, "angle": angle, "rgb": _colour_rgb(rng, colour)}


def _noun_phrase(rng, o: dict, size_words: bool) -> str:
    words = []
    if size_words and SIZE_WORDS[o["size"]] and rng.random() < P_SIZE_WORD:
        words.append(str(rng.choice(SIZE_WORDS[o["size"]])))
    if rng.random() < P_COLOUR_WORD:
        words.append(o["colour"])
    words.append(o["shape"])
    return ("an " if words[0][0] in "aeiou" else "a ") + " ".join(words)


def _two_positions(rng, relation: str, ra: float, rb: float):
    """Centres of objects a and b such that "a <relation> b" holds and they do not overlap; the
    relation actually drawn ("next to" and "and" pick one)."""
    if relation in ("next to", "and"):
        relation = str(rng.choice(["left of", "right of"] + (["above", "below"] if relation == "and" else [])))
    first, second = (ra, rb) if relation in ("above", "left of") else (rb, ra)
    for _ in range(100):
        near = float(rng.uniform(first + 1.5, max(first + 1.5, 26.0)))  # top / left band
        far = float(rng.uniform(38.0, max(38.0, SIZE - 1.5 - second)))  # bottom / right band
        a_main, b_main = (near, far) if relation in ("above", "left of") else (far, near)
        ax, bx = float(rng.uniform(18, 46)), float(rng.uniform(18, 46))
        a, b = ((ax, a_main), (bx, b_main)) if relation in ("above", "below") else ((a_main, ax), (b_main, bx))
        if math.hypot(a[0] - b[0], a[1] - b[1]) >= ra + rb + 2:
            return a, b, relation
    raise RuntimeError("no placement found")  # not reached with the size ranges used


def scene(seed: int, index: int) -> dict:
    """The ``index``-th scene of the data set ``seed``."""
    rng = _rng(seed, index)
    bg_kind = str(rng.choice(BACKGROUNDS))
    bg = _background(rng, bg_kind)
    if rng.random() < P_TWO:
        while True:
            a, b = _object(rng, sizes=("small", "medium")), _object(rng, sizes=("small", "medium"))
            if (a["shape"], a["colour"]) != (b["shape"], b["colour"]) and not (
                    bg_kind == "white" and "white" in (a["colour"], b["colour"])):
                break
        relation = str(rng.choice(RELATIONS))
        (a["x"], a["y"]), (b["x"], b["y"]), placed = _two_positions(rng, relation, a["r"], b["r"])
        a["position"] = b["position"] = None
        caption = f"{_noun_phrase(rng, a, True)} {relation} {_noun_phrase(rng, b, True)}"
        objects, rel = [a, b], placed
    else:
        while True:
            o = _object(rng)
            if not (bg_kind == "white" and o["colour"] == "white"):
                break
        o["position"] = str(rng.choice(POSITIONS))
        o["x"], o["y"] = _place(rng, o["position"], o["r"])
        caption = _noun_phrase(rng, o, True)
        if rng.random() < P_POSITION_WORDS:
            caption += " " + str(rng.choice(POSITION_PHRASES[o["position"]]))
        objects, rel = [o], None
    if rng.random() < P_BACKGROUND_WORDS:
        caption += f" on a {bg_kind} background"
    return {"objects": objects, "background": bg, "relation": rel, "caption": caption}


def single(seed: int, index: int, shape: str, colour: str, size: str = "medium", position: str = "middle",
           bg_kind: str = "black") -> dict:
    """A one-object scene with the given attributes (jitter drawn from ``seed``/``index``): the
    ground truth of an evaluation prompt."""
    rng = _rng(seed, index)
    o = _object(rng, shape, colour, size)
    o["position"] = position
    o["x"], o["y"] = _place(rng, position, o["r"])
    return {"objects": [o], "background": _background(rng, bg_kind), "relation": None,
            "caption": f"a {colour} {shape}"}
