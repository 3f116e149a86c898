"""Attention map workflows (Fig. 1, Fig. 3, Fig. 16)."""

from __future__ import annotations

from ..builder import WorkflowBuilder
from .common import BIRD, CHAIR, DEFAULT_CKPT, DOG_PROMPT, FIG1_PROMPT
from .eos import SWAP_DEFAULTS, SWAP_SIZE

CAPTURE_DEFAULTS = {"step_stride": 1, "max_tokens": 77, "max_grid": 64, "keep_layers": False,
                    "memory_limit_mb": 1024.0}
# The size the Attention Map View opens to after a run (its maps and curves below its inputs): reserved.
VIEW_SIZE = (460, 1200)
VIEW_DEFAULTS = {"branch": "cond", "batch_index": 0, "cell_size": 128, "edge_size": 128, "canny_low": 0.1,
                 "canny_high": 0.2, "edge_tolerance": 1}


def _captured_sampling(b: WorkflowBuilder, ckpt, text, column: int, row: float, title: str, record_uncond=False):
    """Prompt text -> conditioning, and a capture on the checkpoint's model: (conditioning, capture)."""
    pos = b.add("CLIPTextEncode", f"{title}: conditioning", column, row, size=(320, 100), text=text.out(0),
                clip=ckpt.out(1))
    capture = b.add("AttentionMapCapture", f"{title}: capture attention", column + 1, row, size=(320, 200),
                    model=ckpt.out(0), record_uncond=record_uncond, **CAPTURE_DEFAULTS)
    return pos, capture


def _sampler(b: WorkflowBuilder, title, column, row, model, pos, neg, latent, seed=42):
    return b.add("KSampler", title, column, row, model=model, seed=seed, steps=50, cfg=7.5, sampler_name="ddim",
                 scheduler="ddim_uniform", positive=pos, negative=neg, latent_image=latent, denoise=1.0)


def _prompt_captured(b: WorkflowBuilder, prompt: str):
    """Checkpoint, one prompt (shared by the encoder and the view), a captured DDIM-50 run, decoded:
    (checkpoint, prompt text, capture, image)."""
    ckpt = b.add("CheckpointLoaderSimple", "Load Checkpoint (SD1.5)", 0, 0, ckpt_name=DEFAULT_CKPT)
    text = b.add("PrimitiveStringMultiline", "Prompt (shared by the encoder and the view)", 0, 1, size=(320, 120),
                 value=prompt)
    neg = b.add("CLIPTextEncode", "Empty negative prompt", 1, 1, size=(320, 100), text="", clip=ckpt.out(1))
    latent = b.add("EmptyLatentImage", None, 1, 1.5, size=(320, 130), width=512, height=512, batch_size=1)
    pos, capture = _captured_sampling(b, ckpt, text, 1, 0, "Prompt")
    sampled = _sampler(b, "KSampler (DDIM, 50 steps, cfg 7.5)", 3, 0, capture.out(0), pos.out(0), neg.out(0),
                       latent.out(0))
    image = b.add("VAEDecode", None, 3, 1, size=(320, 100), samples=sampled.out(0), vae=ckpt.out(2))
    return ckpt, text, capture, image


def _compared_pair(b: WorkflowBuilder, ckpt, neg, latent, runs, title: str, prefix: str):
    """Two captured runs (same seed) sampled, decoded and compared per step: (image A, image B).

    ``runs``: two (name, capture, positive) tuples; ``name`` completes the sampler and decoder titles."""
    samples = [_sampler(b, f"KSampler{name} (DDIM 50, seed 42)", 3, row, cap.out(0), pos.out(0), neg.out(0),
                        latent.out(0)) for row, (name, cap, pos) in enumerate(runs)]
    images = [b.add("VAEDecode", f"Decode{name}", 4, row, size=(320, 100), samples=s.out(0), vae=ckpt.out(2))
              for row, ((name, _, _), s) in enumerate(zip(runs, samples))]
    (_, cap_a, _), (_, cap_b, _) = runs
    kl = b.add("AttentionMapCompare", title, 5, 0, size=(460, 440), capture_a=cap_a.out(1), images_a=images[0].out(0),
               capture_b=cap_b.out(1), images_b=images[1].out(0), branch="cond", batch_index=0,
               filename_prefix=prefix)
    b.add("SaveImage", "Save KL curves", 6, 0, images=kl.out(0), filename_prefix=f"{prefix}_chart")
    return images


def fig1_attention_maps_over_steps(info: dict) -> dict:
    b = WorkflowBuilder(info)
    ckpt, text, capture, image = _prompt_captured(b, FIG1_PROMPT)
    b.add("SaveImage", "Save image", 3, 1.5, images=image.out(0), filename_prefix="shapefirst/fig1")
    view = b.add("AttentionMapView", "Fig. 1: maps per token over steps, shape convergence", 4, 0, size=VIEW_SIZE,
                 capture=capture.out(1), images=image.out(0), clip=ckpt.out(1), prompt=text.out(0), tokens="auto",
                 steps="auto", filename_prefix="shapefirst/fig1_attention", **VIEW_DEFAULTS)
    b.add("SaveImage", "Save heatmaps (tokens x steps)", 5, 0, images=view.out(0), filename_prefix="shapefirst/fig1_heatmaps")
    # each saved chart in its own column: its preview grows with the (tall) image in Nodes 2.0
    b.add("SaveImage", "Save curves", 6, 0, images=view.out(1), filename_prefix="shapefirst/fig1_curves")
    b.note(
        "ShapeFirst - Fig. 1 of Yi et al. (NeurIPS 2024): cross-attention maps, averaged over heads and layers, show "
        "each object's shape in the first steps of sampling. The capture records every token at every step; the view "
        "draws tokens x steps ([SOS] and [EOS] included), scrubs through them with the token selector and step slider, "
        "and plots the F1 of the maps' Canny edges against the final image's, relative to the last step (Fig. 1b). "
        "Pick your SD1.5 checkpoint above.", 0, 1.6)
    return b.to_ui()


def fig3_attention_token_classes(info: dict) -> dict:
    b = WorkflowBuilder(info)
    ckpt, text, capture, image = _prompt_captured(b, DOG_PROMPT)
    view = b.add("AttentionMapView", "Fig. 3: attention weight per token class", 4, 0, size=VIEW_SIZE,
                 capture=capture.out(1), images=image.out(0), clip=ckpt.out(1), prompt=text.out(0), tokens="0, 1, 2",
                 steps="auto", filename_prefix="shapefirst/fig3_attention", **VIEW_DEFAULTS)
    b.add("SaveImage", "Save class curves", 5, 0, images=view.out(1), filename_prefix="shapefirst/fig3_classes")
    b.note(
        "ShapeFirst - Fig. 3 of Yi et al. (NeurIPS 2024): averaged over pixels, the attention weight on [SOS] "
        "stays above 0.9 at every step with real SD1.5 weights; the semantic tokens and [EOS] share the rest. The "
        "view's left chart and its metrics JSON/CSV give the weight of each class (SOS, SEM, EOS and the padding "
        "after it, which the paper counts as [EOS]) per step.", 0, 1.6)
    return b.to_ui()


def fig16_attention_kl_two_conditionings(info: dict) -> dict:
    b = WorkflowBuilder(info)
    ckpt = b.add("CheckpointLoaderSimple", "Load Checkpoint (SD1.5)", 0, 0, ckpt_name=DEFAULT_CKPT)
    text_a = b.add("PrimitiveStringMultiline", "Prompt A", 0, 1, size=(320, 100), value=BIRD)
    text_b = b.add("PrimitiveStringMultiline", "Prompt B", 0, 1.5, size=(320, 100), value=CHAIR)
    neg = b.add("CLIPTextEncode", "Empty negative prompt", 1, 2, size=(320, 100), text="", clip=ckpt.out(1))
    latent = b.add("EmptyLatentImage", None, 1, 2.5, size=(320, 130), width=512, height=512, batch_size=1)
    pos_a, cap_a = _captured_sampling(b, ckpt, text_a, 1, 0, "A")
    pos_b, cap_b = _captured_sampling(b, ckpt, text_b, 1, 1, "B")
    img_a, img_b = _compared_pair(b, ckpt, neg, latent, [(" A", cap_a, pos_a), (" B", cap_b, pos_b)],
                                  "Fig. 16: KL divergence of the maps per step", "shapefirst/fig16_kl")
    b.add("SaveImage", "Save image A", 4, 1.5, images=img_a.out(0), filename_prefix="shapefirst/fig16_a")
    b.add("SaveImage", "Save image B", 7, 0, images=img_b.out(0), filename_prefix="shapefirst/fig16_b")
    b.note(
        "ShapeFirst - Fig. 16 of Yi et al. (NeurIPS 2024) compares the cross-attention maps of sampling with and "
        "without swapping the [EOS] Keys: their KL divergence per step stays small. Attention Map Compare works on any "
        "two captures; here two conditionings (prompts A and B, same seed). For the paper's experiment, feed "
        "branch B an [EOS] Key swap of A with B's [EOS] (EOSSwapConditioning, Keys only).", 0, 2.1)
    return b.to_ui()


def fig16_attention_kl_key_swap(info: dict) -> dict:
    """Fig. 16 proper: maps of A vs maps of A with B's [EOS] in the Keys only, KL per step."""
    b = WorkflowBuilder(info)
    ckpt = b.add("CheckpointLoaderSimple", "Load Checkpoint (SD1.5)", 0, 0, ckpt_name=DEFAULT_CKPT)
    neg = b.add("CLIPTextEncode", "Empty negative prompt", 1, 3.4, size=(320, 100), text="", clip=ckpt.out(1))
    latent = b.add("EmptyLatentImage", None, 1, 3.9, size=(320, 130), width=512, height=512, batch_size=1)
    plain = b.add("CLIPTextEncode", "A: no swap", 1, 0, size=(320, 100), text=BIRD, clip=ckpt.out(1))
    swapped = b.add("EOSSwapConditioning", "A with the [EOS] of B in the Keys only", 1, 0.5, size=SWAP_SIZE,
                    clip=ckpt.out(1), prompt_a=BIRD, prompt_b=CHAIR, **{**SWAP_DEFAULTS, "apply_to": "keys only"})
    patch = b.add("EOSSwapKVPatch", "K/V patch (needed for keys only)", 0, 1, size=(320, 60), model=ckpt.out(0))
    cap_a = b.add("AttentionMapCapture", "Capture: no swap", 2, 0, size=(320, 200), model=ckpt.out(0),
                  record_uncond=False, **CAPTURE_DEFAULTS)
    cap_b = b.add("AttentionMapCapture", "Capture: Key swap", 2, 1, size=(320, 200), model=patch.out(0),
                  record_uncond=False, **CAPTURE_DEFAULTS)
    _compared_pair(b, ckpt, neg, latent, [(": no swap", cap_a, plain), (": Key swap", cap_b, swapped)],
                   "Fig. 16: KL of the maps per step, Key swap vs none", "shapefirst/fig16_key_swap_kl")
    b.note(
        "ShapeFirst - Fig. 16 of Yi et al. (NeurIPS 2024): swapping the [EOS] of 'A blue bird' for that of 'A brown "
        "chair' in the cross-attention Keys only barely changes the attention maps: their KL divergence per step "
        "stays small, and the image stays with A (Appendix G).", 0, 2)
    return b.to_ui()
