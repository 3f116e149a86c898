"""Captions -> CLIP token ids, as ComfyUI's SD1 tokenizer produces them.

The tokenizer is CLIP's real BPE (transformers' CLIPTokenizer on the files ComfyUI ships in
``comfy/sd1_tokenizer``); a caption becomes [SOS] + its tokens + [EOS], padded to 77 with [EOS].
``tests/test_world_data.py`` checks the ids against ComfyUI's own SD1Tokenizer.
"""

from __future__ import annotations

import functools
from pathlib import Path

from .vocab import SPECIAL, words

CONTEXT = 77


@functools.lru_cache(maxsize=1)
def tokenizer():
    from transformers import CLIPTokenizer

    from ..boot import runtime

    return CLIPTokenizer.from_pretrained(str(Path(runtime().comfyui) / "comfy" / "sd1_tokenizer"))


def word_ids(text: str) -> list[int]:
    """The BPE ids of ``text`` without [SOS]/[EOS]."""
    return tokenizer()(text)["input_ids"][1:-1]


@functools.lru_cache(maxsize=1)
def token_ids() -> list[int]:
    """Sorted ids of every token the world's captions use ([SOS] and [EOS] included): the rows of
    the token embedding that are trained."""
    ids = {SPECIAL["start"], SPECIAL["end"]}
    for w in words():
        ids.update(word_ids(w))
    return sorted(ids)


def encode(captions: list[str]):
    """Token ids (len(captions), 77) as a LongTensor: [SOS] caption [EOS] [EOS]..."""
    import torch

    out = torch.full((len(captions), CONTEXT), SPECIAL["end"], dtype=torch.long)
    for i, c in enumerate(captions):
        ids = [SPECIAL["start"]] + word_ids(c)[: CONTEXT - 2] + [SPECIAL["end"]]
        out[i, : len(ids)] = torch.tensor(ids)
    return out
