"""TruncatedCFGSampler and TruncatedCFGGuider: guidance only inside a window of the steps.

Both, and TruncatedCFGModel (truncated_cfg_model.py), share one implementation: the window inputs
and their check here, the model patch in truncated_cfg_patch.py, the schedule in shapefirst.guidance.
"""

from __future__ import annotations

from ..shapefirst import ui_keys
from ._api import io
from ._common import CATEGORY
from .truncated_cfg_patch import patch_model
from .truncation_inputs import (TEXT_CACHE_OFF, attach_text_cache, cfg_input, check_model_range, send_report,
                                settings_dict, text_cache_input, validate_window, window_from_inputs, window_inputs)

SAMPLER_NODE = "TruncatedCFGSampler"
GUIDER_NODE = "TruncatedCFGGuider"


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
                cfg_input(),
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
    def validate_inputs(cls, sigma_low=None, sigma_high=None):
        return validate_window(SAMPLER_NODE, sigma_low, sigma_high)

    @classmethod
    def execute(cls, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                denoise=1.0, text_cache=TEXT_CACHE_OFF, **window) -> io.NodeOutput:
        import nodes as comfy_nodes  # ComfyUI's top-level nodes.py (this package is imported relatively)

        settings = window_from_inputs(SAMPLER_NODE, cfg, window, steps)
        check_model_range(SAMPLER_NODE, settings, model)
        patched, controller = patch_model(model, settings, SAMPLER_NODE)
        attach_text_cache(SAMPLER_NODE, patched, text_cache)
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
                cfg_input(),
                *window_inputs(),
                text_cache_input(),
            ],
            outputs=[io.Guider.Output("guider", display_name="GUIDER", tooltip="Connect to SamplerCustomAdvanced.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, sigma_low=None, sigma_high=None):
        return validate_window(GUIDER_NODE, sigma_low, sigma_high)

    @classmethod
    def execute(cls, model, positive, negative, cfg, text_cache=TEXT_CACHE_OFF, **window) -> io.NodeOutput:
        import comfy.samplers

        settings = window_from_inputs(GUIDER_NODE, cfg, window)
        check_model_range(GUIDER_NODE, settings, model)
        patched, controller = patch_model(model, settings, GUIDER_NODE)
        attach_text_cache(GUIDER_NODE, patched, text_cache)
        node_id = cls.hidden.unique_id if cls.hidden else None
        controller.on_finish = lambda report: send_report(node_id, report)
        guider = comfy.samplers.CFGGuider(patched)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        return io.NodeOutput(guider)
