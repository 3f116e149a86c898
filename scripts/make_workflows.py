#!/usr/bin/env python3
"""Write the UI-format workflows under workflows/ from the descriptions below.

Run with the runtime's python (it boots ComfyUI to read the node definitions):
    .runtime/venv/bin/python scripts/make_workflows.py
The files are committed; tests/test_workflows.py checks they are what this script writes.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from workflow_tools import WorkflowBuilder  # noqa: E402

REPO = HERE.parent
WORKFLOWS = REPO / "workflows"
# The standard SD1.5 file name: real users who have it can run the workflows as shipped.
DEFAULT_CKPT = "v1-5-pruned-emaonly.safetensors"
FIG1_PROMPT = "The square coaster was next to the circular mug."
FIG10_PROMPT = "A dog standing on a bench during the day."
FIG4_PROMPT_A, FIG4_PROMPT_B = "A blue bird", "A brown chair"


DOG_PROMPT = "A dog standing on a bench during the day."


def _txt2img_base(b: WorkflowBuilder, prompt: str, size=512):
    ckpt = b.add("CheckpointLoaderSimple", "Load Checkpoint (SD1.5)", 0, 0, ckpt_name=DEFAULT_CKPT)
    pos = b.add("CLIPTextEncode", "Prompt", 1, 0, text=prompt, clip=ckpt.out(1))
    neg = b.add("CLIPTextEncode", "Empty negative prompt (the paper's uncond)", 1, 1, text="", clip=ckpt.out(1))
    latent = b.add("EmptyLatentImage", None, 1, 2, size=(320, 130), width=size, height=size, batch_size=1)
    return ckpt, pos, neg, latent


def _truncated(b, title, column, row, ckpt, pos, neg, latent, steps, sampler, scheduler, start, end, seed=42):
    return b.add("TruncatedCFGSampler", title, column, row, size=(320, 330), model=ckpt.out(0), seed=seed,
                 steps=steps, cfg=7.5, sampler_name=sampler, scheduler=scheduler, positive=pos.out(0),
                 negative=neg.out(0), latent_image=latent.out(0), denoise=1.0, guidance_start=start,
                 guidance_end=end, tail="uncond", window="fixed", adaptive_threshold=0.1)


def _decode_row(b, samplers, ckpt, prefix: str, column: int):
    images = [b.add("VAEDecode", None, column, k * 1.1, size=(220, 60), samples=s.out(0), vae=ckpt.out(2))
              for k, s in enumerate(samplers)]
    batch = images[0]
    for k, image in enumerate(images[1:], 1):
        batch = b.add("ImageBatch", None, column + 1, k * 1.1, size=(220, 60), image1=batch.out(0), image2=image.out(0))
    b.add("SaveImage", "Side by side", column + 2, 0, size=(700, 300), images=batch.out(0), filename_prefix=prefix)


def fig2_frequency_over_sampling(info: dict) -> dict:
    b = WorkflowBuilder(info)
    ckpt, pos, neg, latent = _txt2img_base(b, FIG1_PROMPT)
    traced = b.add("FrequencyTrace", "Record x_t and x0 every step", 2, 0, size=(320, 80), model=ckpt.out(0))
    sampled = b.add("KSampler", "KSampler (DDIM, 50 steps, cfg 7.5)", 3, 0, model=traced.out(0), seed=42,
                    steps=50, cfg=7.5, sampler_name="ddim", scheduler="ddim_uniform", positive=pos.out(0),
                    negative=neg.out(0), latent_image=latent.out(0), denoise=1.0)
    curves = b.add("FrequencyCurves", "Fig. 2b/2c: frequency curves", 4, 0, size=(460, 720), trace=traced.out(1),
                   samples=sampled.out(0), low_fraction=0.2, filename_prefix="shapefirst/fig2_frequency_curves")
    split = b.add("FrequencySplitPreview", "Final latent: low / high parts", 3, 1, size=(320, 300),
                  samples=sampled.out(0), low_fraction=0.2, preview="vae decode", vae=ckpt.out(2))
    b.add("SaveImage", "Save chart", 5, 0, images=curves.out(0), filename_prefix="shapefirst/fig2_chart")
    b.add("SaveImage", "Save low / high preview", 5, 1, images=split.out(2), filename_prefix="shapefirst/fig2_low_high")
    image = b.add("VAEDecode", None, 2, 1, size=(320, 100), samples=sampled.out(0), vae=ckpt.out(2))
    b.add("SaveImage", None, 2, 1.5, images=image.out(0), filename_prefix="shapefirst/fig2")
    b.note(
        "ShapeFirst - Fig. 2 of Yi et al. (NeurIPS 2024): Stable Diffusion builds the overall shape (low "
        "frequencies) in the first steps and the details (high frequencies) after. Frequency Trace records "
        "every step; Frequency Curves draws how far x_t is from the final latent in each band, for this "
        "denoising run and for forward noising with the same schedule. Pick your SD1.5 checkpoint above.",
        0, 1,
    )
    return b.to_ui()


def fast_txt2img(info: dict) -> dict:
    b = WorkflowBuilder(info)
    ckpt, pos, neg, latent = _txt2img_base(b, DOG_PROMPT)
    sampled = _truncated(b, "KSampler (Truncated CFG): guidance in the first 40% of steps", 2, 0, ckpt, pos, neg,
                         latent, 25, "dpmpp_2m", "karras", 0.0, 0.4)
    image = b.add("VAEDecode", None, 3, 0, size=(220, 60), samples=sampled.out(0), vae=ckpt.out(2))
    b.add("SaveImage", None, 3, 0.5, images=image.out(0), filename_prefix="shapefirst/fast_txt2img")
    b.note(
        "ShapeFirst - fast txt2img. A drop-in for KSampler: classifier-free guidance runs only in the first 40% of "
        "the steps; the last 60% skip the text-conditional UNet pass (Yi et al., NeurIPS 2024, eq. 9), about 27% "
        "less sampling time at nearly the same image. The node shows the passes skipped and the guidance strength "
        "per step. guidance_end = 1 gives plain KSampler. Keep the negative prompt empty for the paper's behaviour.",
        0, 1)
    return b.to_ui()


def fig10_table2_truncation_sweep(info: dict) -> dict:
    b = WorkflowBuilder(info)
    ckpt, pos, neg, latent = _txt2img_base(b, DOG_PROMPT)
    steps = 25
    samplers = [
        _truncated(b, f"a = {a}" + (" (plain CFG)" if a == 0 else "") + f": no text in the last {a} of {steps} steps",
                   2 + k // 3, k % 3 * 1.15, ckpt, pos, neg, latent, steps, "dpmpp_2m", "normal", 0.0,
                   (steps - a) / steps)
        for k, a in enumerate(range(0, steps + 1, 5))
    ]
    _decode_row(b, samplers, ckpt, "shapefirst/fig10_truncation_sweep", 4)
    b.note(
        "ShapeFirst - Fig. 10 / Table 2 of Yi et al. (NeurIPS 2024): DPM-Solver++ 25 steps, guidance removed from "
        "the last a = 0, 5, 10, 15, 20, 25 steps. With SD1.5 the paper measures 8%, 18%, 26%, 35%, 48% less time for "
        "a = 5..25 and images nearly unchanged up to a = 15. Saved: left to right.", 0, 1)
    return b.to_ui()


def fig7_text_only_late(info: dict) -> dict:
    b = WorkflowBuilder(info)
    ckpt, pos, neg, latent = _txt2img_base(b, "A blue bird sitting on a red flower.")
    steps = 50
    samplers = [
        _truncated(b, "text in every step" if start == 0 else f"text only from step {int(start * steps)} of {steps}",
                   2 + k // 2, k % 2 * 1.15, ckpt, pos, neg, latent, steps, "ddim", "ddim_uniform", start, 1.0)
        for k, start in enumerate((0.0, 0.2, 0.4, 0.6))
    ]
    _decode_row(b, samplers, ckpt, "shapefirst/fig7_text_only_late", 4)
    b.note(
        "ShapeFirst - Fig. 7/8 of Yi et al. (NeurIPS 2024): the text guides only the LATE steps (guidance_start > 0, "
        "guidance_end = 1; before the window only the empty-prompt prediction is used). Once the text is missing "
        "from the first ~20 of 50 steps the prompt is lost: the overall shape is decided early.", 0, 1)
    return b.to_ui()


# -- EOS swap (Section 5.1, Fig. 4-6, Appendices E, F, G) --------------------------------------
BIRD, CHAIR = "A blue bird", "A brown chair"
SKYLINE = ("The sharp, angular edges of the city skyline pierced the clouds, a symbol of human innovation "
           "and progress.")
BUTTERFLY = ("The delicate, fluttering wings of the butterfly signaled the arrival of spring, a natural symbol "
             "of rebirth and renewal.")
SWAP_DEFAULTS = {"eos_from": "B", "sem_from": "A", "sos_from": "A", "padding_is_eos": True, "layout": "prompt A",
                 "sem_repeats": 1, "apply_to": "keys and values", "start_percent": 0.0, "end_percent": 1.0,
                 "pooled_from": "B", "noise_seed": 0}


class _SwapSheet:
    """Checkpoint, negative prompt and latent; one sampler + decode per image; the images stitched
    left to right in order and saved. Same seed everywhere, so only the conditioning differs."""

    def __init__(self, info: dict, name: str):
        self.b = WorkflowBuilder(info)
        self.name = name
        self.ckpt = self.b.add("CheckpointLoaderSimple", "Load Checkpoint (SD1.5)", 0, 0, ckpt_name=DEFAULT_CKPT)
        self.negative = self.b.add("CLIPTextEncode", "Empty negative prompt", 0, 1, size=(320, 120), text="",
                                   clip=self.ckpt.out(1))
        self.latent = self.b.add("EmptyLatentImage", None, 0, 1.5, size=(320, 130), width=512, height=512,
                                 batch_size=1)
        self.model = self.ckpt.out(0)
        self.images = []

    def text(self, title: str, text: str, row: float):
        return self.b.add("CLIPTextEncode", title, 1, row, size=(320, 120), text=text, clip=self.ckpt.out(1))

    def swap(self, title: str, a: str, b: str, row: float, **opts):
        return self.b.add("EOSSwapConditioning", title, 2, row, size=(340, 800), clip=self.ckpt.out(1),
                          prompt_a=a, prompt_b=b, **{**SWAP_DEFAULTS, **opts})

    def image(self, title: str, positive, row: float):
        sampler = self.b.add("KSampler", f"Sample: {title}", 3 + len(self.images) % 2, row, size=(320, 262),
                             model=self.model, seed=42, steps=50, cfg=7.5, sampler_name="ddim",
                             scheduler="ddim_uniform", positive=positive, negative=self.negative.out(0),
                             latent_image=self.latent.out(0), denoise=1.0)
        decoded = self.b.add("VAEDecode", title, 5, row, size=(220, 50), samples=sampler.out(0), vae=self.ckpt.out(2))
        self.images.append(decoded)

    def finish(self, note: str) -> dict:
        strip = self.images[0].out(0)
        for k, img in enumerate(self.images[1:]):
            strip = self.b.add("ImageStitch", f"Side by side ({k + 2} images)", 6, k * 0.5, size=(260, 130),
                               image1=strip, image2=img.out(0), direction="right", match_image_size=True,
                               spacing_width=8, spacing_color="white").out(0)
        self.b.add("SaveImage", "Save: " + ", ".join(t for t in self.titles), 7, 0, size=(480, 300), images=strip,
                   filename_prefix=f"shapefirst/{self.name}")
        self.b.note(note, 0, 2.2)
        return self.b.to_ui()

    @property
    def titles(self):
        return [n.title for n in self.images]


def _fig4(info: dict, name: str, a: str, b: str, label_a: str, label_b: str) -> dict:
    s = _SwapSheet(info, name)
    pa, pb = s.text(f"Prompt A ({label_a})", a, 0), s.text(f"Prompt B ({label_b})", b, 0.5)
    ab = s.swap(f"{label_a} + [EOS] of {label_b}", a, b, 1)
    ba = s.swap(f"{label_b} + [EOS] of {label_a}", b, a, 3.8)
    s.image(label_a, pa.out(0), 0)
    s.image(label_b, pb.out(0), 1)
    s.image(f"{label_a} + EOS {label_b}", ab.out(0), 2)
    s.image(f"{label_b} + EOS {label_a}", ba.out(0), 3)
    return s.finish(
        f"ShapeFirst - Fig. 4 of Yi et al. (NeurIPS 2024): the [EOS] token carries the prompt. Left to right: A, B, "
        f"\"[SOS] + A + [EOS] of B\" and \"[SOS] + B + [EOS] of A\". The swapped images follow the prompt that gave "
        f"the [EOS] (its shapes), while colours and textures of the other may leak through. Same seed everywhere.")


def fig4_eos_swap_bird_chair(info: dict) -> dict:
    return _fig4(info, "fig4_eos_swap_bird_chair", BIRD, CHAIR, "bird", "chair")


def fig4_eos_swap_skyline_butterfly(info: dict) -> dict:
    return _fig4(info, "fig4_eos_swap_skyline_butterfly", SKYLINE, BUTTERFLY, "skyline", "butterfly")


def fig5_eos_swap_first_steps(info: dict) -> dict:
    s = _SwapSheet(info, "fig5_eos_swap_first_steps")
    pa = s.text("Prompt A (bird), no swap", BIRD, 0)
    s.image("bird, no swap", pa.out(0), 0)
    for k, end in enumerate((0.1, 0.2, 0.4, 1.0)):
        title = f"bird + EOS chair, first {round(end * 100)}% of steps"
        swap = s.swap(title, BIRD, CHAIR, 1 + 2.8 * k, end_percent=end)
        s.image(f"EOS chair for the first {round(end * 100)}%", swap.out(0), k + 1)
    return s.finish(
        "ShapeFirst - Fig. 5/6 of Yi et al.: the text acts in the first steps. \"[SOS] + bird + [EOS] of chair\" is "
        "used only for the first k% of sampling (end_percent), plain \"bird\" afterwards; k = 0, 10, 20, 40, 100. "
        "Already 20% gives nearly the full swap. The percent is ComfyUI's (timestep based, as Conditioning Set "
        "Timestep Range); with ddim_uniform it is the fraction of steps.")


def appendix_e_sos_eos_only(info: dict) -> dict:
    s = _SwapSheet(info, "appendix_e_sos_eos_only")
    pa = s.text("Prompt (bird)", BIRD, 0)
    sos = s.swap("77 x [SOS] of the prompt", BIRD, BIRD, 1, layout="77 x [SOS]", pooled_from="A")
    eos = s.swap("[SOS] + 76 x [EOS] of the prompt", BIRD, BIRD, 3.8, layout="[SOS] + 76 x [EOS]", eos_from="A",
                 pooled_from="A")
    s.image("prompt", pa.out(0), 0)
    s.image("77 x [SOS]", sos.out(0), 1)
    s.image("[SOS] + 76 x [EOS]", eos.out(0), 2)
    return s.finish(
        "ShapeFirst - Appendix E of Yi et al.: [SOS] carries no text. Left to right: the prompt, a prompt made of 77 "
        "copies of its [SOS] (conveys nothing), and [SOS] followed by its [EOS] rows (conveys the prompt). Turn "
        "padding_is_eos off to use 76 copies of the single [EOS] instead of the [EOS] region.")


def appendix_f_zero_noise(info: dict) -> dict:
    s = _SwapSheet(info, "appendix_f_zero_noise")
    pa = s.text("Prompt (Sem + EOS, original)", BIRD, 0)
    s.image("Sem + EOS", pa.out(0), 0)
    variants = [("Sem + Zero", {"eos_from": "zeros"}), ("Sem + Rand", {"eos_from": "noise"}),
                ("Zero + EOS", {"sem_from": "zeros", "eos_from": "A"}), ("Rand + EOS", {"sem_from": "noise", "eos_from": "A"})]
    for k, (title, opts) in enumerate(variants):
        swap = s.swap(title, BIRD, BIRD, 1 + 2.8 * k, pooled_from="A", **opts)
        s.image(title, swap.out(0), k + 1)
    return s.finish(
        "ShapeFirst - Appendix F (Table 3) of Yi et al.: semantic tokens or [EOS] replaced by zeros or by Gaussian "
        "noise (seeded, scaled like the prompt's rows). Without [EOS] (Sem + Zero / Rand) the prompt is mostly lost; "
        "without the semantic tokens (Zero / Rand + EOS) it survives.")


def appendix_g_keys_values(info: dict) -> dict:
    s = _SwapSheet(info, "appendix_g_keys_values")
    patch = s.b.add("EOSSwapKVPatch", "K/V patch (needed for keys only / values only)", 1, 2.5, size=(320, 60),
                    model=s.ckpt.out(0))
    s.model = patch.out(0)
    pa, pb = s.text("Prompt A (bird)", BIRD, 0), s.text("Prompt B (chair)", CHAIR, 0.5)
    s.image("bird", pa.out(0), 0)
    s.image("chair", pb.out(0), 1)
    for k, mode in enumerate(("keys only", "values only", "keys and values")):
        swap = s.swap(f"bird + EOS chair in {mode}", BIRD, CHAIR, 1 + 2.8 * k, apply_to=mode)
        s.image(f"EOS chair, {mode}", swap.out(0), k + 2)
    return s.finish(
        "ShapeFirst - Appendix G (Table 4) of Yi et al.: where the [EOS] swap acts in cross-attention. Keys only: "
        "the image stays with A (the attention map barely changes); values only: it moves to B, nearly as much as "
        "swapping both. EOS Swap K/V Patch lets each cross-attention take its Keys and Values from two contexts.")




CAPTURE_DEFAULTS = {"step_stride": 1, "max_tokens": 77, "max_grid": 64, "keep_layers": False,
                    "memory_limit_mb": 1024.0}
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


def fig1_attention_maps_over_steps(info: dict) -> dict:
    b = WorkflowBuilder(info)
    ckpt = b.add("CheckpointLoaderSimple", "Load Checkpoint (SD1.5)", 0, 0, ckpt_name=DEFAULT_CKPT)
    text = b.add("PrimitiveStringMultiline", "Prompt (shared by the encoder and the view)", 0, 0.5, size=(320, 120),
                 value=FIG1_PROMPT)
    neg = b.add("CLIPTextEncode", "Empty negative prompt", 1, 1, size=(320, 100), text="", clip=ckpt.out(1))
    latent = b.add("EmptyLatentImage", None, 1, 1.5, size=(320, 130), width=512, height=512, batch_size=1)
    pos, capture = _captured_sampling(b, ckpt, text, 1, 0, "Prompt")
    sampled = _sampler(b, "KSampler (DDIM, 50 steps, cfg 7.5)", 3, 0, capture.out(0), pos.out(0), neg.out(0),
                       latent.out(0))
    image = b.add("VAEDecode", None, 3, 1, size=(320, 100), samples=sampled.out(0), vae=ckpt.out(2))
    b.add("SaveImage", "Save image", 3, 1.5, images=image.out(0), filename_prefix="shapefirst/fig1")
    view = b.add("AttentionMapView", "Fig. 1: maps per token over steps, shape convergence", 4, 0, size=(460, 900),
                 capture=capture.out(1), images=image.out(0), clip=ckpt.out(1), prompt=text.out(0), tokens="auto",
                 steps="auto", filename_prefix="shapefirst/fig1_attention", **VIEW_DEFAULTS)
    b.add("SaveImage", "Save heatmaps (tokens x steps)", 5, 0, images=view.out(0), filename_prefix="shapefirst/fig1_heatmaps")
    b.add("SaveImage", "Save curves", 5, 1, images=view.out(1), filename_prefix="shapefirst/fig1_curves")
    b.note(
        "ShapeFirst - Fig. 1 of Yi et al. (NeurIPS 2024): cross-attention maps, averaged over heads and layers, show "
        "each object's shape in the first steps of sampling. The capture records every token at every step; the view "
        "draws tokens x steps ([SOS] and [EOS] included), scrubs through them with the token selector and step slider, "
        "and plots the F1 of the maps' Canny edges against the final image's, relative to the last step (Fig. 1b). "
        "Pick your SD1.5 checkpoint above.", 0, 1)
    return b.to_ui()


def fig3_attention_token_classes(info: dict) -> dict:
    b = WorkflowBuilder(info)
    ckpt = b.add("CheckpointLoaderSimple", "Load Checkpoint (SD1.5)", 0, 0, ckpt_name=DEFAULT_CKPT)
    text = b.add("PrimitiveStringMultiline", "Prompt (shared by the encoder and the view)", 0, 0.5, size=(320, 120),
                 value=FIG10_PROMPT)
    neg = b.add("CLIPTextEncode", "Empty negative prompt", 1, 1, size=(320, 100), text="", clip=ckpt.out(1))
    latent = b.add("EmptyLatentImage", None, 1, 1.5, size=(320, 130), width=512, height=512, batch_size=1)
    pos, capture = _captured_sampling(b, ckpt, text, 1, 0, "Prompt")
    sampled = _sampler(b, "KSampler (DDIM, 50 steps, cfg 7.5)", 3, 0, capture.out(0), pos.out(0), neg.out(0),
                       latent.out(0))
    image = b.add("VAEDecode", None, 3, 1, size=(320, 100), samples=sampled.out(0), vae=ckpt.out(2))
    view = b.add("AttentionMapView", "Fig. 3: attention weight per token class", 4, 0, size=(460, 900),
                 capture=capture.out(1), images=image.out(0), clip=ckpt.out(1), prompt=text.out(0), tokens="0, 1, 2",
                 steps="auto", filename_prefix="shapefirst/fig3_attention", **VIEW_DEFAULTS)
    b.add("SaveImage", "Save class curves", 5, 0, images=view.out(1), filename_prefix="shapefirst/fig3_classes")
    b.note(
        "ShapeFirst - Fig. 3 of Yi et al. (NeurIPS 2024): averaged over pixels, the attention weight on [SOS] "
        "stays above 0.9 at every step with real SD1.5 weights; the semantic tokens and [EOS] share the rest. The "
        "view's left chart and its metrics JSON/CSV give the weight of each class (SOS, SEM, EOS and the padding "
        "after it, which the paper counts as [EOS]) per step.", 0, 1)
    return b.to_ui()


def fig16_attention_kl_two_conditionings(info: dict) -> dict:
    b = WorkflowBuilder(info)
    ckpt = b.add("CheckpointLoaderSimple", "Load Checkpoint (SD1.5)", 0, 0, ckpt_name=DEFAULT_CKPT)
    text_a = b.add("PrimitiveStringMultiline", "Prompt A", 0, 0.5, size=(320, 100), value=FIG4_PROMPT_A)
    text_b = b.add("PrimitiveStringMultiline", "Prompt B", 0, 1, size=(320, 100), value=FIG4_PROMPT_B)
    neg = b.add("CLIPTextEncode", "Empty negative prompt", 1, 2, size=(320, 100), text="", clip=ckpt.out(1))
    latent = b.add("EmptyLatentImage", None, 1, 2.5, size=(320, 130), width=512, height=512, batch_size=1)
    pos_a, cap_a = _captured_sampling(b, ckpt, text_a, 1, 0, "A")
    pos_b, cap_b = _captured_sampling(b, ckpt, text_b, 1, 1, "B")
    s_a = _sampler(b, "KSampler A (DDIM 50, seed 42)", 3, 0, cap_a.out(0), pos_a.out(0), neg.out(0), latent.out(0))
    s_b = _sampler(b, "KSampler B (DDIM 50, seed 42)", 3, 1, cap_b.out(0), pos_b.out(0), neg.out(0), latent.out(0))
    img_a = b.add("VAEDecode", "Decode A", 4, 0, size=(320, 100), samples=s_a.out(0), vae=ckpt.out(2))
    img_b = b.add("VAEDecode", "Decode B", 4, 1, size=(320, 100), samples=s_b.out(0), vae=ckpt.out(2))
    kl = b.add("AttentionMapCompare", "Fig. 16: KL divergence of the maps per step", 5, 0, size=(460, 440),
               capture_a=cap_a.out(1), images_a=img_a.out(0), capture_b=cap_b.out(1), images_b=img_b.out(0),
               branch="cond", batch_index=0, filename_prefix="shapefirst/fig16_kl")
    b.add("SaveImage", "Save KL curves", 6, 0, images=kl.out(0), filename_prefix="shapefirst/fig16_kl")
    b.add("SaveImage", "Save image A", 4, 1.5, images=img_a.out(0), filename_prefix="shapefirst/fig16_a")
    b.add("SaveImage", "Save image B", 5, 1.5, images=img_b.out(0), filename_prefix="shapefirst/fig16_b")
    b.note(
        "ShapeFirst - Fig. 16 of Yi et al. (NeurIPS 2024) compares the cross-attention maps of sampling with and "
        "without swapping the [EOS] Keys: their KL divergence per step stays small. Attention Map Compare works on any "
        "two captures; here two conditionings (prompts A and B, same seed). For the paper's experiment, feed "
        "branch B an [EOS] Key swap of A with B's [EOS] (EOSSwapConditioning, Keys only).", 0, 2)
    return b.to_ui()


def fig16_attention_kl_key_swap(info: dict) -> dict:
    """Fig. 16 proper: maps of A vs maps of A with B's [EOS] in the Keys only, KL per step."""
    b = WorkflowBuilder(info)
    ckpt = b.add("CheckpointLoaderSimple", "Load Checkpoint (SD1.5)", 0, 0, ckpt_name=DEFAULT_CKPT)
    neg = b.add("CLIPTextEncode", "Empty negative prompt", 1, 2, size=(320, 100), text="", clip=ckpt.out(1))
    latent = b.add("EmptyLatentImage", None, 1, 2.5, size=(320, 130), width=512, height=512, batch_size=1)
    plain = b.add("CLIPTextEncode", "A: no swap", 1, 0, size=(320, 100), text=BIRD, clip=ckpt.out(1))
    swapped = b.add("EOSSwapConditioning", "A with the [EOS] of B in the Keys only", 1, 0.5, size=(340, 800),
                    clip=ckpt.out(1), prompt_a=BIRD, prompt_b=CHAIR, **{**SWAP_DEFAULTS, "apply_to": "keys only"})
    patch = b.add("EOSSwapKVPatch", "K/V patch (needed for keys only)", 0, 1, size=(320, 60), model=ckpt.out(0))
    cap_a = b.add("AttentionMapCapture", "Capture: no swap", 2, 0, size=(320, 200), model=ckpt.out(0),
                  record_uncond=False, **CAPTURE_DEFAULTS)
    cap_b = b.add("AttentionMapCapture", "Capture: Key swap", 2, 1, size=(320, 200), model=patch.out(0),
                  record_uncond=False, **CAPTURE_DEFAULTS)
    s_a = _sampler(b, "KSampler: no swap (DDIM 50, seed 42)", 3, 0, cap_a.out(0), plain.out(0), neg.out(0),
                   latent.out(0))
    s_b = _sampler(b, "KSampler: Key swap (DDIM 50, seed 42)", 3, 1, cap_b.out(0), swapped.out(0), neg.out(0),
                   latent.out(0))
    img_a = b.add("VAEDecode", "Decode: no swap", 4, 0, size=(320, 100), samples=s_a.out(0), vae=ckpt.out(2))
    img_b = b.add("VAEDecode", "Decode: Key swap", 4, 1, size=(320, 100), samples=s_b.out(0), vae=ckpt.out(2))
    kl = b.add("AttentionMapCompare", "Fig. 16: KL of the maps per step, Key swap vs none", 5, 0, size=(460, 440),
               capture_a=cap_a.out(1), images_a=img_a.out(0), capture_b=cap_b.out(1), images_b=img_b.out(0),
               branch="cond", batch_index=0, filename_prefix="shapefirst/fig16_key_swap_kl")
    b.add("SaveImage", "Save KL curves", 6, 0, images=kl.out(0), filename_prefix="shapefirst/fig16_key_swap_kl")
    b.note(
        "ShapeFirst - Fig. 16 of Yi et al. (NeurIPS 2024): swapping the [EOS] of 'A blue bird' for that of 'A brown "
        "chair' in the cross-attention Keys only barely changes the attention maps: their KL divergence per step "
        "stays small, and the image stays with A (Appendix G).", 0, 2)
    return b.to_ui()


WORKFLOW_BUILDERS = {
    "fig1_attention_maps_over_steps.json": fig1_attention_maps_over_steps,
    "fig2_frequency_over_sampling.json": fig2_frequency_over_sampling,
    "fast_txt2img_truncated_cfg.json": fast_txt2img,
    "fig10_table2_truncation_sweep.json": fig10_table2_truncation_sweep,
    "fig7_text_only_late.json": fig7_text_only_late,
    "fig4_eos_swap_bird_chair.json": fig4_eos_swap_bird_chair,
    "fig4_eos_swap_skyline_butterfly.json": fig4_eos_swap_skyline_butterfly,
    "fig5_eos_swap_first_steps.json": fig5_eos_swap_first_steps,
    "appendix_e_sos_eos_only.json": appendix_e_sos_eos_only,
    "appendix_f_zero_noise.json": appendix_f_zero_noise,
    "appendix_g_keys_values.json": appendix_g_keys_values,
    "fig3_attention_token_classes.json": fig3_attention_token_classes,
    "fig16_attention_kl_two_conditionings.json": fig16_attention_kl_two_conditionings,
    "fig16_attention_kl_key_swap.json": fig16_attention_kl_key_swap,
}


def build_all(object_info: dict) -> dict[str, str]:
    return {name: json.dumps(fn(object_info), indent=2) + "\n" for name, fn in WORKFLOW_BUILDERS.items()}


def main() -> int:
    import harness

    harness.quiet_logs()
    paths = harness.default_paths()
    with tempfile.TemporaryDirectory() as tmp:
        h = harness.ComfyHarness(paths["comfyui"], paths["pack"], Path(tmp)).boot()
        files = build_all(h.object_info())
    WORKFLOWS.mkdir(exist_ok=True)
    for name, text in files.items():
        (WORKFLOWS / name).write_text(text)
        print(f"wrote workflows/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
