"""TruncatedCFGSampler and TruncatedCFGGuider: guidance only inside a window of the steps."""

from __future__ import annotations

import math

from ..shapefirst import ui_keys
from ._api import io
from ._common import CATEGORY, LOGGER, ShapeFirstInputError, as_validation
from .truncated_cfg_patch import (MODE_ADAPTIVE, MODE_FIXED, TAIL_COND, TAIL_UNCOND, TruncationSettings,
                                  patch_model)

SAMPLER_NODE = "TruncatedCFGSampler"
GUIDER_NODE = "TruncatedCFGGuider"

TAIL_TOOLTIP = (
    "What replaces guidance outside the window. 'uncond' = the paper's eq. 9: only the negative-prompt "
    "prediction is computed. The paper's 'uncond' is the EMPTY prompt; with a non-empty negative prompt "
    "the tail steers away from nothing and towards the negative text, so keep the negative empty (or "
    "use ConditioningZeroOut) for the paper's behaviour. 'cond' = only the positive prediction (the text "
    "keeps acting, without the w-scaled push). A ControlNet acts in the tail only if it is applied "
    "to the branch kept there (ControlNetApplyAdvanced applies it to both).")


def window_inputs() -> list:
    return [
        io.Float.Input("guidance_start", default=0.0, min=0.0, max=1.0, step=0.01,
                       tooltip="Fraction of the sampled steps where guidance (both UNet passes) begins. "
                               "0 = from the first step. Set start > 0 with end = 1 to give the text only "
                               "in the late steps (the paper's Fig. 7)."),
        io.Float.Input("guidance_end", default=0.4, min=0.0, max=1.0, step=0.01,
                       tooltip="Fraction of the sampled steps where guidance ends. 0.4 = the paper's default: "
                               "a = 30 of 50 DDIM steps (or 15 of 25 DPM-Solver steps) run without the text "
                               "pass, about 27% faster. 1.0 = plain CFG everywhere (identical to KSampler)."),
        io.Combo.Input("tail", options=[TAIL_UNCOND, TAIL_COND], default=TAIL_UNCOND, tooltip=TAIL_TOOLTIP),
        io.Combo.Input("window", options=[MODE_FIXED, MODE_ADAPTIVE], default=MODE_FIXED,
                       tooltip="'fixed': guidance from start to end. 'adaptive': from start until the first "
                               "step where the guidance strength |w (eps_c - eps_u)| / |eps_u| (the paper's "
                               "Fig. 8b) falls below the threshold; guidance_end is then ignored."),
        io.Float.Input("adaptive_threshold", default=0.1, min=0.0, max=10.0, step=0.005,
                       tooltip="Adaptive window only: stop guidance once the relative guidance strength of "
                               "every image in the batch is below this (> 0). Read the node's guidance curve "
                               "to choose it."),
    ]


def check_settings(node: str, cfg, start, end, tail, window, threshold, steps=None) -> TruncationSettings:
    for name, v in (("guidance_start", start), ("guidance_end", end)):
        if v is None or math.isnan(float(v)) or not 0.0 <= float(v) <= 1.0:
            raise ShapeFirstInputError(node, f"{name} must be a fraction between 0 and 1 (got {v}).")
    if start > end:
        raise ShapeFirstInputError(node, f"guidance_start ({start}) is after guidance_end ({end}); swap them, or set "
                                         "start 0 / end 0.4 for the paper's default window.")
    if steps is not None and steps < 1:
        raise ShapeFirstInputError(node, f"steps must be at least 1 (got {steps}).")
    if tail not in (TAIL_UNCOND, TAIL_COND):
        raise ShapeFirstInputError(node, f"tail must be '{TAIL_UNCOND}' or '{TAIL_COND}' (got {tail!r}).")
    if window not in (MODE_FIXED, MODE_ADAPTIVE):
        raise ShapeFirstInputError(node, f"window must be '{MODE_FIXED}' or '{MODE_ADAPTIVE}' (got {window!r}).")
    if window == MODE_ADAPTIVE and not (threshold is not None and float(threshold) > 0):
        raise ShapeFirstInputError(node, f"adaptive_threshold must be > 0 in adaptive mode (got {threshold}); "
                                         "try 0.1, or switch window to 'fixed'.")
    return TruncationSettings(float(start), float(end), tail, window, float(threshold or 0.0), float(cfg))




class TruncatedCFGSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        import comfy.samplers

        return io.Schema(
            node_id=SAMPLER_NODE,
            display_name="KSampler (Truncated CFG)",
            category=f"{CATEGORY}/guidance",
            description=(
                "KSampler that runs classifier-free guidance only in a window of the steps (Yi et al., NeurIPS "
                "2024, eq. 9). Outside it the text-conditional UNet pass is not computed at all, so the default "
                "window (first 40% of steps) saves about 27% of sampling time at nearly the same image. With "
                "guidance_end = 1 it is identical to KSampler. Reports the model evaluations, the passes "
                "skipped and the share of UNet work saved, and draws the guidance strength per step."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The model used for denoising the input latent."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="The random seed used for creating the noise."),
                io.Int.Input("steps", default=20, min=1, max=10000,
                             tooltip="The number of steps used in the denoising process."),
                io.Float.Input("cfg", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale w inside the window."),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS,
                               tooltip="The sampling algorithm; every core sampler works."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS,
                               tooltip="The noise schedule; the window counts the steps actually sampled."),
                io.Conditioning.Input("positive", tooltip="The text to include (computed only inside the window)."),
                io.Conditioning.Input("negative", tooltip="The negative prompt; the paper's tail uses the EMPTY prompt."),
                io.Latent.Input("latent_image", tooltip="The latent image to denoise."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Amount of denoising; the window is a fraction of the steps actually sampled."),
                *window_inputs(),
            ],
            outputs=[io.Latent.Output(tooltip="The denoised latent.")],
        )

    @classmethod
    def validate_inputs(cls, cfg=7.5, guidance_start=0.0, guidance_end=0.4, tail=TAIL_UNCOND, window=MODE_FIXED,
                        adaptive_threshold=0.1, steps=20):
        return as_validation(check_settings, SAMPLER_NODE, cfg, guidance_start, guidance_end, tail, window,
                             adaptive_threshold, steps)

    @classmethod
    def execute(cls, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                denoise=1.0, guidance_start=0.0, guidance_end=0.4, tail=TAIL_UNCOND, window=MODE_FIXED,
                adaptive_threshold=0.1) -> io.NodeOutput:
        import nodes as comfy_nodes  # ComfyUI's top-level nodes.py (this package is imported relatively)

        settings = check_settings(SAMPLER_NODE, cfg, guidance_start, guidance_end, tail, window,
                                  adaptive_threshold, steps)
        patched, controller = patch_model(model, settings)
        (latent,) = comfy_nodes.common_ksampler(patched, seed, steps, cfg, sampler_name, scheduler, positive,
                                                negative, latent_image, denoise=denoise)
        report = controller.report.as_dict() if controller.report else {}
        report["settings"] = {"start": settings.start, "end": settings.end, "tail": settings.tail,
                              "window": settings.mode, "threshold": settings.threshold, "cfg": settings.cfg}
        return io.NodeOutput(latent, ui={ui_keys.GUIDANCE: [report]})


class TruncatedCFGGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=GUIDER_NODE,
            display_name="Truncated CFG Guider",
            category=f"{CATEGORY}/guidance",
            description=(
                "A GUIDER for SamplerCustomAdvanced that runs classifier-free guidance only in a window of the "
                "steps (the paper's eq. 9), with any custom sigmas, noise and sampler. The window is a fraction "
                "of the sigmas given to the sampler. The accounting is logged and shown in this node."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The model to guide; it is cloned, never modified."),
                io.Conditioning.Input("positive", tooltip="The text to include (computed only inside the window)."),
                io.Conditioning.Input("negative", tooltip="The negative prompt; the paper's tail uses the EMPTY prompt."),
                io.Float.Input("cfg", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale w inside the window."),
                *window_inputs(),
            ],
            outputs=[io.Guider.Output(tooltip="Connect to SamplerCustomAdvanced.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, cfg=7.5, guidance_start=0.0, guidance_end=0.4, tail=TAIL_UNCOND, window=MODE_FIXED,
                        adaptive_threshold=0.1):
        return as_validation(check_settings, GUIDER_NODE, cfg, guidance_start, guidance_end, tail, window,
                             adaptive_threshold)

    @classmethod
    def execute(cls, model, positive, negative, cfg, guidance_start=0.0, guidance_end=0.4, tail=TAIL_UNCOND,
                window=MODE_FIXED, adaptive_threshold=0.1) -> io.NodeOutput:
        import comfy.samplers

        settings = check_settings(GUIDER_NODE, cfg, guidance_start, guidance_end, tail, window, adaptive_threshold)
        patched, controller = patch_model(model, settings)
        node_id = cls.hidden.unique_id if cls.hidden else None
        controller.on_finish = lambda report: _send_report(node_id, report)
        guider = comfy.samplers.CFGGuider(patched)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        return io.NodeOutput(guider)


def _send_report(node_id, report) -> None:
    """Show a guider's accounting in its node (the guider itself does not run after sampling)."""
    if node_id is None:
        return
    try:
        from server import PromptServer

        server = PromptServer.instance
        server.send_sync(ui_keys.GUIDANCE_EVENT, {"node": str(node_id), "report": report}, server.client_id)
    except Exception as exc:  # no server (headless run): the log line is enough
        LOGGER.debug("could not send the guidance report to the browser: %s", exc)
