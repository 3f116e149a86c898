"""Token roles of a tokenized prompt: [SOS], semantic tokens (SEM), [EOS] and padding.

Yi et al. (NeurIPS 2024) Section 5.1 splits a CLIP prompt into three classes: the start token
[SOS], the semantic tokens, and [EOS]. CLIP is causal, so [SOS] carries nothing, a semantic
token sees only the tokens before it, and [EOS] sees the whole prompt. The paper counts every
position after the last semantic token as [EOS] (SD1.x pads with the end token). Here the first
end token is ``EOS`` and everything after it is ``PAD``, so the two stay distinguishable (SD2.x and
SDXL's clip_g pad with token 0); :func:`effective_role` merges them when padding counts as [EOS].

Modern text encoders (see the README's token-role table): T5 (SD3, Flux, PixArt, Wan's umT5) has no
[SOS]: SEM, then ``</s>`` as [EOS], then padding. LLM encoders wrap the prompt in a chat template:
the template tokens before the prompt carry no prompt and play [SOS] (SOS, possibly several
positions); the end-of-turn tokens after it and whatever follows see the whole prompt (causal
attention) and play [EOS] (EOS, several positions); padding is PAD. Their word ids cover the
template too, so the prompt is found by matching the template's token ids (``TokenizerInfo.prefix``
and ``suffix``).

Input is what ComfyUI's tokenizers return with ``return_word_ids=True``: per chunk (77 tokens for
CLIP, one unbounded chunk for T5) a list of ``(token, weight, word_id)``, ``token`` an int id or an
embedding vector, ``word_id > 0`` for tokens of the prompt text, 0 for start / end / padding.
Plain Python and torch only; no ComfyUI import.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

SOS, SEM, EOS, PAD = "SOS", "SEM", "EOS", "PAD"
ROLES = (SOS, SEM, EOS, PAD)
ROLE_LABELS = {SOS: "[SOS]", SEM: "SEM", EOS: "[EOS]", PAD: "pad"}


class TokenLayoutError(ValueError):
    """A prompt whose tokens cannot be laid out as asked (e.g. no [EOS] slot left)."""


@dataclass(frozen=True)
class TokenizerInfo:
    """The special tokens of one tokenizer. ``start`` is None for tokenizers without one (T5)."""

    start: int | None
    end: int | None
    pad: int
    # Chunk length for chunked tokenizers (77 for CLIP); None for one unbounded chunk (T5).
    max_length: int | None = 77
    # Chat templates (LLM encoders): token ids before and after the prompt; empty for none.
    prefix: tuple[int, ...] = ()
    suffix: tuple[int, ...] = ()

    @property
    def templated(self) -> bool:
        return bool(self.prefix or self.suffix)


def is_token_id(token) -> bool:
    """True for a vocabulary id; False for an embedding (textual inversion) vector."""
    return isinstance(token, numbers.Integral) and not isinstance(token, bool)


def _word_id(entry) -> int:
    if len(entry) < 3:
        raise ValueError("token entries need word ids: tokenize with return_word_ids=True")
    return int(entry[2])


def chunk_roles(chunk, info: TokenizerInfo) -> list[str]:
    """The role of every position of one chunk of ``(token, weight, word_id)`` entries.

    SEM: any token of the prompt text or an embedding vector (word_id > 0). SOS: a start token
    at position 0. EOS: the first end token that is not part of the text. PAD: every other
    position (padding after [EOS], whatever its token id).
    """
    if info.templated:
        return template_roles(chunk, info)
    roles = []
    seen_end = False
    for pos, entry in enumerate(chunk):
        token, word_id = entry[0], _word_id(entry)
        if word_id > 0 or not is_token_id(token):
            roles.append(SEM)
        elif pos == 0 and info.start is not None and int(token) == info.start:
            roles.append(SOS)
        elif not seen_end and info.end is not None and int(token) == info.end:
            roles.append(EOS)
            seen_end = True
        else:
            roles.append(PAD)
    return roles


def _ids(chunk) -> list[int | None]:
    return [int(e[0]) if is_token_id(e[0]) else None for e in chunk]


def template_roles(chunk, info: TokenizerInfo) -> list[str]:
    """Roles of one chunk of an LLM encoder's templated prompt: padding (either side) PAD, the
    template's ``prefix`` SOS, its ``suffix`` (end of turn and what follows) EOS, the prompt SEM.

    Raises TokenLayoutError when the chunk does not start with the prefix or end with the
    suffix (a prompt typed with its own template, or another family's template).
    """
    ids = _ids(chunk)
    prefix, suffix = list(info.prefix), list(info.suffix)
    lead = 0
    if not prefix or prefix[0] != info.pad:
        while lead < len(ids) and ids[lead] == info.pad:
            lead += 1
    end = len(ids)
    while ids[end - len(suffix):end] != suffix or end - len(suffix) < lead + len(prefix):
        if end > lead and ids[end - 1] == info.pad:
            end -= 1
            continue
        raise TokenLayoutError(f"the prompt does not end with the template's {len(suffix)} closing tokens")
    if ids[lead:lead + len(prefix)] != prefix:
        raise TokenLayoutError(f"the prompt does not start with the template's {len(prefix)} opening tokens")
    n_sem = end - len(suffix) - lead - len(prefix)
    return [PAD] * lead + [SOS] * len(prefix) + [SEM] * n_sem + [EOS] * len(suffix) + [PAD] * (len(ids) - end)


def prompt_roles(chunks, info: TokenizerInfo) -> list[list[str]]:
    """Roles per chunk, for every chunk of a tokenized prompt."""
    return [chunk_roles(chunk, info) for chunk in chunks]


def effective_role(role: str, padding_is_eos: bool) -> str:
    """PAD counts as EOS when ``padding_is_eos`` (the paper's convention)."""
    return EOS if (role == PAD and padding_is_eos) else role


def role_positions(roles: list[str], padding_is_eos: bool = True) -> dict[str, list[int]]:
    """Positions of each class in one chunk (PAD folded into EOS when ``padding_is_eos``)."""
    out: dict[str, list[int]] = {r: [] for r in ROLES}
    for pos, role in enumerate(roles):
        out[effective_role(role, padding_is_eos)].append(pos)
    return out


def chunk_offsets(chunks_roles: list[list[str]]) -> list[int]:
    """Flat row index of each chunk's first position (chunks are concatenated on the token axis)."""
    offsets, total = [], 0
    for roles in chunks_roles:
        offsets.append(total)
        total += len(roles)
    return offsets


def flat_roles(chunks_roles: list[list[str]]) -> list[str]:
    return [r for roles in chunks_roles for r in roles]


def repeat_semantic(chunks, repeats: int, info: TokenizerInfo) -> list[list[tuple]]:
    """Appendix C's EOS-count ablation: every chunk becomes [SOS] + its semantic tokens
    ``repeats`` times + [EOS] + padding, keeping the chunk's length, so fewer [EOS] slots remain.

    Entries (ids, embeddings, weights) are repeated as they are. For an unbounded tokenizer (T5)
    the chunk grows and keeps its padding count. Raises TokenLayoutError when a chunk of a fixed
    length has no room left for its [EOS].
    """
    if repeats < 1:
        raise TokenLayoutError(f"repeats must be at least 1, got {repeats}")
    out = []
    for c, chunk in enumerate(chunks):
        roles = chunk_roles(chunk, info)
        head = [e for e, r in zip(chunk, roles) if r == SOS]
        sem = [e for e, r in zip(chunk, roles) if r == SEM]
        eos = [e for e, r in zip(chunk, roles) if r == EOS]
        eos = eos if info.templated else eos[:1]
        n_pad = sum(r == PAD for r in roles)
        body = head + sem * repeats + eos
        if info.max_length is None:
            length = len(body) + n_pad
        else:
            length = len(chunk)
            if len(body) > length:
                raise TokenLayoutError(
                    f"chunk {c} has {len(sem)} semantic tokens; {repeats} copies need "
                    f"{len(head) + len(sem) * repeats + 1} of its {length} positions")
        pad_entry = (info.pad, 1.0, 0)
        out.append([tuple(e) for e in body] + [pad_entry] * (length - len(body)))
    return out


def token_text(token, inv_vocab: dict | None) -> str:
    """Readable text of one token: the vocabulary string without BPE markers, or <embedding>."""
    if not is_token_id(token):
        return "<embedding>"
    text = inv_vocab.get(int(token)) if inv_vocab else None
    if text is None:
        return f"#{int(token)}"
    # CLIP marks word ends with </w>; SentencePiece (T5, Gemma) a leading space with U+2581;
    # byte-level BPE (Qwen) a space with U+0120 and a newline with U+010A
    readable = text.replace("</w>", "").replace("\u2581", " ").replace("\u0120", " ").replace("\u010a", "\n")
    return readable.strip() or text


def token_labels(chunks, inv_vocab: dict | None, roles: list[str]) -> list[str]:
    """A label for every position of a tokenized prompt (chunks concatenated), ``roles`` flat:
    [SOS], [EOS] and [PAD] by role, the token's text for the semantic positions."""
    special = {SOS: "[SOS]", EOS: "[EOS]", PAD: "[PAD]"}
    flat = [entry for chunk in chunks for entry in chunk]
    return [special.get(role) or token_text(entry[0], inv_vocab) for entry, role in zip(flat, roles)]


def format_table(rows: list[dict], title: str = "") -> str:
    """A plain-text table of ``{"pos", "token", "role", "source"}`` rows."""
    cols = ("pos", "token", "role", "source")
    cells = [[str(r[c]) for c in cols] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    lines = [title] if title else []
    lines.append("  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip())
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)
