"""Text in the pack's drawn images: one font for every chart and grid, and labels made drawable.

Pillow's built-in font (Aileron, FreeType) collapses the space between words below 12 px ("a_tx0",
"lowe r is close r"), so every image uses it at 12 px. A character the font has no glyph for (a T5
piece "\u2581", accented letters, CJK text) would be drawn as an empty box: ``drawable`` replaces it with
something a reader can read.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

from PIL import ImageFont

SIZE = 12  # px; the smallest size at which the built-in font keeps its word spaces
LINE = 15  # px between lines of text at SIZE

# Stand-ins for tokenizer markers the font lacks: SentencePiece's word start (T5, umT5, Gemma) is
# drawn as the ASCII low line it looks like; control characters by their escapes.
_STAND_INS = {"\u2581": "_", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
_NO_GLYPH = "\ue000"  # a private-use code point: no font has a glyph for it


@lru_cache(maxsize=4)
def font(size: int = SIZE):
    """Pillow's built-in font at ``size`` px (its bitmap font where Pillow has no FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1, or built without FreeType
        return ImageFont.load_default()


def _mask_bytes(f, ch: str) -> bytes:
    mask = f.getmask(ch)
    return bytes(mask) + bytes(str(mask.size), "ascii")


@lru_cache(maxsize=4096)
def _has_glyph(ch: str, size: int) -> bool:
    f = font(size)
    if not isinstance(f, ImageFont.FreeTypeFont):
        return ord(ch) < 128
    return ch == " " or _mask_bytes(f, ch) != _mask_bytes(f, _NO_GLYPH)


def _base_letters(ch: str, size: int) -> str:
    """An accented letter without its accents ("\u00e9" -> "e"), "" when that does not help."""
    base = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
    return base if base and base != ch and all(c.isprintable() and _has_glyph(c, size) for c in base) else ""


def drawable(text: str, size: int = SIZE) -> str:
    """``text`` with every character the font cannot draw replaced: known tokenizer markers by their
    stand-ins, accented letters by their base letters, anything else by its code point (<U+4E00>)."""
    out = []
    for ch in str(text):
        if ch in _STAND_INS:
            out.append(_STAND_INS[ch])
        elif ch.isprintable() and _has_glyph(ch, size):
            out.append(ch)
        else:
            out.append(_base_letters(ch, size) or f"<U+{ord(ch):04X}>")
    return "".join(out)
