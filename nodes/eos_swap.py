"""EOSSwapConditioning: "[SOS] + A's semantic tokens + B's [EOS]" and the paper's other
per-token-class compositions (Yi et al., NeurIPS 2024, Section 5.1 and Appendices C, E, F, G).

Prompts A and B are tokenized and encoded exactly as CLIPTextEncode does (weights and
embeddings included); the output rows are then taken position by position from A, B, zeros or
noise following shapefirst.compose, per text encoder with its own roles (shapefirst.swap; the
encoders, their rows and pooled vectors per family come from nodes/_clip_tokens). Keys-only /
Values-only swaps store the Values context in the conditioning under a namespaced key for
EOSSwapKVPatch (nodes/kv_swap.py).
"""

from __future__ import annotations

from ..shapefirst import compose as cmp
from ..shapefirst import families as fam
from ..shapefirst import swap, ui_keys
from ..shapefirst.swap import APPLY_BOTH, APPLY_KEYS, APPLY_VALUES, LAYOUT_OPTIONS
from ..shapefirst.tokens import EOS, ROLE_LABELS, SEM, SOS, TokenLayoutError, prompt_roles, repeat_semantic
from . import _clip_tokens as ct
from ._api import io
from ._common import CATEGORY, KEY_PREFIX, LOGGER, ShapeFirstInputError

NODE = "EOSSwapConditioning"
KV_KEY = f"{KEY_PREFIX}eos_swap.values_context"

SOURCE_OPTIONS = list(cmp.SOURCES)
DEFAULTS = {**swap.PROMPT_DEFAULTS, **swap.SWAP_DEFAULTS, **swap.OPTIONAL_DEFAULTS}  # every input's default
D = DEFAULTS
FAMILIES = fam.spoken_list(fam.encoder_kinds())  # the described text encoders


def _err(message: str) -> ShapeFirstInputError:
    return ShapeFirstInputError(NODE, message)


def _spec(clip, which: str) -> ct.ClipSpec:
    if clip is None:
        raise _err(f"{which} is not connected or the checkpoint has no text encoder; connect a CLIP.")
    try:
        return ct.clip_spec(clip)
    except ct.UnknownClipError as exc:
        raise _err(f"{which} has a tokenizer this node does not know ({exc}); [SOS]/[EOS] positions are only "
                   f"defined for {FAMILIES} text encoders. Use a checkpoint or CLIP loader of one of those "
                   "types.") from None


def chosen_encoders(spec: ct.ClipSpec, text: str) -> set[str]:
    """Keys of the encoders named in ``text`` ('all', or names / keys separated by commas or spaces)."""
    words = [w for w in str(text or "").replace(",", " ").lower().split() if w]
    if not words or words == ["all"]:
        return {e.key for e in spec.encoders}
    by_name = {n: e.key for e in spec.encoders for n in (e.name.lower(), e.key.lower())}
    unknown = [w for w in words if w not in by_name]
    if unknown:
        raise _err(f"swap_encoders names {', '.join(map(repr, unknown))}, but this {spec.kind} CLIP has "
                   f"{', '.join(spec.names())}; write 'all' or some of those names.")
    return {by_name[w] for w in words}


def _encode(clip, tokens, which: str):
    try:
        return ct.encode(clip, tokens)
    except ct.ScheduledClipError:
        raise _err(f"the CLIP for {which} has scheduled hooks (several encodings over the steps); EOS swap "
                   "needs one encoding per prompt. Remove the CLIP hook schedule.") from None


class _Prompt(swap.EncodedPrompt):
    """One prompt tokenized like CLIPTextEncode, with its roles per encoder; :meth:`encode` adds its rows."""

    def __init__(self, clip, spec: ct.ClipSpec, text: str, which: str, repeats: int = 1):
        self.clip, self.spec, self.which = clip, spec, which
        self.tokens = ct.tokenize(clip, text)
        roles = {}
        for enc in spec.encoders:
            try:
                roles[enc.key] = prompt_roles(self.tokens[enc.key], enc.info)
                if repeats > 1:
                    self.tokens[enc.key] = repeat_semantic(self.tokens[enc.key], repeats, enc.info)
                    roles[enc.key] = prompt_roles(self.tokens[enc.key], enc.info)
            except TokenLayoutError as exc:
                if enc.info.templated:
                    raise _err(f"{which} does not follow the {spec.kind} chat template ({exc}); type the prompt "
                               "alone, without template tokens such as <|im_start|>, the node adds the "
                               "family's template as CLIP Text Encode does.") from None
                raise _err(f"{which} leaves no [EOS] slot with sem_repeats = {repeats}: {exc}. Lower sem_repeats "
                           "or shorten prompt A.") from None
        super().__init__({e.key: swap.row_entries(e, self.tokens[e.key]) for e in spec.encoders},
                         {e.key: swap.row_roles(e, roles[e.key]) for e in spec.encoders}, None)

    def encode(self) -> "_Prompt":
        self.cond, self.extras = _encode(self.clip, self.tokens, self.which)
        self.pooled = self.extras.get("pooled_output")
        try:
            swap.locate(self.spec.encoders, self)
        except TokenLayoutError as exc:
            raise _err(f"{self.which}: {exc}; this {self.spec.kind} CLIP lays out its conditioning in a way this node "
                       "does not know. Use the family's own CLIP loader.") from None
        return self


def check_window(start, end) -> str | None:
    if not 0.0 <= float(start) < float(end) <= 1.0:
        return (f"start_percent ({start}) must be below end_percent ({end}), both in [0, 1]; e.g. 0.0 and 0.2 to "
                "swap during the first 20% of sampling.")
    return None


def _check_types(spec, spec_b, layout, start, end):
    if spec_b.signature != spec.signature:
        raise _err(f"prompt A is encoded by a {spec.kind} CLIP ({', '.join(spec.names())}) but clip_b is "
                   f"{spec_b.kind} ({', '.join(spec_b.names())}); both prompts must use the same type of text "
                   "encoder. Connect a CLIP of the same model family to clip_b, or leave clip_b empty.")
    if layout != cmp.LAYOUT_PROMPT and not spec.has_start:
        raise _err(f"the layouts '77 x [SOS]' and '[SOS] + 76 x [EOS]' need a [SOS] token and fixed-length chunks, "
                   f"which the {spec.kind} tokenizer does not have (every encoder giving rows needs both, in one block "
                   "of rows); use layout 'prompt A'.")
    window_error = check_window(start, end)
    if window_error:
        raise _err(window_error)


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


def build(clip, prompt_a=D["prompt_a"], prompt_b=D["prompt_b"], sos_from=D["sos_from"], sem_from=D["sem_from"],
          eos_from=D["eos_from"], padding_is_eos=D["padding_is_eos"], layout=D["layout"], sem_repeats=D["sem_repeats"],
          apply_to=D["apply_to"], start_percent=D["start_percent"], end_percent=D["end_percent"],
          pooled_from=D["pooled_from"], noise_seed=D["noise_seed"], clip_b=None, swap_encoders=D["swap_encoders"]):
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
    chosen = chosen_encoders(spec, swap_encoders)
    no_end = [e.name for e in spec.row_encoders if e.key in chosen and e.info.end is None and not e.info.templated]
    if no_end and sources[EOS] != cmp.A and layout_kind == cmp.LAYOUT_PROMPT:
        raise _err(f"the {spec.kind} text encoder ({', '.join(no_end)}) has no [EOS]-like token: the prompt's last "
                   f"token ends the sequence, so eos_from {sources[EOS]} would change nothing. Set eos_from to A and "
                   "swap another class (sem_from, sos_from), or use a family with an end token.")
    a = _Prompt(clip, spec, str(prompt_a or ""), "prompt A", sem_repeats)
    b = _Prompt(clip_b if clip_b is not None else clip, spec_b, str(prompt_b or ""), "prompt B")
    _check_prompts(a, b, layout_kind, sources)
    a.encode(), b.encode()
    try:
        composed, reference, plans = swap.compose_all(
            spec.encoders, a, b, layout_kind, sources, padding_is_eos, noise_seed, chosen,
            length=spec.row_encoders[0].info.max_length)
    except cmp.MissingClassError as exc:
        raise _err(f"{exc}; choose another source for {ROLE_LABELS[exc.role]}.") from None
    except TokenLayoutError as exc:
        raise _err(f"{exc}; this CLIP is not supported.") from None

    extras = dict(a.extras)
    pooled = swap.compose_pooled(spec.encoders, a, b, pooled_from, chosen)
    if pooled is not None:
        extras["pooled_output"] = pooled
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
        plain = a if sem_repeats == 1 else _Prompt(clip, spec, str(prompt_a), "prompt A").encode()
        for lo, hi in ((0.0, start_percent), (end_percent, 1.0)):
            if hi > lo:
                conditioning.append([plain.cond, dict(plain.extras, start_percent=lo, end_percent=hi)])

    names = [e.name for e in spec.encoders if e.key in chosen]
    title = (f"{spec.kind}: {', '.join(f'{k}<-{v}' for k, v in sources.items())}; layout {layout}; padding "
             f"{'counts as [EOS]' if padding_is_eos else 'kept from A'}; {apply_to}; window "
             f"{start_percent:g}-{end_percent:g}; pooled from {pooled_from}; encoders {', '.join(names)}")
    text, groups = swap.tables(spec.encoders, plans, a, b, noise_seed, NODE)
    LOGGER.debug("%s: %s", NODE, title)
    return conditioning, f"{title}\n\n{text}", {"title": title, "encoders": groups}


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
                "a step window (Fig. 5/6). Prompts are encoded exactly like CLIP Text Encode (weights, embeddings). "
                "SD3 / Flux / T5 / LLM text encoders: each encoder is composed with its own token roles (README)."
            ),
            inputs=[
                io.Clip.Input("clip", tooltip=f"Text encoder of the checkpoint: {FAMILIES} (roles per family in "
                                              "docs/model-families.md)."),
                io.String.Input("prompt_a", multiline=True, dynamic_prompts=True, default=D["prompt_a"],
                                tooltip="Prompt A, the source: its [SOS] and semantic tokens are kept."),
                io.String.Input("prompt_b", multiline=True, dynamic_prompts=True, default=D["prompt_b"],
                                tooltip="Prompt B, the target: its [EOS] rows replace A's (from B's first [EOS] "
                                        "on; if B has fewer [EOS] rows than A, B's last one is repeated)."),
                io.Combo.Input("eos_from", options=SOURCE_OPTIONS, default=D["eos_from"],
                               tooltip=f"Where the [EOS] rows come from. B = the EOS swap, A = plain prompt A. {sources}"),
                io.Combo.Input("sem_from", options=SOURCE_OPTIONS, default=D["sem_from"],
                               tooltip=f"Where the semantic-token rows come from (k-th slot <- k-th semantic row of the "
                                       f"source, its last repeated). {sources}"),
                io.Combo.Input("sos_from", options=SOURCE_OPTIONS, default=D["sos_from"],
                               tooltip=f"Where the [SOS] row comes from. {sources}"),
                io.Boolean.Input("padding_is_eos", default=D["padding_is_eos"],
                                 tooltip="On (the paper): every position after the first [EOS] counts as [EOS]. Off: "
                                         "only the first [EOS] is swapped and A's padding rows stay (SD2.x and SDXL's "
                                         "clip_g pad with token 0, SD1.x with [EOS])."),
                io.Combo.Input("layout", options=list(LAYOUT_OPTIONS), default=D["layout"],
                               tooltip="Positions of the output: A's own tokens, or Appendix E's one-chunk prompts "
                                       "'77 x [SOS]' and '[SOS] + 76 x [EOS]' (filled from sos_from / eos_from)."),
                io.Int.Input("sem_repeats", default=D["sem_repeats"], min=1, max=75,
                             tooltip="Appendix C: repeat A's semantic tokens this many times before its [EOS] "
                                     "(re-encoded), leaving fewer [EOS] slots. 1 = the prompt as written."),
                io.Combo.Input("apply_to", options=[APPLY_BOTH, APPLY_KEYS, APPLY_VALUES], default=D["apply_to"],
                               tooltip="Appendix G: where the swap acts in cross-attention. 'keys only' / 'values "
                                       "only' use A's own rows on the other side and need EOS Swap K/V Patch on the "
                                       "MODEL (without it, keys only acts on both, values only on neither)."),
                io.Float.Input("start_percent", default=D["start_percent"], min=0.0, max=1.0, step=0.01,
                               tooltip="Start of the window where the swap acts, in ComfyUI's sampling percent (as "
                                       "Conditioning Set Timestep Range); A's own encoding is used outside it."),
                io.Float.Input("end_percent", default=D["end_percent"], min=0.0, max=1.0, step=0.01,
                               tooltip="End of the swap window. 0.2 = the first 20% (Fig. 5/6); 1.0 = all steps."),
                io.Combo.Input("pooled_from", options=[cmp.B, cmp.A], default=D["pooled_from"],
                               tooltip="Whose pooled vector (the [EOS] analogue: SDXL clip_g's, SD3 clip_l + "
                                       "clip_g's, Flux clip_l's) goes with the output, for each encoder in "
                                       "swap_encoders. B with eos_from A swaps the pooled vector alone. Ignored by "
                                       "SD1.x/SD2.x UNets; T5-only and LLM encoders have none."),
                io.Int.Input("noise_seed", default=D["noise_seed"], min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False,
                             tooltip="Seed of the Gaussian noise used where a class comes from 'noise' (kept "
                                     "fixed, so the node and its sampler are not re-run on every queue)."),
                io.String.Input("swap_encoders", default=D["swap_encoders"], optional=True,
                                tooltip="Which text encoders take the composition (B's rows, zeros, noise) and, with "
                                        "pooled_from B, B's pooled vector; the others keep prompt A's own rows. "
                                        "'all' (default) or names separated by commas: SDXL clip_l, clip_g; SD3 "
                                        "clip_l, clip_g, t5xxl; Flux clip_l (pooled only), t5xxl."),
                io.Clip.Input("clip_b", optional=True,
                              tooltip="Optional CLIP for prompt B (e.g. another LoRA or clip skip); must be the "
                                      "same model family as clip. Default: clip."),
            ],
            outputs=[
                io.Conditioning.Output("conditioning", display_name="conditioning", tooltip="The composed conditioning, for a sampler's positive."),
                io.String.Output("token_table", display_name="token_table", tooltip="Every output position: token, role, and which row "
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
    def execute(cls, clip, prompt_a=D["prompt_a"], prompt_b=D["prompt_b"], clip_b=None, **options) -> io.NodeOutput:
        conditioning, text, payload = build(clip, prompt_a, prompt_b, clip_b=clip_b, **options)
        return io.NodeOutput(conditioning, text, ui={TokenTableUI: [payload]})
