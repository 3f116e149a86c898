"""TruncatedCFGModel: truncated guidance (the paper's eq. 9) as a MODEL patch for any sampler node.

The same patch as the KSampler drop-in and the guider (truncated_cfg_patch.py); the guidance scale
comes from the sampler the model is connected to. The accounting reaches this node in the browser
through the same event the guider sends, and the log.
"""

from __future__ import annotations

from ..shapefirst.guidance import UNITS_SIGMA
from ._api import io
from ._common import CATEGORY
from .truncated_cfg_patch import patch_model
from . import truncation_inputs as inputs

MODEL_NODE = "TruncatedCFGModel"


class TruncatedCFGModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=MODEL_NODE,
            display_name="Truncated CFG (model patch)",
            category=f"{CATEGORY}/guidance",
            description=(
                "Classifier-free guidance only in a window of the sampling (Yi et al., NeurIPS 2024, eq. 9), as a "
                "MODEL patch: connect its output to any sampler node (KSampler, KSamplerAdvanced, SamplerCustom, "
                "SamplerCustomAdvanced with CFGGuider), also beside EasyCache/LazyCache. Outside the window the "
                "text-conditional pass is not computed at all. Use window_units 'sigma' for chained samplers "
                "(high-noise then low-noise KSamplerAdvanced): the window is then the same noise range in both. "
                "DualCFGGuider (HiDream E1, ...) is truncated too: outside the window its negative (tail 'uncond') "
                "or its cond1 (tail 'cond') alone is computed. Other guiders with more than two conditionings "
                "(PerpNegGuider) are left exact. With cfg 1 there is only one pass per step, so nothing is "
                "skipped; the report says so."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The model to sample with. It is cloned, never modified."),
                *inputs.window_inputs(),
                inputs.text_cache_input(),
            ],
            outputs=[io.Model.Output("patched_model", display_name="model",
                                     tooltip="The same model with truncated guidance; connect it to your sampler. "
                                             "The guidance scale is the sampler's cfg.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, sigma_low=None, sigma_high=None):
        return inputs.validate_window(MODEL_NODE, sigma_low, sigma_high)

    @classmethod
    def execute(cls, model, text_cache=inputs.TEXT_CACHE_OFF, **window) -> io.NodeOutput:
        settings = inputs.window_from_inputs(MODEL_NODE, None, window)
        if settings.units == UNITS_SIGMA:
            inputs.check_model_range(MODEL_NODE, settings, model)
        patched, controller = patch_model(model, settings, MODEL_NODE)
        inputs.attach_text_cache(MODEL_NODE, patched, text_cache)
        node_id = cls.hidden.unique_id if cls.hidden else None
        controller.on_finish = lambda report: inputs.send_report(node_id, report)
        return io.NodeOutput(patched)
