"""Per-class composition of encoded prompts: which row fills each token position.

The output of a composition has a *layout*: a role per position, per chunk. Normally it is
prompt A's own layout; the paper's Appendix E uses two synthetic ones (77 x [SOS], and [SOS] +
76 x [EOS]). Each class (SOS, SEM, EOS) takes its rows from a *source*: prompt A, prompt B,
zeros, or seeded Gaussian noise. Padding that does not count as [EOS] always keeps A's rows.

The one rule for A and B: the k-th slot of class c in output chunk i takes the k-th row of
class c in the source prompt's chunk min(i, n_chunks - 1); when the source has fewer rows of
that class, its last row is repeated. So in A's own layout, A as the source is the identity,
and B's [EOS] region fills A's [EOS] region in order from B's first [EOS].

Plain torch; no ComfyUI import.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .tokens import EOS, PAD, SEM, SOS, TokenLayoutError, chunk_offsets, effective_role, role_positions

A, B, ZEROS, NOISE = "A", "B", "zeros", "noise"
SOURCES = (A, B, ZEROS, NOISE)

LAYOUT_PROMPT = "prompt"
LAYOUT_SOS_ONLY = "sos_only"  # Appendix E: every position is [SOS]
LAYOUT_SOS_EOS = "sos_eos"  # Appendix E: [SOS] then [EOS] everywhere else
LAYOUTS = (LAYOUT_PROMPT, LAYOUT_SOS_ONLY, LAYOUT_SOS_EOS)


class MissingClassError(TokenLayoutError):
    """A source prompt has no row of a class the composition needs (e.g. an empty prompt B)."""

    def __init__(self, prompt: str, role: str, encoder: str = ""):
        where = f" ({encoder})" if encoder else ""
        super().__init__(f"prompt {prompt} has no {role} token to take rows from{where}")
        self.prompt = prompt
        self.role = role
        self.encoder = encoder


@dataclass(frozen=True)
class PromptLayout:
    """One prompt's roles per chunk, and how many of its encoded rows exist.

    ``length`` is the number of rows of the encoding (None: all positions); ComfyUI cuts SDXL's
    clip_l and clip_g outputs to a common length, which can drop trailing positions.
    """

    roles: tuple[tuple[str, ...], ...]
    length: int | None = None

    @classmethod
    def of(cls, roles, length: int | None = None) -> "PromptLayout":
        return cls(tuple(tuple(r) for r in roles), length)

    @property
    def n_rows(self) -> int:
        total = sum(len(r) for r in self.roles)
        return total if self.length is None else min(total, self.length)

    def region(self, chunk: int, role: str, padding_is_eos: bool) -> list[int]:
        """Flat row indices of class ``role`` in chunk min(chunk, last), in order."""
        if not self.roles:
            return []
        j = min(chunk, len(self.roles) - 1)
        offset = chunk_offsets([list(r) for r in self.roles])[j]
        rows = [offset + p for p in role_positions(list(self.roles[j]), padding_is_eos)[role]]
        return [r for r in rows if r < self.n_rows]


@dataclass(frozen=True)
class RowSource:
    """Where one output row comes from: ``kind`` A/B (with the flat ``index``), zeros or noise."""

    role: str  # the class the slot counts as (padding folded into EOS when it counts as [EOS])
    kind: str
    index: int | None = None
    slot: str = ""  # the slot's own role in the layout (SOS / SEM / EOS / PAD)


def synthetic_layout(kind: str, length: int) -> list[list[str]]:
    """Appendix E's layouts: one chunk of ``length`` positions."""
    if kind == LAYOUT_SOS_ONLY:
        return [[SOS] * length]
    if kind == LAYOUT_SOS_EOS:
        return [[SOS] + [EOS] * (length - 1)]
    raise ValueError(f"unknown synthetic layout {kind!r}")


def plan_rows(layout, prompts: dict[str, PromptLayout], sources: dict[str, str],
              padding_is_eos: bool = True, length: int | None = None) -> list[RowSource]:
    """A RowSource per output position of ``layout`` (roles per chunk), at most ``length`` rows.

    ``sources`` maps SOS / SEM / EOS to one of SOURCES; ``prompts`` maps "A" / "B" to their
    layouts. Raises MissingClassError when a source prompt lacks a class it must provide.
    """
    for role in (SOS, SEM, EOS):
        if sources.get(role) not in SOURCES:
            raise ValueError(f"source of {role} must be one of {SOURCES}, got {sources.get(role)!r}")
    plan: list[RowSource] = []
    for i, chunk in enumerate(layout):
        counters: dict[str, int] = {}
        for role in chunk:
            cls = effective_role(role, padding_is_eos)
            kind = A if cls == PAD else sources[cls]
            k = counters.get(cls, 0)
            counters[cls] = k + 1
            index = None
            if kind in (A, B):
                region = prompts[kind].region(i, cls, padding_is_eos)
                if not region:
                    raise MissingClassError(kind, cls)
                index = region[min(k, len(region) - 1)]
            plan.append(RowSource(cls, kind, index, role))
    return plan if length is None else plan[:length]


def noise_rows(reference: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` rows of Gaussian noise with the per-channel mean and standard deviation of
    ``reference`` (rows x channels), in float32."""
    ref = reference.to(torch.float32)
    mean = ref.mean(dim=0)
    std = ref.std(dim=0, unbiased=False) if ref.shape[0] > 1 else ref.abs().mean(dim=0)
    z = torch.randn((n, ref.shape[1]), generator=generator, dtype=torch.float32)
    return mean + std * z


def compose(plan: list[RowSource], rows: dict[str, torch.Tensor], noise: torch.Tensor | None = None) -> torch.Tensor:
    """Rows (len(plan), C) filled as ``plan`` says, from ``rows[A]`` / ``rows[B]`` (T, C) and
    ``noise`` (len(plan), C, only read where the plan says noise). dtype and device of A."""
    ref = rows[A]
    out = torch.zeros((len(plan), ref.shape[-1]), dtype=ref.dtype, device=ref.device)
    for kind in (A, B):
        pos = [p for p, r in enumerate(plan) if r.kind == kind]
        if pos:
            idx = torch.tensor([plan[p].index for p in pos], dtype=torch.long, device=rows[kind].device)
            out[pos] = rows[kind].index_select(0, idx).to(out)
    pos = [p for p, r in enumerate(plan) if r.kind == NOISE]
    if pos:
        if noise is None or noise.shape[0] < len(plan):
            raise ValueError("the plan asks for noise rows but none were given")
        out[pos] = noise[pos].to(out)
    return out
