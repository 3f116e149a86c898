"""The inputs every truncated-guidance node shares (the window, the text cache), their one check, and
what the nodes do around the patch: the model's noise range, the report sent to the browser.

Every default of the window is a field default of ``shapefirst.guidance.GuidanceWindow`` (read here as
``DEFAULT_WINDOW``); the three nodes (truncated_cfg.py, truncated_cfg_model.py) build their inputs here.
"""

from __future__ import annotations

from ..shapefirst import families as fam
from ..shapefirst import ui_keys
from ..shapefirst.guidance import (DEFAULT_WINDOW as D, MODE_ADAPTIVE, MODE_FIXED, TAIL_COND, TAIL_UNCOND, UNITS_SIGMA,
                                   UNITS_STEPS, GuidanceWindow, WindowError, window_steps)
from ._api import io
from ._common import LOGGER, ShapeFirstInputError

EVENT = ui_keys.GUIDANCE_EVENT

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


CFG_DEFAULT = 8.0  # core KSampler's


def cfg_input():
    return io.Float.Input("cfg", default=CFG_DEFAULT, min=0.0, max=100.0, step=0.1, round=0.01,
                          tooltip="Classifier-free guidance scale w inside the window.")


def window_inputs() -> list:
    return [
        io.Float.Input("guidance_start", default=D.start, min=0.0, max=1.0, step=0.01,
                       tooltip="Window units 'steps': fraction of the sampled steps where guidance (both passes) "
                               "begins. 0 = from the first step. Set start > 0 with end = 1 to give the text only "
                               "in the late steps (the paper's Fig. 7)."),
        io.Float.Input("guidance_end", default=D.end, min=0.0, max=1.0, step=0.01,
                       tooltip="Window units 'steps': fraction of the sampled steps where guidance ends. 0.4 = the "
                               "paper's default: a = 30 of 50 DDIM steps (or 15 of 25 DPM-Solver steps) run without "
                               "the text pass, about 27% faster. 1.0 = plain CFG everywhere (identical to KSampler)."),
        io.Combo.Input("tail", options=[TAIL_UNCOND, TAIL_COND], default=D.tail, tooltip=TAIL_TOOLTIP),
        io.Combo.Input("window", options=[MODE_FIXED, MODE_ADAPTIVE], default=D.mode,
                       tooltip="'fixed': guidance from start to end. 'adaptive': from start until the first "
                               "step where the guidance strength |w (eps_c - eps_u)| / |eps_u| (the paper's "
                               "Fig. 8b) falls below the threshold; the window's end is then ignored."),
        io.Float.Input("adaptive_threshold", default=D.threshold, min=0.0, max=10.0, step=0.005,
                       tooltip="Adaptive window only: stop guidance once the relative guidance strength of "
                               "every image in the batch is below this (> 0). Read the node's guidance curve "
                               "to choose it."),
        io.Combo.Input("window_units", options=[UNITS_STEPS, UNITS_SIGMA], default=D.units, optional=True,
                       tooltip=UNITS_TOOLTIP),
        io.Float.Input("sigma_low", default=D.sigma_low, min=0.0, max=10000.0, step=0.01, optional=True,
                       tooltip="Window units 'sigma': the lowest noise level still guided (inclusive); steps "
                               "below it form the tail. 2.4 is about where the paper's default window ends for "
                               "SD1.x/SDXL (sigmas 14.6 to 0.03); flow models (SD3, Flux) use sigmas 1 to 0. "
                               "0 = guide down to the last step."),
        io.Float.Input("sigma_high", default=D.sigma_high, min=0.0, max=10000.0, step=0.01, optional=True,
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
    f"steps before the tail are unchanged, the tail differs slightly from exact eq. 9. Works with "
    f"{fam.spoken_list(fam.supported(fam.TEXT_CACHE))}; refused for joint-attention models, where the text is not "
    "a separate branch of the attention.")


def text_cache_input():
    return io.Combo.Input("text_cache", options=[TEXT_CACHE_OFF, TEXT_CACHE_KV, TEXT_CACHE_TAIL],
                          default=TEXT_CACHE_OFF, optional=True, tooltip=TEXT_CACHE_TOOLTIP)


def attach_text_cache(node: str, patched, mode) -> None:
    """Attach the chosen text cache to the patched clone; a model it cannot serve is refused with the
    reason its description gives, and the fix."""
    if mode in (None, TEXT_CACHE_OFF):
        return
    if mode not in (TEXT_CACHE_KV, TEXT_CACHE_TAIL):
        raise ShapeFirstInputError(node, f"text_cache must be one of {TEXT_CACHE_OFF}, {TEXT_CACHE_KV}, "
                                         f"{TEXT_CACHE_TAIL} (got {mode!r}).")
    from . import text_cache

    text_cache.attach(patched, mode, node)


def make_window(node: str, cfg, start=D.start, end=D.end, tail=D.tail, window=D.mode, threshold=D.threshold,
                units=D.units, sigma_low=D.sigma_low, sigma_high=D.sigma_high, steps=None) -> GuidanceWindow:
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


# node input -> GuidanceWindow field (the defaults are the fields' own: shapefirst.guidance.DEFAULT_WINDOW)
WINDOW_FIELDS = {"guidance_start": "start", "guidance_end": "end", "tail": "tail", "window": "mode",
                 "adaptive_threshold": "threshold", "window_units": "units", "sigma_low": "sigma_low",
                 "sigma_high": "sigma_high"}
WINDOW_INPUTS = tuple(WINDOW_FIELDS)


def window_from_inputs(node: str, cfg, inputs: dict, steps=None) -> GuidanceWindow:
    """make_window from a node's keyword inputs (missing ones take their defaults; linked ones are None)."""
    given = {WINDOW_FIELDS[k]: inputs[k] for k in WINDOW_INPUTS if inputs.get(k) is not None}
    v = {**{f: getattr(D, f) for f in WINDOW_FIELDS.values()}, **given}
    return make_window(node, D.cfg if cfg is None else cfg, v["start"], v["end"], v["tail"], v["mode"],
                       v["threshold"], v["units"], v["sigma_low"], v["sigma_high"], steps)


def validate_window(node: str, sigma_low=None, sigma_high=None) -> bool | str:
    """What a window node's validate_inputs answers. ComfyUI attaches its answer to every input that
    validate_inputs reads, so it reads only the two inputs a check there concerns: the sigma window's
    bounds, which must not be inverted (in either units, so switching units never meets a reversed pair).
    The other window checks (guidance_start after guidance_end, an adaptive threshold of 0) are made when
    the node runs, naming the inputs."""
    if sigma_low is None or sigma_high is None:  # linked from another node: checked when it runs
        return True
    try:
        low, high = float(sigma_low), float(sigma_high)
    except (TypeError, ValueError):
        return True
    if low > high:
        return (f"{node}: sigma_low ({sigma_low}) is above sigma_high ({sigma_high}); swap them: guidance runs for "
                "noise levels between sigma_low and sigma_high.")
    return True


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


