"""One description per model family: everything ShapeFirst knows of a family's diffusion network and text
encoder, as data. Pure (no ComfyUI import): classes are named by their dotted path, which the glue in
``nodes/model_families.py`` matches exactly against the loaded network (never by a base class, so a
variant nobody described is refused with its reason, not guessed).

A ``ModelFamily`` says:
* which network it is (``model_class``, plus ``when`` conditions on the network's attributes where one
  class serves several families: Lumina 2 and Z-Image share ``NextDiT``; or the class of its text layers:
  Wan's text-to-video and image-to-video share ``WanModel``);
* how the text reaches the image: ``CROSS`` attention layers (``TextLayers``: where they live, their
  class, how their attention call is reached, which call inside them attends to the text) or ``JOINT``
  attention over one sequence of text and image tokens (``JointLayout``: the order of the two parts,
  padding, masks);
* how the text's Keys and Values are projected (``KVProjection``), for the Keys-only / Values-only swap;
* per feature (``FEATURES``) whether it applies, and where not the reason shown to the user.

``TEXT_ENCODERS`` describes the tokenizers (the EOS swap's families): each text encoder's special
tokens, where its rows and pooled vector lie in the conditioning, its chat template.

Adding a family: one ``ModelFamily`` here (and a ``TextEncoder`` if its tokenizer is new), plus its test
model and tests; the capture, the text cache, the K/V patch and the EOS swap read these tables.
"""

from __future__ import annotations

from dataclasses import dataclass

CROSS, JOINT = "cross", "joint"
# how a cross-attention layer's attention call is reached
ATTN2_PATCH = "attn2_patch"  # core's attn2 patches run before it (UNet BasicTransformerBlock); the call passes the override
OVERRIDE = "override"  # the call passes transformer_options (so the attention override) but no attn2 patch runs
NO_OPTIONS = "no_options"  # the call passes no transformer_options: only the layer's own forward can be reached
# the features that read a family's network
TRUNCATION, TEXT_CACHE, KEYS_VALUES, CAPTURE, KV_PATCH = "truncation", "text_cache", "keys_values", "capture", "kv_patch"
FEATURES = (TRUNCATION, TEXT_CACHE, KEYS_VALUES, CAPTURE, KV_PATCH)
TEXT_FIRST, IMAGE_FIRST = ("text", "image"), ("image", "text")


@dataclass(frozen=True)
class Support:
    """Whether a feature applies to a family; ``why`` is what the user reads when it does not."""

    ok: bool
    why: str = ""


YES = Support(True)


def no(why: str) -> Support:
    return Support(False, why)


@dataclass(frozen=True)
class TextLayers:
    """Where a CROSS family's text attention lives, under the network (``diffusion_model``).

    Either every ``blocks[i].<attribute>`` (``blocks`` set), or the ``attribute`` of every module of
    class ``holder`` (a UNet's BasicTransformerBlocks; holders whose ``skip_if`` attribute is true or
    whose layer is None have none). Every layer found must be of ``layer_class``.
    """

    attribute: str
    layer_class: str
    reached: str
    blocks: str | None = None
    holder: str | None = None
    skip_if: str | None = None
    text_call: int = 0  # which attention call inside the layer attends to the text (0 = the first)
    calls: int = 1  # attention calls inside one call of the layer


@dataclass(frozen=True)
class KVProjection:
    """How a CROSS family projects the text's Keys and Values.

    ``value_context``: K = to_k(context), V = to_v(value), with ``value`` a separate argument the attn2
    patches can set (UNet); ``separate``: K = norm_k(k(text)), V = v(text) of the text embedded by the
    network's ``embedder``; ``fused``: K and V are the two halves of ``kv(text)`` of the embedded text.
    ``image_branch``: the layer also attends to image tokens placed before the text in its context
    (Wan image-to-video: CLIP-vision tokens, ``context_img_len`` of them).
    """

    kind: str
    embedder: str | None = None
    embedder_class: str | None = None
    image_branch: bool = False


@dataclass(frozen=True)
class JointLayout:
    """One joint attention call's token sequence: the text and image parts in ``order`` (more tokens may
    follow), the text padded to a multiple of the network's ``text_pad`` attribute when that is set,
    a mask passed positionally by the call when ``masked``. Calls over fewer tokens than text + image
    are not joint (image-only or text-only layers) and are skipped. ``padded``: both parts are padded
    (each to a multiple of ``text_pad``, pad tokens after each part), so a joint call holds exactly
    text_pad(text) + text_pad(image) tokens and only such calls are read (Z-Image: its refiner layers
    attend over the padded text alone and the padded image alone)."""

    order: tuple[str, str] = TEXT_FIRST
    text_pad: str | None = None
    masked: bool = False
    padded: bool = False

    def spans(self, text: int, image: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """((text start, text length), (image start, image length)) in a joint sequence."""
        if self.order == TEXT_FIRST:
            return (0, text), (text, image)
        return (image, text), (0, image)


@dataclass(frozen=True)
class ModelFamily:
    name: str  # what the user reads
    model_class: str
    attention: str
    features: dict
    when: tuple = ()  # conditions on the network: (dotted attribute, "is None" | "is not None") or (attribute, "==", value)
    layers: TextLayers | None = None
    kv: KVProjection | None = None
    joint: JointLayout | None = None
    video: bool = False  # 5-D latents (batch, channels, frames, height, width)
    patch_size: str | None = "patch_size"  # the network's attribute: int, or (frames, h, w); None: 1
    text_encoders: tuple = ()  # keys of TEXT_ENCODERS, for the docs

    def support(self, feature: str) -> Support:
        return self.features.get(feature, YES if feature == TRUNCATION else no("not described for this family"))


_JOINT_TEXT = ("joint attention: text and image tokens share one softmax and every block updates the text tokens "
               "from the image, so no layer's text contribution can be reused without recomputing the attention")
_JOINT_KV = ("joint attention: the text tokens are projected to Keys and Values inside every block together with "
             "the image tokens and change from block to block, so there is no Keys/Values pair of the prompt to split")
_KV_UNET_ONLY = ("keys_values caches the to_k/to_v projections of UNet cross-attention (SD1.x, SD2.x, SDXL); "
                 "this family's cross-attention projects the embedded text inside each block")
_JOINT_NO_KV_CACHE = "keys_values applies to UNet cross-attention (SD1.x, SD2.x, SDXL); this family has joint attention"


def _cross(**features) -> dict:
    return {TRUNCATION: YES, TEXT_CACHE: YES, KEYS_VALUES: no(_KV_UNET_ONLY), CAPTURE: YES, KV_PATCH: YES, **features}


def _joint(capture: Support = YES) -> dict:
    return {TRUNCATION: YES, TEXT_CACHE: no(_JOINT_TEXT), KEYS_VALUES: no(_JOINT_NO_KV_CACHE), CAPTURE: capture,
            KV_PATCH: no(_JOINT_KV)}


_ATTENTION = "comfy.ldm.modules.attention"
_WAN = "comfy.ldm.wan.model"
_WAN_LAYERS = dict(attribute="cross_attn", reached=OVERRIDE, blocks="blocks")
_WAN_KV = dict(kind="separate", embedder="text_embedding")
_HV = "comfy.ldm.hunyuan_video.model.HunyuanVideo"
_FLUX = "comfy.ldm.flux.model.Flux"
_HV15_CAPTURE = ("its joint text holds the image prompt's and the quoted text's (glyph) tokens before the "
                 "prompt's, in numbers the conditioning does not give, over video latents: a layout the capture "
                 "does not read")

FAMILIES: tuple[ModelFamily, ...] = (
    ModelFamily(
        "SD1.x / SD2.x / SDXL", "comfy.ldm.modules.diffusionmodules.openaimodel.UNetModel", CROSS,
        _cross(**{KEYS_VALUES: YES}),
        layers=TextLayers("attn2", f"{_ATTENTION}.CrossAttention", ATTN2_PATCH, holder=f"{_ATTENTION}.BasicTransformerBlock",
                          skip_if="switch_temporal_ca_to_sa"),
        kv=KVProjection("value_context"), patch_size=None, text_encoders=("sd1", "sd2", "sdxl", "sdxl_refiner")),
    ModelFamily(
        "PixArt", "comfy.ldm.pixart.pixartms.PixArtMS", CROSS, _cross(),
        layers=TextLayers("cross_attn", "comfy.ldm.pixart.blocks.MultiHeadCrossAttention", NO_OPTIONS, blocks="blocks"),
        kv=KVProjection("fused", "y_embedder", "comfy.ldm.pixart.blocks.CaptionEmbedder"), text_encoders=("pixart",)),
    ModelFamily(
        "Wan 2.1 / 2.2 text-to-video", f"{_WAN}.WanModel", CROSS, _cross(),
        layers=TextLayers(layer_class=f"{_WAN}.WanT2VCrossAttention", **_WAN_LAYERS), kv=KVProjection(**_WAN_KV),
        video=True, text_encoders=("wan",)),
    ModelFamily(
        # the CLIP-vision tokens of the start image get their own attention call (the first) inside each
        # block's cross-attention, with their own K/V projections; the text's call is the block's second
        "Wan 2.1 image-to-video", f"{_WAN}.WanModel", CROSS, _cross(),
        layers=TextLayers(layer_class=f"{_WAN}.WanI2VCrossAttention", text_call=1, calls=2, **_WAN_LAYERS),
        kv=KVProjection(image_branch=True, **_WAN_KV), video=True, text_encoders=("wan",)),
    ModelFamily("SD3", "comfy.ldm.modules.diffusionmodules.mmdit.OpenAISignatureMMDITWrapper", JOINT, _joint(),
                joint=JointLayout(), text_encoders=("sd3",)),
    ModelFamily("Flux", _FLUX, JOINT, _joint(), when=(("double_stream_modulation_img", "is None"),),
                joint=JointLayout(), text_encoders=("flux",)),
    # Flux 2 ([dev], Klein): Flux's class with one modulation shared by all blocks; the text is front-padded
    # to 512 rows by core (model_base.Flux2), every row a text key of the joint call
    ModelFamily("Flux 2", _FLUX, JOINT, _joint(), when=(("double_stream_modulation_img", "is not None"),),
                joint=JointLayout()),
    ModelFamily("Qwen-Image", "comfy.ldm.qwen_image.model.QwenImageTransformer2DModel", JOINT, _joint(),
                joint=JointLayout(masked=True), text_encoders=("qwen_image",)),
    ModelFamily("Lumina 2", "comfy.ldm.lumina.model.NextDiT", JOINT, _joint(), when=(("pad_tokens_multiple", "is None"),),
                joint=JointLayout(masked=True), text_encoders=("lumina2",)),
    ModelFamily(
        # [prompt; learned pad tokens to a multiple of pad_tokens_multiple; image; pad tokens], no mask
        "Z-Image", "comfy.ldm.lumina.model.NextDiT", JOINT, _joint(), when=(("pad_tokens_multiple", "is not None"),),
        joint=JointLayout(text_pad="pad_tokens_multiple", masked=True, padded=True), text_encoders=("z_image",)),
    ModelFamily("Chroma", "comfy.ldm.chroma.model.Chroma", JOINT, _joint(), joint=JointLayout(),
                text_encoders=("pixart",)),  # T5-XXL through PixArt's tokenizer (CLIPLoader type chroma)
    ModelFamily("Chroma Radiance", "comfy.ldm.chroma_radiance.model.ChromaRadiance", JOINT,
                _joint(capture=no("its image tokens are pixel patches: a layout the capture does not read")),
                joint=JointLayout()),
    ModelFamily("HunyuanVideo", _HV, JOINT,
                _joint(capture=no("its text and image tokens attend jointly in a layout the capture has not been "
                                  "checked against")), when=(("vision_in_dim", "is None"),),
                joint=JointLayout(order=IMAGE_FIRST), video=True),
    # HunyuanVideo 1.5: HunyuanVideo's class with the image-prompt projection (vision_in_dim). Its double
    # blocks put [image; text] in each joint call where they are built flipped (flipped_img_txt: ComfyUI
    # 0.3.75), [text; image] where the flag is gone (0.33.0): the order is read from the network
    ModelFamily("HunyuanVideo 1.5", _HV, JOINT, _joint(capture=no(_HV15_CAPTURE)),
                when=(("vision_in_dim", "is not None"), ("double_blocks.0.flipped_img_txt", "==", True)),
                joint=JointLayout(order=IMAGE_FIRST), video=True),
    ModelFamily("HunyuanVideo 1.5", _HV, JOINT, _joint(capture=no(_HV15_CAPTURE)),
                when=(("vision_in_dim", "is not None"), ("double_blocks.0", "is not None"),
                      ("double_blocks.0.flipped_img_txt", "is None")),
                joint=JointLayout(order=TEXT_FIRST), video=True),
    ModelFamily("AuraFlow", "comfy.ldm.aura.mmdit.MMDiT", JOINT,
                _joint(capture=no("its joint sequence holds register tokens beside the text and image tokens, a "
                                  "layout the capture does not read"))),
    ModelFamily("HiDream", "comfy.ldm.hidream.model.HiDreamImageTransformer2DModel", JOINT,
                _joint(capture=no("its joint attention puts the image tokens first and then the rows of two text "
                                  "encoders (T5, and per block a different Llama layer), a layout the capture does "
                                  "not read"))),
    ModelFamily("OmniGen 2", "comfy.ldm.omnigen.omnigen2.OmniGen2Transformer2DModel", JOINT,
                _joint(capture=no("its joint layout (reference images beside the text) is not read by the capture"))),
)


def supported(feature: str, attention: str | None = None) -> list[str]:
    """Names of the families ``feature`` applies to (of that ``attention`` kind when given), in table order."""
    return [f.name for f in FAMILIES if f.support(feature).ok and attention in (None, f.attention)]


def spoken_list(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def encoder_kinds() -> list[str]:
    """What the user reads for each described text encoder, in table order."""
    return [te.kind for te in TEXT_ENCODERS.values()]


# -- text encoders (the EOS swap, the attention view's token labels) -----------------------------------------

@dataclass(frozen=True)
class TextEncoder:
    """A tokenizer class and its encoders. Each encoder: (key, tokenizer attribute, attribute of the CLIP's
    cond_stage_model (None: always present), segment of rows, first channel of its rows (None: no rows),
    first channel of its pooled vector (None: none)). No encoders: one, named by the tokenizer instance
    (SD1Tokenizer: "l", or "g" for the SDXL refiner). ``template``: the tokenizer's chat-template attribute;
    ``drops_prefix``: the encoder cuts the template's prefix from its rows."""

    tokenizer_class: str
    kind: str
    encoders: tuple = ()
    template: str | None = None
    drops_prefix: bool = False


_TE = "comfy.text_encoders"
TEXT_ENCODERS: dict[str, TextEncoder] = {
    "sd1": TextEncoder("comfy.sd1_clip.SD1Tokenizer", "SD1.x"),
    "sd2": TextEncoder(f"{_TE}.sd2_clip.SD2Tokenizer", "SD2.x", (("h", "clip_h", None, 0, 0, 0),)),
    "sdxl": TextEncoder("comfy.sdxl_clip.SDXLTokenizer", "SDXL",
                        (("l", "clip_l", "clip_l", 0, 0, None), ("g", "clip_g", "clip_g", 0, 768, 0))),
    "sdxl_refiner": TextEncoder("comfy.sdxl_clip.StableCascadeTokenizer", "Stable Cascade / SDXL refiner",
                                (("g", "clip_g", None, 0, 0, 0),)),
    "pixart": TextEncoder(f"{_TE}.pixart_t5.PixArtTokenizer", "PixArt (T5-XXL)", (("t5xxl", "t5xxl", None, 0, 0, None),)),
    "wan": TextEncoder(f"{_TE}.wan.WanT5Tokenizer", "Wan (umT5-XXL)", (("umt5xxl", "clip_umt5xxl", None, 0, 0, None),)),
    "sd3": TextEncoder(f"{_TE}.sd3_clip.SD3Tokenizer", "SD3",
                       (("l", "clip_l", "clip_l", 0, 0, 0), ("g", "clip_g", "clip_g", 0, 768, 768),
                        ("t5xxl", "t5xxl", "t5xxl", 1, 0, None))),
    "flux": TextEncoder(f"{_TE}.flux.FluxTokenizer", "Flux",
                        (("l", "clip_l", None, None, None, 0), ("t5xxl", "t5xxl", None, 0, 0, None))),
    "qwen_image": TextEncoder(f"{_TE}.qwen_image.QwenImageTokenizer", "Qwen-Image (Qwen2.5-VL)",
                              (("qwen25_7b", "qwen25_7b", None, 0, 0, None),), "llama_template", drops_prefix=True),
    "z_image": TextEncoder(f"{_TE}.z_image.ZImageTokenizer", "Z-Image (Qwen3)",
                           (("qwen3_4b", "qwen3_4b", None, 0, 0, None),), "llama_template"),
    "lumina2": TextEncoder(f"{_TE}.lumina2.LuminaTokenizer", "Lumina 2 (Gemma 2)",
                           (("gemma2_2b", "gemma2_2b", None, 0, 0, None),)),
}
