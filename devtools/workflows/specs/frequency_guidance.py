"""Frequency views (Fig. 2) and truncated guidance (Fig. 7, Fig. 10 / Table 2, fast txt2img, the guider
with core's SamplerCustomAdvanced)."""

from __future__ import annotations

from ..builder import WorkflowBuilder
from .common import BIRD_ON_FLOWER, DOG_PROMPT, FIG1_PROMPT, _txt2img_base
from .families import STEPS_WINDOW


# The sizes the nodes open to after a run, reserved: the guidance report (js/shapefirst.js, 440 wide) below the
# sampler's or guider's inputs, the three Fig. 2b/2c panels below Frequency Curves' inputs.
SAMPLER_SIZE = (440, 800)
GUIDER_SIZE = (440, 800)
CURVES_SIZE = (460, 830)


def _truncated(b, title, column, row, ckpt, pos, neg, latent, steps, sampler, scheduler, start, end, seed=42):
    return b.add("TruncatedCFGSampler", title, column, row, size=SAMPLER_SIZE, model=ckpt.out(0), seed=seed,
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
    curves = b.add("FrequencyCurves", "Fig. 2b/2c: frequency curves", 4, 0, size=CURVES_SIZE, trace=traced.out(1),
                   samples=sampled.out(0), low_fraction=0.2, filename_prefix="shapefirst/fig2_frequency_curves")
    split = b.add("FrequencySplitPreview", "Final latent: low / high parts", 3, 1, size=(320, 300),
                  samples=sampled.out(0), low_fraction=0.2, preview="vae decode", vae=ckpt.out(2))
    b.add("SaveImage", "Save chart", 5, 0, images=curves.out(0), filename_prefix="shapefirst/fig2_chart")
    # each saved image in its own column: its preview grows with the image in Nodes 2.0
    b.add("SaveImage", "Save low / high preview", 6, 0, images=split.out(2), filename_prefix="shapefirst/fig2_low_high")
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


def custom_sampler_truncated_cfg_guider(info: dict) -> dict:
    b = WorkflowBuilder(info)
    ckpt, pos, neg, latent = _txt2img_base(b, DOG_PROMPT)
    guider = b.add("TruncatedCFGGuider", "Truncated CFG Guider: guidance in the first 40% of steps", 2, 0,
                   size=GUIDER_SIZE, model=ckpt.out(0), positive=pos.out(0), negative=neg.out(0), cfg=7.5,
                   **STEPS_WINDOW)
    noise = b.add("RandomNoise", None, 3, 0, size=(320, 90), noise_seed=42)
    sampler = b.add("KSamplerSelect", "Sampler (DPM-Solver++ 2M)", 3, 0.4, size=(320, 70), sampler_name="dpmpp_2m")
    sigmas = b.add("BasicScheduler", "Sigmas (karras, 25 steps)", 3, 0.75, size=(320, 110), model=ckpt.out(0),
                   scheduler="karras", steps=25, denoise=1.0)
    sampled = b.add("SamplerCustomAdvanced", None, 4, 0, size=(320, 130), noise=noise.out(0), guider=guider.out(0),
                    sampler=sampler.out(0), sigmas=sigmas.out(0), latent_image=latent.out(0))
    image = b.add("VAEDecode", None, 5, 0, size=(220, 60), samples=sampled.out(0), vae=ckpt.out(2))
    b.add("SaveImage", None, 5, 0.5, images=image.out(0), filename_prefix="shapefirst/custom_sampler_guider")
    b.note(
        "ShapeFirst - truncated guidance with core's custom sampling: the Truncated CFG Guider is a GUIDER for "
        "SamplerCustomAdvanced (any noise, sampler and sigmas). Guidance runs in the first 40% of the sigmas given "
        "to the sampler; the rest skip the text-conditional UNet pass (Yi et al., NeurIPS 2024, eq. 9), about 27% "
        "less sampling time at nearly the same image. When sampling ends the guider shows the passes skipped and "
        "the guidance strength per step. guidance_end = 1 gives core's CFGGuider. Keep the negative prompt empty "
        "for the paper's behaviour.", 0, 1)
    return b.to_ui()


def fig10_table2_truncation_sweep(info: dict) -> dict:
    b = WorkflowBuilder(info)
    ckpt, pos, neg, latent = _txt2img_base(b, DOG_PROMPT)
    steps = 25
    samplers = [
        _truncated(b, f"a = {a}" + (" (plain CFG)" if a == 0 else "") + f": no text in the last {a} of {steps} steps",
                   2 + k // 3, k % 3 * 2.8, ckpt, pos, neg, latent, steps, "dpmpp_2m", "normal", 0.0,
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
    ckpt, pos, neg, latent = _txt2img_base(b, BIRD_ON_FLOWER)
    steps = 50
    samplers = [
        _truncated(b, "text in every step" if start == 0 else f"text only from step {int(start * steps)} of {steps}",
                   2 + k // 2, k % 2 * 2.8, ckpt, pos, neg, latent, steps, "ddim", "ddim_uniform", start, 1.0)
        for k, start in enumerate((0.0, 0.2, 0.4, 0.6))
    ]
    _decode_row(b, samplers, ckpt, "shapefirst/fig7_text_only_late", 4)
    b.note(
        "ShapeFirst - Fig. 7/8 of Yi et al. (NeurIPS 2024): the text guides only the LATE steps (guidance_start > 0, "
        "guidance_end = 1; before the window only the empty-prompt prediction is used). Once the text is missing "
        "from the first ~20 of 50 steps the prompt is lost: the overall shape is decided early.", 0, 1)
    return b.to_ui()
