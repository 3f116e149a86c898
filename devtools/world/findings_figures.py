"""Fig. 1b, 3, 8b and 2 of the paper on ShapeFirst World, from the pack's capture and frequency
nodes run through ComfyUI's executor, printed as numbers at a few points of the run.

* Fig. 1b: AttentionMapView's shape convergence: F1 of the Canny edges of the semantic tokens'
  cross-attention maps against the final image, relative to the last step.
* Fig. 3: AttentionMapView's attention weight per token class (SOS / SEM / EOS), averaged over pixels.
* Fig. 8b: TruncatedCFGSampler's guidance curve (guidance_end 1.0 = plain CFG): RMS of eps(empty)
  and of w (eps(C) - eps(empty)), in units of sigma, and their ratio.
* Fig. 2: FrequencyCurves: RMS of the low (20%) and high frequency parts of sqrt(abar) x_0 and
  sqrt(1 - abar) eps (forward noising), and the variation ratios |x_t - x_0| / |x_0| per band
  while denoising.
"""

from __future__ import annotations

import json

from shapefirst.ui_keys import GUIDANCE as GUIDANCE_KEY

from .findings_common import SAMPLER, single_prompts

POINTS = (0.0, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0)  # where in the run the values are printed (share of the steps)
FIG_SAMPLER = {"sampler_name": "ddim", "scheduler": "ddim_uniform", "cfg": SAMPLER["cfg"]}


def figure_runs(harness, ckpt: str, ev: dict, mode, seed: int, steps: int) -> list[dict]:
    """One dict per prompt: {"attention": AttentionMapView's metrics, "guidance": the guidance
    report, "frequency": FrequencyCurves' curves}."""
    from ..graph import Graph

    g = Graph()
    loader = g.node("CheckpointLoaderSimple", ckpt_name=ckpt)
    model, clip, vae = loader.out(0), loader.out(1), loader.out(2)
    negative = g.node("CLIPTextEncode", text="", clip=clip).out(0)
    latent = g.node("EmptyLatentImage", width=64, height=64, batch_size=1).out(0)
    common = dict(seed=seed, steps=steps, negative=negative, latent_image=latent, denoise=1.0, **FIG_SAMPLER)
    ids = []
    for t in single_prompts(ev, mode.figure_prompts):
        pos = g.node("CLIPTextEncode", text=t["prompt"], clip=clip).out(0)
        cap = g.node("AttentionMapCapture", model=model, record_uncond=False, step_stride=1, max_tokens=77,
                     max_grid=64, keep_layers=False, memory_limit_mb=1024.0)
        ks = g.node("KSampler", model=cap.out(0), positive=pos, **common)
        dec = g.node("VAEDecode", samples=ks.out(0), vae=vae)
        view = g.node("AttentionMapView", capture=cap.out(1), images=dec.out(0), clip=clip, prompt=t["prompt"],
                      branch="cond", tokens="auto", steps="auto", batch_index=0, cell_size=32, edge_size=128,
                      canny_low=0.1, canny_high=0.2, edge_tolerance=1, filename_prefix="findings/attention")
        guided = g.node("TruncatedCFGSampler", model=model, positive=pos, guidance_start=0.0, guidance_end=1.0,
                        tail="uncond", window="fixed", adaptive_threshold=0.1, **common)
        trace = g.node("FrequencyTrace", model=model)
        ks2 = g.node("KSampler", model=trace.out(0), positive=pos, **common)
        curves = g.node("FrequencyCurves", trace=trace.out(1), samples=ks2.out(0), low_fraction=0.2,
                        filename_prefix="findings/frequency")
        ids.append((view.id, guided.id, curves.id))
    run = harness.run(g.prompt(), outputs=[i for trio in ids for i in trio])
    out = []
    for view, guided, curves in ids:
        out.append({"attention": json.loads(run.output_value(view, 2)),
                    "guidance": run.ui[guided][GUIDANCE_KEY][0],
                    "frequency": json.loads(run.output_value(curves, 1))})
    return out


def _at(values: list, share: float):
    return values[min(len(values) - 1, round(share * (len(values) - 1)))]


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else float("nan")


def series(runs: list[dict]) -> dict[str, list[float]]:
    """Each printed quantity at POINTS, averaged over the prompts."""
    def avg(get):
        return [_mean([_at(get(r), p) for r in runs]) for p in POINTS]

    out = {"Fig 1b: relative edge F1 (SEM maps vs final image)": avg(lambda r: r["attention"]["edge_f1"]["relative"])}
    for cls in runs[0]["attention"]["class_shares"]:
        if all(cls in r["attention"]["class_shares"] for r in runs):
            out[f"Fig 3: attention weight on {cls}"] = avg(lambda r, c=cls: r["attention"]["class_shares"][c])
    for key, label in (("rms_uncond", "RMS eps(empty) x sigma"), ("rms_guidance", "RMS w(eps(C)-eps(empty)) x sigma"),
                       ("ratio", "guidance / eps(empty)")):
        out[f"Fig 8b: {label}"] = avg(lambda r, k=key: [c[k] for c in r["guidance"]["curve"]])
    for key in ("forward_signal_low", "forward_signal_high", "forward_noise_low", "forward_noise_high",
                "ratio_denoise_low", "ratio_denoise_high"):
        out[f"Fig 2: {key}"] = avg(lambda r, k=key: r["frequency"]["curves"][k])
    return out


def print_figures(runs: list[dict], steps: int) -> list[str]:
    s = series(runs)
    head = " | ".join(f"{int(p * 100)}%" for p in POINTS)
    lines = ["", f"### Fig. 1b / 3 / 8b / 2 over the run (DDIM, {steps} steps, cfg {SAMPLER['cfg']}; {len(runs)} "
                 "prompt(s); columns: share of the steps done)", f"| quantity | {head} |",
             "|---|" + "---|" * len(POINTS)]
    lines += [f"| {k} | " + " | ".join(f"{v:.3f}" for v in vals) + " |" for k, vals in s.items()]
    return lines
