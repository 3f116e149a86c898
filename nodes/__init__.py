"""ShapeFirst's ComfyUI nodes (V3 schema). Imported only as part of the pack (relative imports):
ComfyUI has a top-level module called ``nodes`` too."""

from ._api import ComfyExtension, io
from .eos_swap import EOSSwapConditioning
from .attention_capture import AttentionMapCapture
from .attention_compare import AttentionMapCompare
from .attention_view import AttentionMapView
from .frequency_split import FrequencySplitPreview
from .frequency_trace import FrequencyCurves, FrequencyTrace
from .truncated_cfg import TruncatedCFGGuider, TruncatedCFGSampler
from .truncated_cfg_model import TruncatedCFGModel
from .kv_swap import EOSSwapKVPatch

NODE_LIST: list[type[io.ComfyNode]] = [
    FrequencySplitPreview,
    FrequencyTrace,
    FrequencyCurves,
    TruncatedCFGSampler,
    TruncatedCFGGuider,
    TruncatedCFGModel,
    EOSSwapConditioning,
    EOSSwapKVPatch,
    AttentionMapCapture,
    AttentionMapView,
    AttentionMapCompare,
]


class ShapeFirstExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODE_LIST)


async def comfy_entrypoint() -> ShapeFirstExtension:
    return ShapeFirstExtension()
