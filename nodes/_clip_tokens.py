"""What ShapeFirst needs to know about a ComfyUI CLIP: its tokenizers' special tokens, which
channels of the conditioning each text encoder fills, and encoding exactly as CLIPTextEncode.

Only CLIP types whose conditioning layout is known are accepted (matched by exact tokenizer
class, since many unrelated tokenizers subclass SD1Tokenizer):

* SD1.x: clip_l, 768 channels, pads with [EOS];
* SD2.x: OpenCLIP ViT-H ("h"), 1024 channels, pads with token 0;
* SDXL: clip_l (768) then clip_g (1280) concatenated on channels; pooled output from clip_g;
* SDXL refiner / Stable Cascade: clip_g alone;
* PixArt: T5-XXL (4096), no [SOS], one unbounded chunk, no padding unless a minimum length is set.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..shapefirst.tokens import TokenizerInfo


class UnknownClipError(ValueError):
    pass


@dataclass(frozen=True)
class EncoderSpec:
    key: str  # key in clip.tokenize(...) output: "l", "g", "h", "t5xxl"
    name: str  # readable: "clip_l"
    info: TokenizerInfo
    start: int  # first channel of this encoder in the conditioning tensor
    stop: int
    inv_vocab: dict

    @property
    def channels(self) -> slice:
        return slice(self.start, self.stop)


@dataclass(frozen=True)
class ClipSpec:
    kind: str
    encoders: tuple[EncoderSpec, ...]

    @property
    def channels(self) -> int:
        return self.encoders[-1].stop

    @property
    def has_start(self) -> bool:
        return all(e.info.start is not None for e in self.encoders)


def _known_types() -> dict[type, tuple[str, tuple[str, ...]]]:
    """Tokenizer class -> (kind, keys in channel order)."""
    import comfy.sd1_clip
    import comfy.sdxl_clip
    import comfy.text_encoders.pixart_t5
    import comfy.text_encoders.sd2_clip

    return {
        comfy.sd1_clip.SD1Tokenizer: ("SD1.x", ()),  # key read from the instance: "l" (or "g")
        comfy.text_encoders.sd2_clip.SD2Tokenizer: ("SD2.x", ("h",)),
        comfy.sdxl_clip.SDXLTokenizer: ("SDXL", ("l", "g")),
        comfy.sdxl_clip.StableCascadeTokenizer: ("Stable Cascade / SDXL refiner", ("g",)),
        comfy.text_encoders.pixart_t5.PixArtTokenizer: ("PixArt (T5-XXL)", ("t5xxl",)),
    }


def _sub_tokenizer(tokenizer, key: str):
    for name in (f"clip_{key}", key):
        sub = getattr(tokenizer, name, None)
        if sub is not None and hasattr(sub, "tokenize_with_weights"):
            return name, sub
    raise UnknownClipError(f"no sub-tokenizer for {key!r}")


def clip_spec(clip) -> ClipSpec:
    """The layout of ``clip``'s conditioning, or UnknownClipError naming the tokenizer."""
    tokenizer = getattr(clip, "tokenizer", None)
    known = _known_types()
    entry = known.get(type(tokenizer))
    if entry is None:
        raise UnknownClipError(type(tokenizer).__name__)
    kind, keys = entry
    if not keys:  # SD1Tokenizer: one encoder, named by the instance
        keys = (tokenizer.clip_name,)
        if keys[0] == "g":
            kind = "SDXL refiner (clip_g)"
    encoders, start = [], 0
    for key in keys:
        name, sub = _sub_tokenizer(tokenizer, key)
        max_length = getattr(sub, "max_length", None)
        chunked = bool(getattr(sub, "pad_to_max_length", True)) and max_length is not None and max_length < 10_000
        info = TokenizerInfo(start=sub.start_token, end=sub.end_token, pad=int(sub.pad_token),
                             max_length=int(max_length) if chunked else None)
        width = int(sub.embedding_size)
        encoders.append(EncoderSpec(key, name, info, start, start + width, getattr(sub, "inv_vocab", {}) or {}))
        start += width
    return ClipSpec(kind, tuple(encoders))


def tokenize(clip, text: str) -> dict:
    """clip.tokenize with word ids, as CLIPTextEncode tokenizes (same options)."""
    return clip.tokenize(text, return_word_ids=True)


def without_word_ids(tokens: dict) -> dict:
    return {k: [[(e[0], e[1]) for e in chunk] for chunk in chunks] for k, chunks in tokens.items()}


class ScheduledClipError(ValueError):
    pass


def encode(clip, tokens: dict):
    """(cond (1, T, C), extras dict) exactly as CLIPTextEncode encodes these tokens."""
    out = clip.encode_from_tokens_scheduled(without_word_ids(tokens))
    if len(out) != 1:
        raise ScheduledClipError(len(out))
    cond, extras = out[0]
    return cond, dict(extras)
