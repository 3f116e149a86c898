"""The one place that looks inside a ComfyUI CLIP: its family, each text encoder's special
tokens and chat template, where each encoder's rows and pooled vector lie in the conditioning,
and encoding exactly as CLIPTextEncode.

The families are the text encoders described in ``shapefirst/families.py`` (``TEXT_ENCODERS``),
matched by exact tokenizer class (many unrelated tokenizers subclass SD1.x's):

* SD1.x: clip_l (768), pads with [EOS]; SD2.x: OpenCLIP-H ("h", 1024), pads with token 0;
* SDXL: clip_l (768) and clip_g (1280) side by side on channels; pooled from clip_g;
  SDXL refiner / Stable Cascade: clip_g alone;
* PixArt: T5-XXL, no [SOS], one unbounded chunk; Wan: umT5-XXL, the same roles;
* SD3: rows [clip_l | clip_g | zeros to 4096] then T5-XXL's rows; pooled [clip_l | clip_g];
* Flux: T5-XXL's rows; pooled from clip_l alone (clip_l gives no rows);
* Qwen-Image (Qwen2.5-VL) and Z-Image (Qwen3): a chat template around the prompt; Qwen-Image cuts
  the template's prefix from the rows. Lumina 2 (Gemma): [SOS] (BOS) then the prompt, no end token.

Other tokenizers get a generic description (:func:`clip_spec` with ``strict=False``) good for
token labels: the first sub-tokenizer with a vocabulary, its start / end / pad tokens."""

from __future__ import annotations

from dataclasses import dataclass

from ..shapefirst.families import TEXT_ENCODERS
from ..shapefirst.swap import EncoderLayout
from ..shapefirst.tokens import TokenizerInfo


class UnknownClipError(ValueError):
    pass


class ScheduledClipError(ValueError):
    pass


@dataclass(frozen=True)
class ClipSpec:
    kind: str
    encoders: tuple[EncoderLayout, ...]

    @property
    def row_encoders(self) -> tuple[EncoderLayout, ...]:
        return tuple(e for e in self.encoders if e.has_rows)

    @property
    def has_start(self) -> bool:
        """Every encoder with rows has a [SOS] and fixed-length chunks, in one segment (Appendix E's layouts)."""
        rows = self.row_encoders
        return all(e.info.start is not None and e.info.max_length is not None and not e.info.templated
                   for e in rows) and len({e.segment for e in rows}) == 1

    @property
    def signature(self) -> tuple:
        return self.kind, tuple((e.key, e.segment, e.channels, e.pooled) for e in self.encoders)

    def names(self) -> list[str]:
        return [e.name for e in self.encoders]


def _families() -> dict[type, object]:
    """Tokenizer class -> its ``TextEncoder`` description (``shapefirst.families.TEXT_ENCODERS``)."""
    import importlib

    out = {}
    for encoder in TEXT_ENCODERS.values():
        module, name = encoder.tokenizer_class.rsplit(".", 1)
        cls = getattr(importlib.import_module(module), name, None)
        if cls is not None:
            out[cls] = encoder
    return out


def _template_ids(sub, template: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Token ids of the template's text before and after '{}', tokenized as the family does."""
    before, after = template.split("{}", 1)

    def ids(text):
        if not text:
            return ()
        out = sub.tokenize_with_weights(text, disable_weights=True)
        return tuple(int(t[0]) for chunk in out for t in chunk if int(t[0]) != int(sub.pad_token))

    return ids(before), ids(after)


def _info(sub, template=None) -> TokenizerInfo:
    max_length = getattr(sub, "max_length", None)
    chunked = bool(getattr(sub, "pad_to_max_length", True)) and max_length is not None and max_length < 10_000
    start = sub.start_token if getattr(sub, "tokens_start", 1) else None
    pad = getattr(sub, "pad_token", None)
    pad = sub.end_token if pad is None else pad
    prefix, suffix = _template_ids(sub, template) if template else ((), ())
    return TokenizerInfo(start=start, end=sub.end_token, pad=int(pad) if pad is not None else -1,
                         max_length=int(max_length) if chunked else None, prefix=prefix, suffix=suffix)


def _sub_tokenizer(tokenizer, key: str, attr: str):
    for name in (attr, f"clip_{key}", key, getattr(tokenizer, "clip", None)):
        sub = getattr(tokenizer, name, None) if isinstance(name, str) else None
        if sub is not None and hasattr(sub, "tokenize_with_weights"):
            return sub
    raise UnknownClipError(f"{type(tokenizer).__name__} has no sub-tokenizer for {key!r}")


def _present(clip, attr: str | None) -> bool:
    """False when the CLIP model has the slot but holds no encoder in it (SD3 without T5)."""
    if attr is None:
        return True
    model = getattr(clip, "cond_stage_model", None)
    return model is None or not hasattr(model, attr) or getattr(model, attr) is not None


def clip_spec(clip, strict: bool = True) -> ClipSpec:
    """The layout of ``clip``'s conditioning. Unknown tokenizer classes raise UnknownClipError
    when ``strict``, else get a generic single-encoder description (labels and roles only)."""
    tokenizer = getattr(clip, "tokenizer", None)
    entry = _families().get(type(tokenizer))
    if entry is None:
        if strict:
            raise UnknownClipError(type(tokenizer).__name__)
        return _generic_spec(tokenizer)
    kind, defs, template_attr = entry.kind, entry.encoders, entry.template
    if not defs:  # SD1.x's tokenizer: one encoder, named by the instance
        defs = ((tokenizer.clip_name, tokenizer.clip, None, 0, 0, 0),)
        if tokenizer.clip_name == "g":
            kind = "SDXL refiner (clip_g)"
    template = getattr(tokenizer, template_attr, None) if template_attr else None
    encoders = []
    for key, attr, model_attr, segment, channel, pooled in defs:
        if not _present(clip, model_attr):
            continue
        sub = _sub_tokenizer(tokenizer, key, attr)
        width = int(sub.embedding_size)
        encoders.append(EncoderLayout(
            key, f"clip_{key}" if key in ("l", "g", "h") else key, _info(sub, template), segment,
            None if channel is None else (channel, channel + width), None if pooled is None else (pooled, pooled + width),
            drop_prefix=entry.drops_prefix, inv_vocab=getattr(sub, "inv_vocab", {}) or {}))
    return ClipSpec(kind, tuple(encoders))


def _generic_spec(tokenizer) -> ClipSpec:
    name = type(tokenizer).__name__
    candidates = []
    clip_attr = getattr(tokenizer, "clip", None)
    if isinstance(clip_attr, str):
        candidates.append((getattr(tokenizer, "clip_name", clip_attr), clip_attr))
    candidates += [(k[5:] if k.startswith("clip_") else k, k) for k in vars(tokenizer or object())]
    for key, attr in candidates:
        sub = getattr(tokenizer, attr, None)
        if sub is not None and hasattr(sub, "inv_vocab") and hasattr(sub, "end_token") \
                and hasattr(sub, "tokenize_with_weights"):
            width = int(getattr(sub, "embedding_size", 0) or 0)
            enc = EncoderLayout(key, attr, _info(sub), 0, (0, width), None, inv_vocab=sub.inv_vocab or {})
            return ClipSpec(f"unknown ({name})", (enc,))
    raise UnknownClipError(f"{name} (no sub-tokenizer with a vocabulary)")


def tokenize(clip, text: str) -> dict:
    """clip.tokenize with word ids, as CLIPTextEncode tokenizes (same options)."""
    return clip.tokenize(text, return_word_ids=True)


def without_word_ids(tokens: dict) -> dict:
    return {k: [[(e[0], e[1]) for e in chunk] for chunk in chunks] for k, chunks in tokens.items()}


def encode(clip, tokens: dict):
    """(cond (1, T, C), extras dict) exactly as CLIPTextEncode encodes these tokens."""
    out = clip.encode_from_tokens_scheduled(without_word_ids(tokens))
    if len(out) != 1:
        raise ScheduledClipError(len(out))
    cond, extras = out[0]
    return cond, dict(extras)
