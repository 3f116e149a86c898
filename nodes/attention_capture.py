"""AttentionMapCapture: per-token, per-step attention probabilities of a real sampling run.

How the probabilities are read follows the model's description (``shapefirst/families.py``, matched in
``nodes/model_families.py``), whatever attention backend ComfyUI runs (the hooks are in
``attention_recorder``, the override in ``attention_override``):
* cross-attention reached by attn2 patches (SD1.x / SD2.x / SDXL UNets): an ``attn2_patch`` (which changes
  nothing) flags the next attention call as cross-attention, and
  ``transformer_options["optimized_attention_override"]`` (every ComfyUI backend passes through it)
  computes softmax(q k^T / sqrt(d)) from the projected q and k it is handed, then attends exactly as the
  host would: the layer's preferred backend, the backend's own path for q/k/v tensor containers, an
  earlier override chained. The output is ComfyUI's own, so sampling is bit-identical with or without it.
* joint attention (SD3, Flux, Qwen-Image, Lumina 2, Z-Image): text and image tokens attend jointly through
  the same override, in the order and with the padding the family's layout gives; the image-query x text-key block of each joint call
  is kept, renormalised over the text tokens, with the mask the model passes to that call. Calls over
  fewer tokens than text + image are not joint and are skipped: SD3.5's image-only attention, Lumina
  2's context refiner (text only) and noise refiner (image only); where both parts are padded (Z-Image)
  only calls of exactly the padded text + padded image tokens are joint.
* cross-attention whose call passes no transformer_options (PixArt): an object patch on each layer
  recomputes q and k from the layer's own projections and then runs the original forward.
* cross-attention over a video latent reached by the override (Wan 2.1 / 2.2, text- and image-to-video):
  an object patch on each layer flags the calls inside it, the override reads the described text call;
  per kept frame of the 5-D latent.
* Models without a description, or whose description says the capture cannot read them, are refused
  with the reason.

All hooks live on the clone this node returns; the state they touch is reset in ``finally``."""

from __future__ import annotations

from ..shapefirst import families as fam
from ..shapefirst.attention import COND, UNCOND
from ._api import io
from ._common import CATEGORY
from ._patching import OVERRIDE_KEY, chain_object_patch, chain_override, set_attn2_patch
from .attention_override import has_preferences
from .attention_recorder import CAPTURE_NODE, AttentionRecorder, CaptureSettings, Reading
from .model_families import require, supported_list

__all__ = ["AttentionMapCapture", "AttentionCaptureType", "AttentionRecorder", "CaptureSettings", "install",
           "reading", "CAPTURE_NODE", "OVERRIDE_KEY"]

AttentionCaptureType = io.Custom("SHAPEFIRST_ATTENTION")
# how a cross-attention layer is reached -> the capture's mode (joint attention: "joint")
MODES = {fam.ATTN2_PATCH: "unet", fam.NO_OPTIONS: "pixart", fam.OVERRIDE: "video"}


def reading(model):
    """(the model's described network, how the capture reads it); a model the capture cannot read is refused
    with its family's reason."""
    network = require(model, fam.CAPTURE, CAPTURE_NODE, "Attention Map Capture",
                      f"Connect an {supported_list(fam.CAPTURE)} model.")
    family = network.family
    frames, size = network.patch()
    if family.attention == fam.JOINT:
        return network, Reading("joint", size, frames, family.joint, network.text_pad())
    return network, Reading(MODES[family.layers.reached], size, frames, text_call=family.layers.text_call)


def _unet_blocks(network) -> dict:
    """{(block kind, block id, block index): the block holding attn1 and attn2}, keyed as
    ``transformer_options["block"]`` and ``["block_index"]`` name them during a UNet's forward pass."""
    kinds = {"input_blocks": "input", "middle_block": "middle", "output_blocks": "output"}
    index = {}
    for path in network.layers:  # e.g. input_blocks.1.1.transformer_blocks.0.attn2
        parts = path.split(".")
        if parts[0] in kinds and "transformer_blocks" in parts:
            at = parts.index("transformer_blocks")
            block_id = 0 if parts[0] == "middle_block" else int(parts[1])
            index[(kinds[parts[0]], block_id, int(parts[at + 1]))] = network.layer(".".join(parts[:-1]))
    return index


def install(model, settings: CaptureSettings):
    """A clone of ``model`` with the capture attached, and its recorder. ``model`` is untouched."""
    import comfy.patcher_extension as pe

    network, how = reading(model)
    rec = AttentionRecorder(settings, how)
    m = rec.install(model, {pe.WrappersMP.CALC_COND_BATCH: rec.calc_cond_batch,
                            pe.WrappersMP.APPLY_MODEL: rec.apply_model})
    if how.mode in ("unet", "joint", "video"):
        layers = None
        if how.mode == "unet":
            set_attn2_patch(m, rec.make_attn2_patch(), rec.key)
            index = _unet_blocks(network)
            attn = [a for tb in index.values() for a in (tb.attn1, tb.attn2) if a is not None]
            layers = index if has_preferences(attn) else None
        chain_override(m, lambda previous, key: rec.make_override(previous, layers, key), rec.key)
    if how.mode in ("video", "pixart"):
        make = rec.make_flagging_forward if how.mode == "video" else rec.make_pixart_forward
        for path in network.layers:
            chain_object_patch(m, f"diffusion_model.{path}.forward",
                               lambda previous, module=network.layer(path), name=path.rsplit(".", 1)[0]:
                               make(module, name, previous), rec.key)
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
                f"Cross-attention: {fam.spoken_list(fam.supported(fam.CAPTURE, fam.CROSS))} (video: one map per "
                f"kept latent frame, frame_stride). Joint attention (each image token's attention on the text "
                f"tokens, renormalised over the text tokens): {fam.spoken_list(fam.supported(fam.CAPTURE, fam.JOINT))}. "
                "Use one sampler per capture node: each sampling run replaces the previous record."),
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
