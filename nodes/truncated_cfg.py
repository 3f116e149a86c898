"""TruncatedCFGSampler and TruncatedCFGGuider: guidance only inside a window of the steps.

Both, and TruncatedCFGModel (truncated_cfg_model.py), share one implementation: the window inputs
and their check here, the model patch in truncated_cfg_patch.py, the schedule in shapefirst.guidance.
"""

from __future__ import annotations

from ..shapefirst.guidance import (MODE_ADAPTIVE, MODE_FIXED, TAIL_COND, TAIL_UNCOND, UNITS_SIGMA, UNITS_STEPS,
                                   GuidanceWindow, WindowError, window_steps)
from ..shapefirst import ui_keys
from ._api import io
from ._common import CATEGORY, LOGGER, ShapeFirstInputError, as_validation
from .truncated_cfg_patch import patch_model

SAMPLER_NODE = "TruncatedCFGSampler"
GUIDER_NODE = "TruncatedCFGGuider"
EVENT = ui_keys.GUIDANCE_EVENT
SIGMA_LOW_DEFAULT = 2.4  # SD1.x/SDXL: about where the paper's default window (first 40% of steps) ends
SIGMA_HIGH_DEFAULT = 1000.0  # above every model's largest sigma: guidance from the first step

TAIL_TOOLTIP = (
    "What replaces guidance outside the window. 'uncond' = the paper's eq. 9: only the negative-prompt "
    "prediction is computed. The paper's 'uncond' is the EMPTY prompt; with a non-empty negative prompt "
    "the tail steers away from nothing and towards the negative text, so keep the negative empty (or "
    "use ConditioningZeroOut) for the paper's behaviour. 'cond' = only the positive prediction (the text "
    "keeps acting, without the w-scaled push). A ControlNet acts in the tail only if it is applied "
    "to the branch kept there (ControlNetApplyAdvanced applies it to both).")

UNITS_TOOLTIP = (
    "How the window is given. 'steps' (default): guidance_start/guidance_end are fractions of the steps this "
    "sampler actually samples; simple, and what the paper reports (one sampler, full denoise). 'sigma': "
    "sigma_low/sigma_high are noise levels; a step is guided when its sigma lies between them. Use 'sigma' "
    "with chained samplers (e.g. a high-noise then a low-noise KSamplerAdvanced), denoise < 1, or to keep "
    "the same noise range across schedulers and step counts (Kynkaanniemi et al. 2024).")


def window_inputs() -> list:
    return [
        io.Float.Input("guidance_start", default=0.0, min=0.0, max=1.0, step=0.01,
                       tooltip="Window units 'steps': fraction of the sampled steps where guidance (both passes) "
                               "begins. 0 = from the first step. Set start > 0 with end = 1 to give the text only "
                               "in the late steps (the paper's Fig. 7)."),
        io.Float.Input("guidance_end", default=0.4, min=0.0, max=1.0, step=0.01,
                       tooltip="Window units 'steps': fraction of the sampled steps where guidance ends. 0.4 = the "
                               "paper's default: a = 30 of 50 DDIM steps (or 15 of 25 DPM-Solver steps) run without "
                               "the text pass, about 27% faster. 1.0 = plain CFG everywhere (identical to KSampler)."),
        io.Combo.Input("tail", options=[TAIL_UNCOND, TAIL_COND], default=TAIL_UNCOND, tooltip=TAIL_TOOLTIP),
        io.Combo.Input("window", options=[MODE_FIXED, MODE_ADAPTIVE], default=MODE_FIXED,
                       tooltip="'fixed': guidance from start to end. 'adaptive': from start until the first "
                               "step where the guidance strength |w (eps_c - eps_u)| / |eps_u| (the paper's "
                               "Fig. 8b) falls below the threshold; the window's end is then ignored."),
        io.Float.Input("adaptive_threshold", default=0.1, min=0.0, max=10.0, step=0.005,
                       tooltip="Adaptive window only: stop guidance once the relative guidance strength of "
                               "every image in the batch is below this (> 0). Read the node's guidance curve "
                               "to choose it."),
        io.Combo.Input("window_units", options=[UNITS_STEPS, UNITS_SIGMA], default=UNITS_STEPS, optional=True,
                       tooltip=UNITS_TOOLTIP),
        io.Float.Input("sigma_low", default=SIGMA_LOW_DEFAULT, min=0.0, max=10000.0, step=0.01, optional=True,
                       tooltip="Window units 'sigma': the lowest noise level still guided (inclusive); steps "
                               "below it form the tail. 2.4 is about where the paper's default window ends for "
                               "SD1.x/SDXL (sigmas 14.6 to 0.03); flow models (SD3, Flux) use sigmas 1 to 0. "
                               "0 = guide down to the last step."),
        io.Float.Input("sigma_high", default=SIGMA_HIGH_DEFAULT, min=0.0, max=10000.0, step=0.01, optional=True,
                       tooltip="Window units 'sigma': the highest noise level guided (inclusive). Anything above "
                               "the model's largest sigma (1000, the default) = guidance from the first step."),
    ]


TEXT_CACHE_OFF, TEXT_CACHE_KV, TEXT_CACHE_TAIL = "off", "keys_values", "tail_output"
TEXT_CACHE_TOOLTIP = (
    "Less work per step on UNet models (SD1.x, SD2.x, SDXL). 'off' (default): exact eq. 9. 'keys_values': "
    "each cross-attention layer projects a prompt's keys and values once per run instead of once per step "
    "(the prompt does not change between steps): exact, bit-identical results, UNets only. 'tail_output' "
    "(an approximation, in the manner of T-GATE): also, in the unguided tail, each cross-attention layer "
    "reuses the output it gave for the kept branch at the last guided step instead of computing it; the "
    "steps before the tail are unchanged, the tail differs slightly from exact eq. 9. Works with SD1.x, "
    "SD2.x, SDXL, PixArt and Wan; refused for joint-attention models (SD3, Flux, Qwen-Image, Lumina), where "
    "the text is not a separate branch of the attention.")


def text_cache_input():
    return io.Combo.Input("text_cache", options=[TEXT_CACHE_OFF, TEXT_CACHE_KV, TEXT_CACHE_TAIL],
                          default=TEXT_CACHE_OFF, optional=True, tooltip=TEXT_CACHE_TOOLTIP)


def attach_text_cache(node: str, patched, controller, mode) -> None:
    """Attach the chosen text cache to the patched clone; a model it cannot serve is refused with the fix."""
    if mode in (None, TEXT_CACHE_OFF):
        return
    from . import text_cache

    if mode == TEXT_CACHE_KV:
        if not text_cache.attach_exact(patched):
            raise ShapeFirstInputError(node, "text_cache 'keys_values' applies to UNet models (SD1.x, SD2.x, SDXL) "
                                             "only; this model has no such cross-attention. Set text_cache to 'off'.")
        return
    if mode != TEXT_CACHE_TAIL:
        raise ShapeFirstInputError(node, f"text_cache must be one of {TEXT_CACHE_OFF}, {TEXT_CACHE_KV}, "
                                         f"{TEXT_CACHE_TAIL} (got {mode!r}).")
    try:
        text_cache.attach(patched, controller.is_tail)
    except ValueError as exc:
        raise ShapeFirstInputError(node, str(exc)) from None


def make_window(node: str, cfg, start, end, tail, window, threshold, units=UNITS_STEPS, sigma_low=SIGMA_LOW_DEFAULT,
                sigma_high=SIGMA_HIGH_DEFAULT, steps=None) -> GuidanceWindow:
    """The validated window; a bad value raises ShapeFirstInputError naming ``node``, the input and the fix."""
    try:
        if steps is not None:
            window_steps(int(steps), 0.0, 0.0)  # only the step count is checked here
        return GuidanceWindow(start=float(start), end=float(end), tail=tail, mode=window,
                              threshold=float(threshold or 0.0), cfg=float(cfg), units=units or UNITS_STEPS,
                              sigma_low=float(sigma_low), sigma_high=float(sigma_high))
    except WindowError as exc:
        raise ShapeFirstInputError(node, str(exc)) from None
    except (TypeError, ValueError) as exc:
        raise ShapeFirstInputError(node, f"a window input is not a number ({exc}).") from None


WINDOW_INPUTS = ("guidance_start", "guidance_end", "tail", "window", "adaptive_threshold", "window_units",
                 "sigma_low", "sigma_high")
_DEFAULTS = {"guidance_start": 0.0, "guidance_end": 0.4, "tail": TAIL_UNCOND, "window": MODE_FIXED,
             "adaptive_threshold": 0.1, "window_units": UNITS_STEPS, "sigma_low": SIGMA_LOW_DEFAULT,
             "sigma_high": SIGMA_HIGH_DEFAULT}


def window_from_inputs(node: str, cfg, inputs: dict, steps=None) -> GuidanceWindow:
    """make_window from a node's keyword inputs (missing ones take their defaults; linked ones are None)."""
    v = {k: (_DEFAULTS[k] if inputs.get(k) is None else inputs[k]) for k in WINDOW_INPUTS}
    return make_window(node, 7.5 if cfg is None else cfg, v["guidance_start"], v["guidance_end"], v["tail"],
                       v["window"], v["adaptive_threshold"], v["window_units"], v["sigma_low"], v["sigma_high"],
                       steps)


def settings_dict(w: GuidanceWindow) -> dict:
    return {"start": w.start, "end": w.end, "tail": w.tail, "window": w.mode, "threshold": w.threshold,
            "cfg": w.cfg, "units": w.units, "sigma_low": w.sigma_low, "sigma_high": w.sigma_high}


def check_model_range(node: str, window: GuidanceWindow, model) -> None:
    """Refuse a sigma window outside the model's noise range, saying the range."""
    try:
        sampling = model.get_model_object("model_sampling")
        low, high = float(sampling.sigma_min), float(sampling.sigma_max)
    except Exception:  # a model without a sigma range: the run's warning will tell
        return
    try:
        window.check_model_range(low, high)
    except WindowError as exc:
        raise ShapeFirstInputError(node, str(exc)) from None


def send_report(node_id, report) -> None:
    """Show the accounting in a node that does not run after sampling (the guider, the model patch)."""
    if node_id is None:
        return
    try:
        from server import PromptServer

        server = PromptServer.instance
        server.send_sync(EVENT, {"node": str(node_id), "report": report}, server.client_id)
    except Exception as exc:  # no server (headless run): the log line is enough
        LOGGER.debug("could not send the guidance report to the browser: %s", exc)


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
                text_cache_input(),
            ],
            outputs=[io.Latent.Output("latent", display_name="LATENT", tooltip="The denoised latent.")],
        )

    @classmethod
    def validate_inputs(cls, cfg=7.5, steps=20, guidance_start=None, guidance_end=None, tail=None, window=None,
                        adaptive_threshold=None, window_units=None, sigma_low=None, sigma_high=None):
        inputs = dict(locals())  # the window inputs by name
        return as_validation(window_from_inputs, SAMPLER_NODE, cfg, inputs, steps)

    @classmethod
    def execute(cls, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                denoise=1.0, text_cache=TEXT_CACHE_OFF, **window) -> io.NodeOutput:
        import nodes as comfy_nodes  # ComfyUI's top-level nodes.py (this package is imported relatively)

        settings = window_from_inputs(SAMPLER_NODE, cfg, window, steps)
        check_model_range(SAMPLER_NODE, settings, model)
        patched, controller = patch_model(model, settings, SAMPLER_NODE)
        attach_text_cache(SAMPLER_NODE, patched, controller, text_cache)
        (latent,) = comfy_nodes.common_ksampler(patched, seed, steps, cfg, sampler_name, scheduler, positive,
                                                negative, latent_image, denoise=denoise)
        report = controller.report.as_dict() if controller.report else {}
        report["settings"] = settings_dict(settings)
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
                "of the sigmas given to the sampler, or with window_units 'sigma' a range of noise levels. The "
                "accounting is logged and shown in this node."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The model to guide; it is cloned, never modified."),
                io.Conditioning.Input("positive", tooltip="The text to include (computed only inside the window)."),
                io.Conditioning.Input("negative", tooltip="The negative prompt; the paper's tail uses the EMPTY prompt."),
                io.Float.Input("cfg", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale w inside the window."),
                *window_inputs(),
                text_cache_input(),
            ],
            outputs=[io.Guider.Output("guider", display_name="GUIDER", tooltip="Connect to SamplerCustomAdvanced.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, cfg=7.5, guidance_start=None, guidance_end=None, tail=None, window=None,
                        adaptive_threshold=None, window_units=None, sigma_low=None, sigma_high=None):
        inputs = dict(locals())  # the window inputs by name
        return as_validation(window_from_inputs, GUIDER_NODE, cfg, inputs)

    @classmethod
    def execute(cls, model, positive, negative, cfg, text_cache=TEXT_CACHE_OFF, **window) -> io.NodeOutput:
        import comfy.samplers

        settings = window_from_inputs(GUIDER_NODE, cfg, window)
        check_model_range(GUIDER_NODE, settings, model)
        patched, controller = patch_model(model, settings, GUIDER_NODE)
        attach_text_cache(GUIDER_NODE, patched, controller, text_cache)
        node_id = cls.hidden.unique_id if cls.hidden else None
        controller.on_finish = lambda report: send_report(node_id, report)
        guider = comfy.samplers.CFGGuider(patched)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        return io.NodeOutput(guider)
