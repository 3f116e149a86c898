"""The world's words: every attribute a scene has, and the single CLIP token each word is.

Standard library only. Every word below is one token of CLIP's BPE vocabulary (ComfyUI's
``comfy/sd1_tokenizer``); ``tests/test_world_data.py`` checks that with the real tokenizer.
"""

from __future__ import annotations

SHAPES = ("circle", "square", "triangle", "star", "heart", "cross", "diamond", "moon")

# Object colours (RGB, before a small per-image jitter). None of them is a background colour.
COLOURS = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (240, 220, 50),
    "green": (40, 170, 70),
    "blue": (40, 90, 225),
    "purple": (145, 60, 195),
    "pink": (245, 125, 185),
    "white": (245, 245, 245),
}

# Sizes: half-extent of the object in pixels of the 64 px image, and the words a caption uses
# (medium objects get no size word).
SIZES = {"small": (6.5, 9.0), "medium": (11.0, 13.5), "big": (16.0, 19.0)}
SIZE_WORDS = {"small": ("small", "tiny"), "medium": (), "big": ("big", "large")}

# Where a single object sits, and the phrases that say it.
POSITIONS = ("left", "right", "top", "bottom", "middle")
POSITION_PHRASES = {
    "left": ("on the left",),
    "right": ("on the right",),
    "top": ("at the top",),
    "bottom": ("at the bottom",),
    "middle": ("in the middle", "in the center"),
}

# Backgrounds: plain grey levels and two textures.
BACKGROUNDS = ("black", "gray", "white", "striped", "dotted")

# Relations between two objects: the first object is <relation> the second.
RELATIONS = ("above", "below", "left of", "right of", "next to", "and")

SPECIAL = {"start": 49406, "end": 49407}


def words() -> list[str]:
    """Every word a caption of the world can contain (for the token check and the embedding rows)."""
    out = ["a", "an", "the", "on", "in", "at", "of", "to", "and", "background", "next"]
    out += list(SHAPES) + list(COLOURS) + [w for ws in SIZE_WORDS.values() for w in ws]
    out += [w for ps in POSITION_PHRASES.values() for p in ps for w in p.split()]
    out += list(BACKGROUNDS) + [w for r in RELATIONS for w in r.split()]
    return sorted(set(out))
