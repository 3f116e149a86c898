"""Reading the token and step selections typed into the attention views.

``"0, 2-5, 9"`` lists positions and inclusive ranges (a range written high-low counts down);
``"auto"`` (or nothing) picks a default; steps also accept ``"all"``. Duplicates are dropped,
the first occurrence keeping its place. Anything else raises :class:`SelectionError` (a
ValueError) with a message that says what to write instead. Plain Python; no ComfyUI import.
"""

from __future__ import annotations

import re

from .tokens import EOS, SEM, SOS


class SelectionError(ValueError):
    """A selection that cannot be read or names positions / steps that do not exist."""


_RANGE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+))?\s*$")
_MAX_ITEMS = 100_000  # "0-999999999" would otherwise build a huge list


def parse_numbers(name: str, text) -> list[int]:
    """'0, 2-5, 9' -> [0, 2, 3, 4, 5, 9]; ``name`` is the input's name for the messages."""
    out: list[int] = []
    for part in str(text if text is not None else "").split(","):
        if not part.strip():
            continue
        m = _RANGE.match(part)
        if not m:
            raise SelectionError(f"{name}: cannot read {part.strip()!r}; write 'auto' or whole numbers and ranges "
                                 "such as '0, 2-5, 9'.")
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        if abs(b - a) + len(out) >= _MAX_ITEMS:
            raise SelectionError(f"{name}: the range {part.strip()!r} is too long; list at most {_MAX_ITEMS} numbers.")
        out.extend(range(a, b + 1) if b >= a else range(a, b - 1, -1))
    if not out:
        raise SelectionError(f"{name} is empty; write 'auto' or numbers such as '0, 2-5, 9'.")
    return list(dict.fromkeys(out))


def _is_auto(text) -> bool:
    return str(text if text is not None else "").strip().lower() in ("", "auto")


def select_tokens(text, roles: list[str], kept: int) -> list[int]:
    """'auto' = [SOS], every semantic token and the first [EOS], within the ``kept`` first
    positions (position 0 when none is); else the listed positions, each < len(roles) and < kept."""
    if _is_auto(text):
        eos = [i for i, r in enumerate(roles) if r == EOS][:1]
        picked = [i for i, r in enumerate(roles) if r in (SOS, SEM)] + eos
        return [i for i in picked if i < kept] or [0]
    picked = parse_numbers("tokens", text)
    for i in picked:
        if i >= len(roles):
            raise SelectionError(f"token index {i} is beyond the prompt: it has {len(roles)} positions "
                                 f"(0-{len(roles) - 1}). Use 'auto' or smaller indices.")
        if i >= kept:
            raise SelectionError(f"token index {i} was not kept: the capture keeps maps for positions 0-{kept - 1}. "
                                 "Raise max_tokens in Attention Map Capture.")
    return picked


def select_steps(text, recorded: list[int], auto_count: int = 6) -> list[int]:
    """'auto' = up to ``auto_count`` recorded steps evenly spread (first and last included);
    'all' = every recorded step; else the listed steps, each of them recorded."""
    if not recorded:
        raise SelectionError("no step was recorded.")
    if str(text).strip().lower() == "all":
        return list(recorded)
    if _is_auto(text):
        n = len(recorded)
        if auto_count < 2:
            return [recorded[-1]]
        if n <= auto_count:
            return list(recorded)
        idx = sorted({round(k * (n - 1) / (auto_count - 1)) for k in range(auto_count)})
        return [recorded[i] for i in idx]
    picked = parse_numbers("steps", text)
    missing = [s for s in picked if s not in recorded]
    if missing:
        shown = ", ".join(map(str, recorded[:12])) + (" ..." if len(recorded) > 12 else "")
        raise SelectionError(f"step {missing[0]} was not recorded; recorded steps: {shown}. Use 'auto', 'all' or "
                             "recorded steps.")
    return picked
