"""The EOS swap on a whole conditioning: per text encoder, which rows of which prompt fill the
output, and the token table that shows it.

A conditioning tensor (1, T, C) holds each text encoder's rows in a *segment* of the token axis
and a slice of the channels: SDXL puts clip_l and clip_g side by side on channels (one segment);
SD3 puts [clip_l | clip_g] in segment 0 and T5 in segment 1; Flux holds T5's rows only (clip_l
gives the pooled vector alone). Pooled vectors (the [EOS] analogue of SDXL / SD3 / Flux) are
sliced per encoder the same way. Each encoder is composed with its own roles
(shapefirst.compose); encoders not chosen keep prompt A's rows.

Plain torch; no ComfyUI import.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import compose as cmp
from .tokens import EOS, PAD, ROLE_LABELS, SEM, SOS, TokenizerInfo, TokenLayoutError, flat_roles, format_table, \
    token_text

ALL_A = {SOS: cmp.A, SEM: cmp.A, EOS: cmp.A}

# EOS Swap Conditioning's options as the user picks them, and every default of its inputs (the node's
# schema, its build and execute, and the workflow descriptions read these).
LAYOUT_OPTIONS = {"prompt A": cmp.LAYOUT_PROMPT, "77 x [SOS]": cmp.LAYOUT_SOS_ONLY,
                  "[SOS] + 76 x [EOS]": cmp.LAYOUT_SOS_EOS}
APPLY_BOTH, APPLY_KEYS, APPLY_VALUES = "keys and values", "keys only", "values only"
PROMPT_DEFAULTS = {"prompt_a": "A blue bird", "prompt_b": "A brown chair"}
SWAP_DEFAULTS = {"eos_from": cmp.B, "sem_from": cmp.A, "sos_from": cmp.A, "padding_is_eos": True,
                 "layout": "prompt A", "sem_repeats": 1, "apply_to": APPLY_BOTH, "start_percent": 0.0,
                 "end_percent": 1.0, "pooled_from": cmp.B, "noise_seed": 0}
OPTIONAL_DEFAULTS = {"swap_encoders": "all"}


@dataclass(frozen=True)
class EncoderLayout:
    """Where one text encoder's output lies in the conditioning.

    ``segment``: index of its block of rows on the token axis (None: it gives no rows, only a
    pooled vector). ``channels`` / ``pooled``: (start, stop) of its channels in the rows / in the
    pooled vector (None: none). ``drop_prefix``: the encoder cuts its template's prefix from the
    rows (Qwen-Image), so rows start at the prompt.
    """

    key: str  # key in clip.tokenize(...) output: "l", "g", "h", "t5xxl", "qwen25_7b"
    name: str  # readable: "clip_l"
    info: TokenizerInfo
    segment: int | None = 0
    channels: tuple[int, int] | None = None
    pooled: tuple[int, int] | None = None
    drop_prefix: bool = False
    inv_vocab: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def has_rows(self) -> bool:
        return self.segment is not None and self.channels is not None


def row_entries(encoder: EncoderLayout, chunks) -> list:
    """The flat token entries that give ``encoder``'s rows (the template prefix dropped if it is cut)."""
    flat = [e for chunk in chunks for e in chunk]
    return flat[len(encoder.info.prefix):] if encoder.drop_prefix else flat


def row_roles(encoder: EncoderLayout, roles_per_chunk) -> list[list[str]]:
    """Roles per chunk of ``encoder``'s rows."""
    if not encoder.drop_prefix:
        return [list(r) for r in roles_per_chunk]
    return [flat_roles(roles_per_chunk)[len(encoder.info.prefix):]]


@dataclass
class EncodedPrompt:
    """One prompt: token entries and row roles per encoder key, its rows (1, T, C) and pooled vector."""

    entries: dict[str, list]
    roles: dict[str, list[list[str]]]
    cond: torch.Tensor
    pooled: torch.Tensor | None = None
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)  # key -> (first row, row count)

    def layout(self, key: str) -> cmp.PromptLayout:
        return cmp.PromptLayout.of(self.roles[key], self.spans[key][1])

    def rows(self, encoder: EncoderLayout) -> torch.Tensor:
        first, count = self.spans[encoder.key]
        return self.cond[0, first:first + count, slice(*encoder.channels)]

    def token(self, key: str, index: int):
        flat = self.entries[key]
        return flat[index][0] if index < len(flat) else None

    @property
    def empty(self) -> bool:
        return all(r != SEM for roles in self.roles.values() for chunk in roles for r in chunk)


def locate(encoders: tuple[EncoderLayout, ...], prompt: EncodedPrompt) -> None:
    """Fill ``prompt.spans``: segments follow each other on the token axis; a segment is as long
    as its shortest encoder (ComfyUI cuts side-by-side encoders to a common length). Raises
    TokenLayoutError when the rows do not add up to the conditioning's length."""
    segments = sorted({e.segment for e in encoders if e.has_rows})
    first = 0
    for seg in segments:
        members = [e for e in encoders if e.has_rows and e.segment == seg]
        count = min(sum(len(r) for r in prompt.roles[e.key]) for e in members)
        for e in members:
            prompt.spans[e.key] = (first, count)
        first += count
    if first != prompt.cond.shape[1]:
        raise TokenLayoutError(f"the tokens give {first} rows but the conditioning has {prompt.cond.shape[1]}")


def compose_all(encoders, a: EncodedPrompt, b: EncodedPrompt, layout: str, sources: dict, padding_is_eos: bool,
                seed: int, chosen: set[str], length: int | None = None):
    """(composed (1, T, C), A's rows in the same layout, plans per encoder key).

    In A's layout every position starts as A's row; the ``chosen`` encoders' rows are composed
    from ``sources``. Appendix E's layouts (one segment of ``length`` rows) start from zeros.
    Noise is drawn for every encoder in order, so seeds stay stable whichever are chosen.
    """
    if layout == cmp.LAYOUT_PROMPT:
        composed, reference = a.cond[:1].clone(), a.cond[:1].clone()
    else:
        shape = (1, int(length), a.cond.shape[-1])
        composed, reference = torch.zeros(shape, dtype=a.cond.dtype), torch.zeros(shape, dtype=a.cond.dtype)
    generator = torch.Generator().manual_seed(int(seed))
    plans = {}
    for enc in (e for e in encoders if e.has_rows):
        first, count = a.spans[enc.key] if layout == cmp.LAYOUT_PROMPT else (0, int(length))
        layouts = {cmp.A: a.layout(enc.key), cmp.B: b.layout(enc.key)}
        roles = a.roles[enc.key] if layout == cmp.LAYOUT_PROMPT else cmp.synthetic_layout(layout, count)
        plan_sources = sources if enc.key in chosen else ALL_A
        try:
            plan = cmp.plan_rows(roles, layouts, plan_sources, padding_is_eos, count)
            ref_plan = cmp.plan_rows(roles, layouts, ALL_A, padding_is_eos, count)
        except cmp.MissingClassError as exc:
            raise cmp.MissingClassError(exc.prompt, exc.role, enc.name) from None
        if len(plan) < count:
            raise TokenLayoutError(f"{enc.name} yields {len(plan)} positions, expected {count}")
        rows = {cmp.A: a.rows(enc), cmp.B: b.rows(enc)}
        flat_a = flat_roles(a.roles[enc.key])[: rows[cmp.A].shape[0]]
        ref_rows = rows[cmp.A][[i for i, r in enumerate(flat_a) if r != SOS] or list(range(len(flat_a)))]
        noise = cmp.noise_rows(ref_rows, count, generator)
        ch = slice(*enc.channels)
        composed[0, first:first + count, ch] = cmp.compose(plan, rows, noise)
        reference[0, first:first + count, ch] = cmp.compose(ref_plan, rows)
        plans[enc.key] = plan
    return composed, reference, plans


def compose_pooled(encoders, a: EncodedPrompt, b: EncodedPrompt, pooled_from: str, chosen: set[str]):
    """A's pooled vector with each chosen encoder's slice taken from ``pooled_from`` ("A" / "B")."""
    if a.pooled is None:
        return None
    out = a.pooled.clone()
    if pooled_from == cmp.B and b.pooled is not None:
        for enc in encoders:
            if enc.pooled is not None and enc.key in chosen:
                out[..., slice(*enc.pooled)] = b.pooled[..., slice(*enc.pooled)].to(out)
    return out


def table_rows(plan, enc: EncoderLayout, a: EncodedPrompt, b: EncodedPrompt, seed) -> list[dict]:
    """Every output position of one encoder: token, role, and which row of which prompt fills it."""
    rows = []
    for pos, r in enumerate(plan):
        if r.kind in (cmp.A, cmp.B):
            p = a if r.kind == cmp.A else b
            token, source = token_text(p.token(enc.key, r.index), enc.inv_vocab), f"{r.kind} {r.index}"
        else:
            token, source = "-", (f"noise (seed {seed})" if r.kind == cmp.NOISE else "zeros")
        role = ROLE_LABELS[r.slot or r.role] + (" (as [EOS])" if r.slot == PAD and r.role == EOS else "")
        rows.append({"pos": pos, "token": token, "role": role, "source": source})
    return rows


def tables(encoders, plans: dict, a: EncodedPrompt, b: EncodedPrompt, seed, title: str) -> tuple[str, list[dict]]:
    """(plain-text tables, [{"names", "rows"}]): encoders with the same plan share one table."""
    groups: list[tuple[list[str], list, list[dict]]] = []
    for enc in encoders:
        if enc.key not in plans:
            continue
        sig = [(r.role, r.kind, r.index) for r in plans[enc.key]]
        same = next((g for g in groups if g[1] == sig), None)
        if same:
            same[0].append(enc.name)
            continue
        groups.append(([enc.name], sig, table_rows(plans[enc.key], enc, a, b, seed)))
    text = "\n\n".join(format_table(rows, f"{title} - {', '.join(names)}") for names, _, rows in groups)
    payload = [{"names": names, "rows": [[r["pos"], r["token"], r["role"], r["source"]] for r in rows]}
               for names, _, rows in groups]
    return text, payload
