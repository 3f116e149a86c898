"""Attention map workflows on the DiT families (Fig. 1 and Fig. 3 on SD3.5 and on Wan 2.1)."""

from __future__ import annotations

from ..builder import WorkflowBuilder
from .attention import CAPTURE_DEFAULTS, VIEW_DEFAULTS
from .common import FIG1_PROMPT
from .families import RANDOM_WEIGHTS, WAN_PROMPT, _sd3_base, _wan_base

# SD3.5's conditioning: clip_l/clip_g's 77 rows, then T5's 77: keep every map
SD3_TOKENS = 154
WAN_FRAME_STRIDE = 4  # 33 frames = 9 latent frames: maps of latent frames 0, 4 and 8


def _view(b: WorkflowBuilder, capture, image, clip, text, column: int, title: str, prefix: str, **extra):
    """Attention Map View of a capture, its heatmaps and its curves saved."""
    view = b.add("AttentionMapView", title, column, 0, size=(460, 900), capture=capture.out(1), images=image.out(0),
                 clip=clip.out(0), prompt=text.out(0), tokens="auto", steps="auto", filename_prefix=prefix,
                 **{**VIEW_DEFAULTS, **extra})
    b.add("SaveImage", "Save heatmaps (tokens x steps)", column + 1, 0, images=view.out(0),
          filename_prefix=f"{prefix}_heatmaps")
    b.add("SaveImage", "Save curves (token classes, edge F1)", column + 1, 1, images=view.out(1),
          filename_prefix=f"{prefix}_curves")
    return view


def sd3_attention_maps_token_classes(info: dict) -> dict:
    b = WorkflowBuilder(info)
    text = b.add("PrimitiveStringMultiline", "Prompt (shared by the encoder and the view)", 0, 2, size=(320, 120),
                 value=FIG1_PROMPT)
    ckpt, clip, sampling, pos, neg, latent = _sd3_base(b, text.out(0))
    capture = b.add("AttentionMapCapture", "Capture joint attention (image tokens on text tokens)", 2, 0,
                    size=(320, 220), model=sampling.out(0), record_uncond=False,
                    **{**CAPTURE_DEFAULTS, "max_tokens": SD3_TOKENS})
    sampled = b.add("KSampler", "KSampler (core): SD3.5 settings", 2, 1, size=(320, 262), model=capture.out(0),
                    seed=42, steps=28, cfg=4.5, sampler_name="euler", scheduler="sgm_uniform", positive=pos.out(0),
                    negative=neg.out(0), latent_image=latent.out(0), denoise=1.0)
    image = b.add("VAEDecode", None, 3, 1.5, size=(220, 60), samples=sampled.out(0), vae=ckpt.out(2))
    b.add("SaveImage", "Save image", 3, 2, images=image.out(0), filename_prefix="shapefirst/sd3_attention_image")
    _view(b, capture, image, clip, text, 4, "Fig. 1 / Fig. 3 on SD3.5: maps over steps, weight per token class",
          "shapefirst/sd3_attention")
    b.note(
        "ShapeFirst - Fig. 1 and Fig. 3 of Yi et al. (NeurIPS 2024) on SD3.5 (MMDiT). Text and image tokens attend "
        "jointly; the capture keeps each image token's attention on the text tokens, renormalised over the text "
        "tokens (a distribution over the prompt per pixel, like a UNet's cross-attention map), averaged over heads "
        "and blocks. The rows are clip_l's 77 tokens ([SOS], words, [EOS], padding) then T5's 77 (words, </s> as "
        "[EOS], padding; T5 has no [SOS]). " + RANDOM_WEIGHTS + " the objects' outlines in the word maps from the "
        "first steps (the edge F1 relative to the last step near 1 early), and in the class chart how the weight "
        "splits between clip_l's [SOS], the words and the [EOS]/padding rows of both encoders.", 0, 3.2)
    return b.to_ui()


def wan21_attention_maps_token_classes(info: dict) -> dict:
    b = WorkflowBuilder(info)
    text = b.add("PrimitiveStringMultiline", "Prompt (shared by the encoder and the view)", 0, 2, size=(320, 120),
                 value=WAN_PROMPT)
    clip, vae, sampling, pos, neg, latent = _wan_base(b, text.out(0))
    capture = b.add("AttentionMapCapture", "Capture cross-attention (latent frames 0, 4, 8)", 2, 0, size=(320, 240),
                    model=sampling.out(0), record_uncond=False, frame_stride=WAN_FRAME_STRIDE, **CAPTURE_DEFAULTS)
    sampled = b.add("KSampler", "KSampler (core): Wan 2.1 settings", 2, 1, size=(320, 262), model=capture.out(0),
                    seed=42, steps=30, cfg=6.0, sampler_name="uni_pc", scheduler="simple", positive=pos.out(0),
                    negative=neg.out(0), latent_image=latent.out(0), denoise=1.0)
    frames = b.add("VAEDecode", None, 3, 1.5, size=(220, 60), samples=sampled.out(0), vae=vae.out(0))
    b.add("SaveAnimatedWEBP", "Save video (animated WEBP)", 3, 2, size=(420, 340), images=frames.out(0),
          filename_prefix="shapefirst/wan21_attention_video", fps=16.0, lossless=False, quality=90, method="default")
    _view(b, capture, frames, clip, text, 4, "Fig. 1 / Fig. 3 on Wan 2.1: first kept frame (batch_index 0)",
          "shapefirst/wan21_attention")
    b.note(
        "ShapeFirst - Fig. 1 and Fig. 3 of Yi et al. (NeurIPS 2024) on Wan 2.1 text-to-video. Wan's text reaches the "
        "video through cross-attention, as in SD; the capture keeps one map per kept latent frame (frame_stride 4: "
        "latent frames 0, 4 and 8 of 9; each kept frame costs what one image does) and the view's batch_index picks "
        "one (0, 1, 2), drawn over the decoded frame at the same time. umT5 has no [SOS]: the rows are the words, "
        "</s> as [EOS], then padding to 512. " + RANDOM_WEIGHTS + " the fox's outline in the word maps from the "
        "first steps and in every kept frame, and in the class chart how much weight the </s> and padding rows "
        "take compared with the words.", 0, 3.2)
    return b.to_ui()
