"""EOSSwapConditioning: "[SOS] + A's semantic tokens + B's [EOS]" and the paper's other
per-token-class compositions (Yi et al., NeurIPS 2024, Section 5.1 and Appendices C, E, F, G).

Prompts A and B are tokenized and encoded exactly as CLIPTextEncode does (weights and
embeddings included); the output rows are then taken position by position from A, B, zeros or
noise following shapefirst.compose. Keys-only / Values-only swaps store the Values context in
the conditioning under a namespaced key for EOSSwapKVPatch (nodes/kv_swap.py).
"""

from __future__ import annotations

import torch

from ..shapefirst import compose as cmp
from ..shapefirst import ui_keys
from ..shapefirst.tokens import EOS, PAD, ROLE_LABELS, SEM, SOS, TokenLayoutError, format_table, prompt_roles, \
    repeat_semantic, semantic_count, token_text
from . import _clip_tokens as ct
from ._api import io
from ._common import CATEGORY, KEY_PREFIX, LOGGER, ShapeFirstInputError

NODE = "EOSSwapConditioning"
KV_KEY = f"{KEY_PREFIX}eos_swap.values_context"

LAYOUT_OPTIONS = {"prompt A": cmp.LAYOUT_PROMPT, "77 x [SOS]": cmp.LAYOUT_SOS_ONLY,
                  "[SOS] + 76 x [EOS]": cmp.LAYOUT_SOS_EOS}
SOURCE_OPTIONS = list(cmp.SOURCES)
APPLY_BOTH, APPLY_KEYS, APPLY_VALUES = "keys and values", "keys only", "values only"
ALL_A = {SOS: cmp.A, SEM: cmp.A, EOS: cmp.A}


def _err(message: str) -> ShapeFirstInputError:
    return ShapeFirstInputError(NODE, message)


def _spec(clip, which: str) -> ct.ClipSpec:
    if clip is None:
        raise _err(f"{which} is not connected or the checkpoint has no text encoder; connect a CLIP.")
    try:
        return ct.clip_spec(clip)
    except ct.UnknownClipError as exc:
        raise _err(f"{which} has a tokenizer this node does not know ({exc}); [SOS]/[EOS] positions are only "
                   "defined for SD1.x, SD2.x, SDXL (and refiner / Stable Cascade) and PixArt text encoders. "
                   "Use a checkpoint or CLIP loader of one of those types.") from None


def _encode(clip, tokens, which: str):
    try:
        return ct.encode(clip, tokens)
    except ct.ScheduledClipError:
        raise _err(f"the CLIP for {which} has scheduled hooks (several encodings over the steps); EOS swap "
                   "needs one encoding per prompt. Remove the CLIP hook schedule.") from None


def _repeat(tokens: dict, spec: ct.ClipSpec, repeats: int) -> dict:
    out = {}
    for enc in spec.encoders:
        try:
            out[enc.key] = repeat_semantic(tokens[enc.key], repeats, enc.info)
        except TokenLayoutError as exc:
            raise _err(f"prompt A leaves no [EOS] slot with sem_repeats = {repeats}: {exc}. Lower sem_repeats "
                       "or shorten prompt A.") from None
    return out


class _Prompt:
    """One prompt: its tokens (word ids), encoding and roles per encoder."""

    def __init__(self, clip, spec, text, which, repeats=1):
        tokens = ct.tokenize(clip, text)
        self.tokens = _repeat(tokens, spec, repeats) if repeats > 1 else tokens
        self.cond, self.extras = _encode(clip, self.tokens, which)
        self.roles = {e.key: prompt_roles(self.tokens[e.key], e.info) for e in spec.encoders}
        self.empty = all(semantic_count(r) == 0 for r in self.roles.values())
        self._flat: dict[str, list] = {}

    def layout(self, key: str) -> cmp.PromptLayout:
        return cmp.PromptLayout.of(self.roles[key], self.cond.shape[1])

    def token(self, key: str, index: int):
        if key not in self._flat:
            self._flat[key] = [e[0] for chunk in self.tokens[key] for e in chunk]
        flat = self._flat[key]
        return flat[index] if index < len(flat) else None


def _check_types(spec, spec_b, layout, start, end):
    if spec_b.kind != spec.kind or spec_b.channels != spec.channels:
        raise _err(f"prompt A is encoded by a {spec.kind} CLIP but clip_b is {spec_b.kind}; both prompts must "
                   "use the same type of text encoder. Connect a CLIP of the same model family to clip_b, or "
                   "leave clip_b empty.")
    if layout != cmp.LAYOUT_PROMPT and not spec.has_start:
        raise _err(f"the layouts '77 x [SOS]' and '[SOS] + 76 x [EOS]' need a [SOS] token, which the {spec.kind} "
                   "tokenizer does not have; use layout 'prompt A'.")
    window_error = check_window(start, end)
    if window_error:
        raise _err(window_error)


def check_window(start, end) -> str | None:
    if not 0.0 <= float(start) < float(end) <= 1.0:
        return (f"start_percent ({start}) must be below end_percent ({end}), both in [0, 1]; e.g. 0.0 and 0.2 to "
                "swap during the first 20% of sampling.")
    return None


def _check_prompts(a: _Prompt, b: _Prompt, layout, sources):
    if layout == cmp.LAYOUT_PROMPT and a.empty:
        raise _err("prompt A is empty: the output keeps A's semantic tokens, so it needs some. Type a source "
                   "prompt, or choose layout '[SOS] + 76 x [EOS]' to use a prompt's [EOS] alone.")
    used = {sources[r] for r in (SEM, EOS)} if layout == cmp.LAYOUT_PROMPT else \
        ({sources[EOS]} if layout == cmp.LAYOUT_SOS_EOS else set())
    for name, prompt in (("A", a), ("B", b)):
        if name in used and prompt.empty:
            role = "semantic tokens" if sources[SEM] == name and layout == cmp.LAYOUT_PROMPT else "[EOS]"
            raise _err(f"prompt {name} is empty but the {role} come from it. Type prompt {name}, or choose another "
                       f"source than {name}.")


def _compose_all(spec, a: _Prompt, b: _Prompt, layout, sources, padding_is_eos, seed):
    """(composed (1, T, C), A's rows in the same layout (1, T, C), plans per encoder)."""
    length = a.cond.shape[1] if layout == cmp.LAYOUT_PROMPT else spec.encoders[0].info.max_length
    shape = (1, length, a.cond.shape[-1])
    composed = torch.zeros(shape, dtype=a.cond.dtype)
    reference = torch.zeros(shape, dtype=a.cond.dtype)
    generator = torch.Generator().manual_seed(int(seed))
    plans = {}
    for enc in spec.encoders:
        layouts = {cmp.A: a.layout(enc.key), cmp.B: b.layout(enc.key)}
        roles = a.roles[enc.key] if layout == cmp.LAYOUT_PROMPT else cmp.synthetic_layout(layout, length)
        try:
            plan = cmp.plan_rows(roles, layouts, sources, padding_is_eos, length)
            ref_plan = cmp.plan_rows(roles, layouts, ALL_A, padding_is_eos, length)
        except cmp.MissingClassError as exc:
            raise _err(f"{exc} ({enc.name}); choose another source for {ROLE_LABELS[exc.role]}.") from None
        if len(plan) < length:
            raise _err(f"{enc.name} yields {len(plan)} positions, expected {length}; this CLIP is not supported.")
        rows = {cmp.A: a.cond[0, :, enc.channels], cmp.B: b.cond[0, :, enc.channels]}
        flat_a = [r for chunk in a.roles[enc.key] for r in chunk][: a.cond.shape[1]]
        ref_rows = rows[cmp.A][[i for i, r in enumerate(flat_a) if r != SOS]]
        noise = cmp.noise_rows(ref_rows, length, generator)  # drawn for every encoder: seeds stay stable
        composed[0, :, enc.channels] = cmp.compose(plan, rows, noise)
        reference[0, :, enc.channels] = cmp.compose(ref_plan, rows)
        plans[enc.key] = plan
    return composed, reference, plans


def _table_rows(plan, enc, a: _Prompt, b: _Prompt, seed):
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


def build(clip, prompt_a, prompt_b, sos_from="A", sem_from="A", eos_from="B", padding_is_eos=True,
          layout="prompt A", sem_repeats=1, apply_to=APPLY_BOTH, start_percent=0.0, end_percent=1.0,
          pooled_from="B", noise_seed=0, clip_b=None):
    """The node's work: (conditioning, table text, ui payload)."""
    spec = _spec(clip, "clip")
    spec_b = _spec(clip_b, "clip_b") if clip_b is not None else spec
    layout_kind = LAYOUT_OPTIONS.get(layout)
    sources = {SOS: sos_from, SEM: sem_from, EOS: eos_from}
    if layout_kind is None or any(s not in cmp.SOURCES for s in sources.values()) or pooled_from not in ("A", "B") \
            or apply_to not in (APPLY_BOTH, APPLY_KEYS, APPLY_VALUES):
        raise _err(f"unknown option (layout {layout!r}, sources {sources}, pooled {pooled_from!r}, apply_to "
                   f"{apply_to!r}); pick one from the lists.")
    if not isinstance(sem_repeats, int) or sem_repeats < 1:
        raise _err(f"sem_repeats must be a whole number >= 1 (got {sem_repeats}); 1 = the prompt as written.")
    start_percent, end_percent = float(start_percent), float(end_percent)
    _check_types(spec, spec_b, layout_kind, start_percent, end_percent)
    a = _Prompt(clip, spec, str(prompt_a or ""), "prompt A", sem_repeats)
    b = _Prompt(clip_b if clip_b is not None else clip, spec_b, str(prompt_b or ""), "prompt B")
    _check_prompts(a, b, layout_kind, sources)
    composed, reference, plans = _compose_all(spec, a, b, layout_kind, sources, padding_is_eos, noise_seed)

    extras = dict(a.extras)
    pooled_src = b if pooled_from == "B" else a
    if "pooled_output" in pooled_src.extras:
        extras["pooled_output"] = pooled_src.extras["pooled_output"]
    if apply_to == APPLY_BOTH:
        cond = composed
    else:  # the conditioning tensor gives the Keys; EOSSwapKVPatch reads the Values from here
        cond, values = (composed, reference) if apply_to == APPLY_KEYS else (reference, composed)
        extras[KV_KEY] = {"keys": cond, "values": values, "mode": apply_to}
    windowed = start_percent > 0.0 or end_percent < 1.0
    if windowed:
        extras["start_percent"], extras["end_percent"] = start_percent, end_percent
    conditioning = [[cond, extras]]
    if windowed:  # A's own encoding outside the window, as core ConditioningSetTimestepRange + Combine
        plain = a if sem_repeats == 1 else _Prompt(clip, spec, str(prompt_a), "prompt A")
        for lo, hi in ((0.0, start_percent), (end_percent, 1.0)):
            if hi > lo:
                conditioning.append([plain.cond, dict(plain.extras, start_percent=lo, end_percent=hi)])

    title = (f"{spec.kind}: {', '.join(f'{k}<-{v}' for k, v in sources.items())}; layout {layout}; padding "
             f"{'counts as [EOS]' if padding_is_eos else 'kept from A'}; {apply_to}; window "
             f"{start_percent:g}-{end_percent:g}; pooled from {pooled_from}")
    tables, payload = [], {"title": title, "encoders": []}
    groups: list[tuple[list[str], list]] = []
    for enc in spec.encoders:
        rows = _table_rows(plans[enc.key], enc, a, b, noise_seed)
        same = next((g for g in groups if [(r.role, r.kind, r.index) for r in g[1]] ==
                     [(r.role, r.kind, r.index) for r in plans[enc.key]]), None)
        if same:
            same[0].append(enc.name)
            continue
        groups.append(([enc.name], plans[enc.key]))
        payload["encoders"].append({"names": groups[-1][0], "rows": [[r["pos"], r["token"], r["role"], r["source"]]
                                                                     for r in rows]})
        tables.append((groups[-1][0], rows))
    text = "\n\n".join(format_table(rows, f"{NODE} - {', '.join(names)}") for names, rows in tables)
    LOGGER.debug("%s: %s", NODE, title)
    return conditioning, f"{title}\n\n{text}", payload


TokenTableUI = ui_keys.TOKENS


class EOSSwapConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        sources = "A = source prompt, B = target prompt, zeros, noise = seeded Gaussian noise with the " \
                  "per-channel mean and std of A's non-[SOS] rows."
        return io.Schema(
            node_id=NODE,
            display_name="EOS Swap Conditioning ([SOS] + A + [EOS] of B)",
            category=f"{CATEGORY}/conditioning",
            description=(
                "Builds the conditioning \"[SOS] + A's semantic tokens + B's [EOS]\" of Yi et al. (NeurIPS 2024): "
                "A's own rows for [SOS] and the semantic tokens, B's [EOS] rows (and the padding after it) in A's "
                "[EOS] positions. Images then follow B's shapes. Also the paper's other experiments: any class from "
                "A, B, zeros or noise (Appendix F), '77 x [SOS]' and '[SOS] + 76 x [EOS]' prompts (E), repeated "
                "semantic tokens (C), Keys-only / Values-only swaps (G, needs EOS Swap K/V Patch on the model) and "
                "a step window (Fig. 5/6). Prompts are encoded exactly like CLIP Text Encode (weights, embeddings)."
            ),
            inputs=[
                io.Clip.Input("clip", tooltip="Text encoder of the checkpoint: SD1.x, SD2.x, SDXL or PixArt."),
                io.String.Input("prompt_a", multiline=True, dynamic_prompts=True, default="A blue bird",
                                tooltip="Prompt A, the source: its [SOS] and semantic tokens are kept."),
                io.String.Input("prompt_b", multiline=True, dynamic_prompts=True, default="A brown chair",
                                tooltip="Prompt B, the target: its [EOS] rows replace A's (from B's first [EOS] "
                                        "on; if B has fewer [EOS] rows than A, B's last one is repeated)."),
                io.Combo.Input("eos_from", options=SOURCE_OPTIONS, default="B",
                               tooltip=f"Where the [EOS] rows come from. B = the EOS swap, A = plain prompt A. {sources}"),
                io.Combo.Input("sem_from", options=SOURCE_OPTIONS, default="A",
                               tooltip=f"Where the semantic-token rows come from (k-th slot <- k-th semantic row of the "
                                       f"source, its last repeated). {sources}"),
                io.Combo.Input("sos_from", options=SOURCE_OPTIONS, default="A",
                               tooltip=f"Where the [SOS] row comes from. {sources}"),
                io.Boolean.Input("padding_is_eos", default=True,
                                 tooltip="On (the paper): every position after the first [EOS] counts as [EOS]. Off: "
                                         "only the first [EOS] is swapped and A's padding rows stay (SD2.x and SDXL's "
                                         "clip_g pad with token 0, SD1.x with [EOS])."),
                io.Combo.Input("layout", options=list(LAYOUT_OPTIONS), default="prompt A",
                               tooltip="Positions of the output: A's own tokens, or Appendix E's one-chunk prompts "
                                       "'77 x [SOS]' and '[SOS] + 76 x [EOS]' (filled from sos_from / eos_from)."),
                io.Int.Input("sem_repeats", default=1, min=1, max=75,
                             tooltip="Appendix C: repeat A's semantic tokens this many times before its [EOS] "
                                     "(re-encoded), leaving fewer [EOS] slots. 1 = the prompt as written."),
                io.Combo.Input("apply_to", options=[APPLY_BOTH, APPLY_KEYS, APPLY_VALUES], default=APPLY_BOTH,
                               tooltip="Appendix G: where the swap acts in cross-attention. 'keys only' / 'values "
                                       "only' use A's own rows on the other side and need EOS Swap K/V Patch on the "
                                       "MODEL (without it, keys only acts on both, values only on neither)."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Start of the window where the swap acts, in ComfyUI's sampling percent (as "
                                       "Conditioning Set Timestep Range); A's own encoding is used outside it."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="End of the swap window. 0.2 = the first 20% (Fig. 5/6); 1.0 = all steps."),
                io.Combo.Input("pooled_from", options=["B", "A"], default="B",
                               tooltip="SDXL: whose pooled output (clip_g's [EOS]) goes with the swapped rows. "
                                       "Ignored by SD1.x/SD2.x UNets."),
                io.Int.Input("noise_seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False,
                             tooltip="Seed of the Gaussian noise used where a class comes from 'noise' (kept "
                                     "fixed, so the node and its sampler are not re-run on every queue)."),
                io.Clip.Input("clip_b", optional=True,
                              tooltip="Optional CLIP for prompt B (e.g. another LoRA or clip skip); must be the "
                                      "same model family as clip. Default: clip."),
            ],
            outputs=[
                io.Conditioning.Output("conditioning", tooltip="The composed conditioning, for a sampler's positive."),
                io.String.Output("token_table", tooltip="Every output position: token, role, and which row "
                                                        "of which prompt fills it."),
            ],
        )

    @classmethod
    def validate_inputs(cls, start_percent=None, end_percent=None):
        if start_percent is not None and end_percent is not None:
            message = check_window(start_percent, end_percent)
            if message:
                return f"{NODE}: {message}"
        return True

    @classmethod
    def execute(cls, clip, prompt_a, prompt_b, eos_from="B", sem_from="A", sos_from="A", padding_is_eos=True,
                layout="prompt A", sem_repeats=1, apply_to=APPLY_BOTH, start_percent=0.0, end_percent=1.0,
                pooled_from="B", noise_seed=0, clip_b=None) -> io.NodeOutput:
        conditioning, text, payload = build(
            clip, prompt_a, prompt_b, sos_from=sos_from, sem_from=sem_from, eos_from=eos_from,
            padding_is_eos=padding_is_eos, layout=layout, sem_repeats=sem_repeats, apply_to=apply_to,
            start_percent=start_percent, end_percent=end_percent, pooled_from=pooled_from, noise_seed=noise_seed,
            clip_b=clip_b)
        return io.NodeOutput(conditioning, text, ui={TokenTableUI: [payload]})
