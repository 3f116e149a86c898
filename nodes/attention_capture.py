"""AttentionMapCapture: per-token, per-step attention probabilities of a real sampling run.

How the probabilities are read, whatever attention backend ComfyUI runs (the hooks are in
``attention_recorder``, the override in ``attention_override``):
* SD1.x / SD2.x / SDXL UNets: an ``attn2_patch`` (which changes nothing) flags the next attention
  call as cross-attention, and ``transformer_options["optimized_attention_override"]`` (every
  ComfyUI backend passes through it) computes softmax(q k^T / sqrt(d)) from the projected q and k
  it is handed, then attends exactly as the host would: the layer's preferred backend, the
  backend's own path for q/k/v tensor containers, an earlier override chained. The output is
  ComfyUI's own, so sampling is bit-identical with or without the capture.
* SD3 (MMDiT), Flux, Qwen-Image and Lumina 2: text and image tokens attend jointly through the same
  override ([text; image] in each joint call); the image-query x text-key block of each joint call is
  kept, renormalised over the text tokens, with the mask the model passes to that call. Calls over
  fewer tokens than text + image are not joint and are skipped: SD3.5's image-only attention, Lumina
  2's context refiner (text only) and noise refiner (image only).
* PixArt: its cross-attention passes no transformer_options; an object patch on each block's
  ``cross_attn.forward`` recomputes q and k from the module's own projections and then runs the
  original forward.
* Wan 2.1 / 2.2 (video): an object patch on each block's ``cross_attn.forward`` flags the calls
  inside it, the override reads the one over the text tokens; per kept frame of the 5-D latent.
* Other models (no text-to-image attention the capture can read) are refused.

All hooks live on the clone this node returns; the state they touch is reset in ``finally``.
"""

from __future__ import annotations

from ..shapefirst.attention import COND, UNCOND
from ._api import io
from ._common import CATEGORY, ShapeFirstInputError
from ._patching import OVERRIDE_KEY, chain_object_patch, chain_override, patched_clone, set_attn2_patch
from .attention_override import has_preferences, unet_layer_index
from .attention_recorder import CAPTURE_NODE, AttentionRecorder, CaptureSettings

__all__ = ["AttentionMapCapture", "AttentionCaptureType", "AttentionRecorder", "CaptureSettings", "install",
           "model_kind", "CAPTURE_NODE", "OVERRIDE_KEY"]

AttentionCaptureType = io.Custom("SHAPEFIRST_ATTENTION")
JOINT_MODELS = {"MMDiT", "OpenAISignatureMMDITWrapper", "Flux", "QwenImageTransformer2DModel"}
REFUSED_JOINT = {"Chroma", "HunyuanVideo", "NextDiT"}
SUPPORTED = "SD1.x, SD2.x, SDXL, PixArt, SD3, Flux, Qwen-Image, Lumina 2, Wan 2.1 or Wan 2.2"


def _lumina2(dm) -> bool:
    """Lumina 2's NextDiT: [text; image] in its joint layers. Not Z-Image (same class): it pads the text
    and the image tokens to a multiple (``pad_tokens_multiple``), a layout the capture does not read."""
    return type(dm).__name__ == "NextDiT" and getattr(dm, "pad_tokens_multiple", None) is None


def _wan_cross_attention(dm) -> bool:
    """A Wan model whose every block has Wan's own text cross-attention (T2V or I2V)."""
    import comfy.ldm.wan.model as wan

    kinds = tuple(getattr(wan, n) for n in ("WanT2VCrossAttention", "WanI2VCrossAttention") if hasattr(wan, n))
    blocks = getattr(dm, "blocks", None)
    return (isinstance(dm, wan.WanModel) and blocks is not None and len(blocks) > 0
            and all(type(getattr(b, "cross_attn", None)) in kinds for b in blocks))


def model_kind(model) -> str:
    """'unet', 'pixart', 'joint' or 'video'; refuses models whose text does not reach the image in a
    way the capture can read."""
    from comfy.ldm.modules.attention import BasicTransformerBlock
    from comfy.ldm.pixart.pixartms import PixArtMS

    dm = model.get_model_object("diffusion_model")
    if isinstance(dm, PixArtMS):
        return "pixart"
    name = type(dm).__name__
    if name in JOINT_MODELS or _lumina2(dm):
        return "joint"
    if _wan_cross_attention(dm):
        return "video"
    for m in dm.modules():
        if isinstance(m, BasicTransformerBlock) and m.attn2 is not None and not m.switch_temporal_ca_to_sa:
            return "unet"
    pad = getattr(dm, "pad_tokens_multiple", None) if name == "NextDiT" else None
    raise ShapeFirstInputError(
        CAPTURE_NODE,
        f"this model ({name}) has no cross-attention layers to capture"
        + (f": its text and image tokens are padded to a multiple of {pad} inside the joint attention (Z-Image), "
           "a layout the capture does not read" if pad is not None else
           ": its text and image tokens attend jointly in a layout the capture does not read"
           if name in REFUSED_JOINT else "")
        + f". Connect an {SUPPORTED} model.")


def install(model, settings: CaptureSettings):
    """A clone of ``model`` with the capture attached, and its recorder. ``model`` is untouched."""
    import comfy.patcher_extension as pe

    kind = model_kind(model)
    dm = model.get_model_object("diffusion_model")
    patch = getattr(dm, "patch_size", 1)
    rec = AttentionRecorder(settings, kind, patch_size=int(patch if isinstance(patch, int) else patch[-1]),
                            patch_frames=1 if isinstance(patch, int) else int(patch[0]))
    m = patched_clone(model, rec.key, {pe.WrappersMP.SAMPLER_SAMPLE: rec.sampler_sample,
                                       pe.WrappersMP.CALC_COND_BATCH: rec.calc_cond_batch,
                                       pe.WrappersMP.APPLY_MODEL: rec.apply_model})
    if kind in ("unet", "joint"):
        layers = None
        if kind == "unet":
            set_attn2_patch(m, rec.make_attn2_patch(), rec.key)
            index = unet_layer_index(dm)
            attn = [a for tb in index.values() for a in (tb.attn1, tb.attn2) if a is not None]
            layers = index if has_preferences(attn) else None
        chain_override(m, lambda previous: rec.make_override(previous, layers), rec.key)  # calls an earlier one
    elif kind == "video":
        for i, block in enumerate(dm.blocks):
            chain_object_patch(m, f"diffusion_model.blocks.{i}.cross_attn.forward",
                               lambda previous, module=block.cross_attn, name=f"blocks.{i}":
                               rec.make_flagging_forward(module, name, previous), rec.key)
        chain_override(m, lambda previous: rec.make_override(previous, None), rec.key)
    else:
        for i, block in enumerate(dm.blocks):
            chain_object_patch(m, f"diffusion_model.blocks.{i}.cross_attn.forward",
                               lambda previous, module=block.cross_attn, name=f"blocks.{i}":
                               rec.make_pixart_forward(module, name, previous), rec.key)
    return m, rec


class AttentionMapCapture(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=CAPTURE_NODE,
            display_name="Attention Map Capture (per token, per step)",
            category=f"{CATEGORY}/attention",
            description=(
                "Records the cross-attention probabilities softmax(QK^T/sqrt(d)) of every text token at every "
                "sampling step of the next run with this model: averaged over heads and over all cross-attention "
                "layers on one grid (the finest layer's, at most max_grid), for the conditional branch and "
                "optionally the unconditional one. Same maps under every attention backend; the sampled image is "
                "identical to sampling without it. Memory: 2 bytes x steps x tokens x grid pixels per image and "
                "branch (SDXL 1024 px, 30 steps, 77 tokens: 19 MB), kept on the CPU until the next run. "
                "SD1.x, SD2.x, SDXL and PixArt (cross-attention); SD3, Flux, Qwen-Image and Lumina 2 (joint "
                "attention: each image token's attention on the text tokens, renormalised over the text tokens); "
                "Wan 2.1 / 2.2 video (cross-attention, one map per kept latent frame: frame_stride). Use one "
                "sampler per capture node: each sampling run replaces the previous record."),
            inputs=[
                io.Model.Input("model", tooltip="The model to sample with. It is cloned, never modified."),
                io.Boolean.Input("record_uncond", default=False,
                                 tooltip="Also record the unconditional (negative prompt) branch. Off = conditional "
                                         "only. With cfg 1.0 ComfyUI skips that branch and nothing is recorded for it."),
                io.Int.Input("step_stride", default=1, min=1, max=1000,
                             tooltip="Record every Nth step (the last step is always recorded). 1 = every step."),
                io.Int.Input("max_tokens", default=77, min=1, max=4096,
                             tooltip="Keep maps for the first N text positions (77 = one whole CLIP chunk, [SOS] to "
                                     "padding). Per-token mean weights are kept for every position."),
                io.Int.Input("max_grid", default=64, min=4, max=256,
                             tooltip="Longest side of the common grid. The grid is the finest cross-attention layer's "
                                     "(64x64 for SD1.5 at 512 px and for SDXL at 1024 px), shrunk to this if larger."),
                io.Boolean.Input("keep_layers", default=False,
                                 tooltip="Also keep each layer's own map at its native resolution (raw data; about 6x "
                                         "the memory for SD1.5). Off = only the layer average."),
                io.Float.Input("memory_limit_mb", default=1024.0, min=1.0, max=65536.0, step=1.0,
                               tooltip="A run whose maps would exceed this many MB stops at its first step with an "
                                       "error saying what to reduce."),
                io.Int.Input("frame_stride", default=1, min=1, max=1000, optional=True,
                             tooltip="Video latents (Wan): keep the maps of every Nth latent frame (the first and "
                                     "the last always); each kept frame costs what one image does. 1 = every "
                                     "frame. Ignored for images."),
            ],
            outputs=[
                io.Model.Output("captured_model", display_name="model",
                                tooltip="The same model with the capture attached; connect it to your sampler."),
                AttentionCaptureType.Output("capture", display_name="capture", tooltip="Connect to Attention Map View or Attention Map Compare."),
            ],
            not_idempotent=True,  # each capture node records its own run, even with identical inputs
        )

    @classmethod
    def execute(cls, model, record_uncond=False, step_stride=1, max_tokens=77, max_grid=64, keep_layers=False,
                memory_limit_mb=1024.0, frame_stride=1) -> io.NodeOutput:
        settings = CaptureSettings(branches=(COND, UNCOND) if record_uncond else (COND,),
                                   step_stride=int(step_stride), max_tokens=int(max_tokens), max_grid=int(max_grid),
                                   keep_layers=bool(keep_layers), memory_limit_mb=float(memory_limit_mb),
                                   frame_stride=int(frame_stride))
        patched, recorder = install(model, settings)
        return io.NodeOutput(patched, recorder)
