"""EOSSwapKVPatch: lets cross-attention take its Keys and its Values from two different contexts,
for the Keys-only / Values-only EOS swaps of Yi et al. (NeurIPS 2024) Appendix G.

How it reaches exactly the right rows:
* EOSSwapConditioning (apply_to = keys only / values only) stores, in the conditioning dict under
  ``KV_KEY``, the Values context; the conditioning tensor itself is the Keys context.
* A CALC_COND_BATCH wrapper (keyed, per model clone) runs at every model evaluation. It reads the
  conds being evaluated, and for each cond that carries ``KV_KEY`` maps that cond's sampling uuid
  to its Values context, in a copy of ``transformer_options`` for this call only (nothing is kept
  between calls or runs). A conditioning whose tensor was changed after the node (Zero Out,
  Concat...) is no longer the one the Values belong to: it is left alone, with a warning.
* An attn2 patch gets ``extra_options["uuids"]`` (one uuid per batch chunk, in batch order): for
  each chunk whose uuid is mapped it replaces that chunk's Values rows, repeated to the chunk's
  batch size and to the token length of the batch (ComfyUI repeats shorter contexts to a common
  length when cond and uncond differ). Every other chunk (the negative prompt, other positive
  conds) keeps its own context; the Keys are never touched.
* Wan's cross-attention (separate K and V projections of the embedded text) calls no attn2 patch:
  each block's ``cross_attn.forward`` is object-patched instead. For the mapped chunks it embeds the
  Values context with the model's own ``text_embedding`` (once per model call, cached in that call's
  ``transformer_options``) and projects V from it; K, Q and every other chunk are the block's own.
* PixArt's cross-attention (K and V projected together by ``kv_linear`` from the caption embedded by
  ``y_embedder``) calls no attn2 patch and is handed no ``transformer_options``: a keyed APPLY_MODEL
  wrapper keeps each model call's ``transformer_options`` for the blocks, in the calling thread
  (restored when the call returns), and each block's ``cross_attn.forward`` is object-patched. For the
  mapped chunks it embeds the Values context with the model's own ``y_embedder`` (once per model call,
  cached as for Wan), takes K from ``kv_linear`` of the block's context and V from ``kv_linear`` of the
  Values; Q, the attention and every other chunk are the block's own.
  Other models (SD3, Flux, Wan I2V) are refused.
"""

from __future__ import annotations

import threading

import torch

from ._api import io
from ._common import CATEGORY, KEY_PREFIX, LOGGER, ShapeFirstInputError
from ._patching import chain_object_patch, patched_clone, set_attn2_patch
from .eos_swap import KV_KEY, NODE as EOS_NODE

NODE = "EOSSwapKVPatch"
WRAPPER_KEY = f"{KEY_PREFIX}eos_swap.kv"
MAP_KEY = f"{KEY_PREFIX}eos_swap.values_by_uuid"
WARNED_KEY = f"{KEY_PREFIX}eos_swap.warned"
EMBED_KEY = f"{KEY_PREFIX}eos_swap.embedded_values"  # Wan, PixArt: per model call, uuid -> embedded Values context
_PIXART_CALL = threading.local()  # PixArt: ``options``, the transformer_options of this thread's model call


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a is b:
        return True
    return a.shape == b.shape and torch.equal(a.to(b.device, b.dtype), b)


def values_by_uuid(conds) -> dict:
    """uuid -> Values context, for every cond that EOSSwapConditioning marked (keys/values only).

    A marked cond whose tensor no longer matches the stored Keys context was changed after the
    node (Conditioning Zero Out, Concat, Average...): it is no longer that conditioning, so it is
    left alone, with one warning per sampling run (noted in the run's own copy of the cond dict).
    """
    mapping = {}
    for group in conds:
        for c in group or ():
            data = c.get(KV_KEY)
            if not data:
                continue
            keys = c.get("cross_attn")
            if keys is None or not _same_tensor(keys, data["keys"]):
                if not c.get(WARNED_KEY):
                    c[WARNED_KEY] = True  # c is this run's copy (ComfyUI copies conds for every run)
                    LOGGER.warning(
                        "%s: a conditioning from %s (%s) was changed after that node (e.g. by Conditioning Zero Out, "
                        "Concat or Average), so its Keys/Values swap is not applied. Connect the EOS swap "
                        "conditioning to the sampler directly to swap Keys or Values only.", NODE, EOS_NODE,
                        data.get("mode"))
                continue
            mapping[c["uuid"]] = data["values"]
    return mapping


def calc_cond_batch_wrapper(executor, model, conds, x_in, timestep, model_options):
    mapping = values_by_uuid(conds)
    if mapping:
        model_options = dict(model_options)
        transformer_options = dict(model_options.get("transformer_options", {}))
        transformer_options[MAP_KEY] = mapping
        transformer_options[EMBED_KEY] = {}
        model_options["transformer_options"] = transformer_options
    return executor(model, conds, x_in, timestep, model_options)


def _fit(values: torch.Tensor, rows: int, tokens: int, like: torch.Tensor) -> torch.Tensor:
    """``values`` (b, T, C) repeated to (rows, tokens, C) as ComfyUI repeats conds (batch and length)."""
    if tokens % values.shape[1]:
        raise ShapeFirstInputError(
            NODE, f"the batch's context has {tokens} tokens, not a multiple of the stored {values.shape[1]}; "
                  "this conditioning was combined in a way the K/V swap cannot follow.")
    v = values.to(device=like.device, dtype=like.dtype)
    if tokens != v.shape[1]:
        v = v.repeat(1, tokens // v.shape[1], 1)
    if v.shape[0] < rows:
        v = v.repeat(-(-rows // v.shape[0]), 1, 1)
    return v[:rows]


def _replace_chunks(base: torch.Tensor, uuids, mapping: dict, prepare=None):
    """A copy of ``base`` (the batch's context) whose mapped chunks hold their Values context
    (``prepare(uuid, values)`` first, if given); None when no chunk is mapped."""
    chunks = len(uuids)
    if base.shape[0] % chunks:
        raise ShapeFirstInputError(NODE, f"cross-attention batch of {base.shape[0]} rows does not split into "
                                         f"{chunks} conds; this model is not supported.")
    per = base.shape[0] // chunks
    out = None
    for i, u in enumerate(uuids):
        values = mapping.get(u)
        if values is None:
            continue
        if out is None:
            out = base.clone()  # never write into a tensor the caller still holds
        out[i * per:(i + 1) * per] = _fit(values if prepare is None else prepare(u, values), per, base.shape[1], base)
    return out


def kv_attn2_patch(n, context_attn2, value_attn2, extra_options):
    mapping = extra_options.get(MAP_KEY)
    uuids = extra_options.get("uuids")
    if not mapping or not uuids or context_attn2 is None:
        return n, context_attn2, value_attn2
    out = _replace_chunks(value_attn2 if value_attn2 is not None else context_attn2, uuids, mapping)
    return n, context_attn2, (value_attn2 if out is None else out)


def _wan_cross_attention(net, module, previous):
    """``forward`` of one Wan T2V cross-attention block: V of mapped chunks from their Values context."""
    import comfy.ldm.wan.model as wan_model  # its attention function, looked up at call time as the block does

    def original(x, context, transformer_options={}, **kwargs):
        if previous is not None:
            return previous(x, context, transformer_options=transformer_options, **kwargs)
        return type(module).forward(module, x, context, transformer_options=transformer_options, **kwargs)

    def forward(x, context, transformer_options={}, **kwargs):
        mapping, uuids = transformer_options.get(MAP_KEY), transformer_options.get("uuids")
        if not mapping or not uuids:
            return original(x, context, transformer_options=transformer_options, **kwargs)
        cache = transformer_options.setdefault(EMBED_KEY, {})

        def embed(u, values):
            if u not in cache:
                cache[u] = net.text_embedding(values.to(device=context.device, dtype=context.dtype))
            return cache[u]

        values = _replace_chunks(context, uuids, mapping, embed)
        if values is None:
            return original(x, context, transformer_options=transformer_options, **kwargs)
        q = module.norm_q(module.q(x))
        k = module.norm_k(module.k(context))
        v = module.v(values)
        return module.o(wan_model.optimized_attention(q, k, v, heads=module.num_heads,
                                                      transformer_options=transformer_options))

    return forward


def _wan_blocks(net) -> list | None:
    """Indices of a Wan text-to-video network's blocks (None: not one, or cross-attention of another kind)."""
    try:
        from comfy.ldm.wan.model import WanModel, WanT2VCrossAttention
    except ImportError:
        return None
    if not isinstance(net, WanModel) or getattr(net, "text_embedding", None) is None:
        return None
    blocks = list(getattr(net, "blocks", []))
    if not blocks or any(type(b.cross_attn) is not WanT2VCrossAttention for b in blocks):
        return None
    return list(range(len(blocks)))


def pixart_apply_model(executor, x, t, c_concat, c_crossattn, control, transformer_options, **kwargs):
    """PixArt hands its blocks no ``transformer_options``: keep this call's for them, in this thread."""
    previous = getattr(_PIXART_CALL, "options", None)
    _PIXART_CALL.options = transformer_options
    try:
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
    finally:
        _PIXART_CALL.options = previous


def _pixart_cross_attention(net, module, previous):
    """``forward`` of one PixArt block's cross-attention: K from ``kv_linear`` of the block's context,
    V from ``kv_linear`` of the mapped chunks' embedded Values context."""
    import comfy.ldm.pixart.blocks as pixart_blocks  # its attention function, looked up at call time as the block does

    def original(x, cond, mask=None):
        if previous is not None:
            return previous(x, cond, mask)
        return type(module).forward(module, x, cond, mask)

    def forward(x, cond, mask=None):
        options = getattr(_PIXART_CALL, "options", None) or {}
        mapping, uuids = options.get(MAP_KEY), options.get("uuids")
        b, _, c = x.shape
        if not mapping or not uuids or mask is not None or cond.shape[1] % b:
            return original(x, cond, mask)
        cache = options.setdefault(EMBED_KEY, {})

        def embed(u, values):
            if u not in cache:
                cache[u] = net.y_embedder(values.to(device=cond.device, dtype=cond.dtype), net.training)
            return cache[u]

        values = _replace_chunks(cond.reshape(b, -1, c), uuids, mapping, embed)  # cond: (1, b * tokens, c)
        if values is None:
            return original(x, cond, mask)
        heads, dim = module.num_heads, module.head_dim
        q = module.q_linear(x).view(1, -1, heads, dim)
        k = module.kv_linear(cond).view(1, -1, 2, heads, dim).unbind(2)[0]
        v = module.kv_linear(values.reshape(1, -1, c)).view(1, -1, 2, heads, dim).unbind(2)[1]
        out = pixart_blocks.optimized_attention(q.view(b, -1, c), k.view(b, -1, c), v.view(b, -1, c), heads, mask=None)
        return module.proj_drop(module.proj(out))

    return forward


def _pixart_blocks(net) -> list | None:
    """Indices of a PixArt network's blocks (None: not one, or a caption embedder or cross-attention of another kind)."""
    try:
        from comfy.ldm.pixart.blocks import CaptionEmbedder, MultiHeadCrossAttention
        from comfy.ldm.pixart.pixartms import PixArtMS
    except ImportError:
        return None
    if not isinstance(net, PixArtMS) or type(getattr(net, "y_embedder", None)) is not CaptionEmbedder:
        return None
    blocks = list(getattr(net, "blocks", []))
    if not blocks or any(type(b.cross_attn) is not MultiHeadCrossAttention for b in blocks):
        return None
    return list(range(len(blocks)))


def _block_patches(net):
    """(block indices, factory of a block's cross-attention ``forward``) for Wan T2V and PixArt; None otherwise."""
    for blocks, make in ((_wan_blocks(net), _wan_cross_attention), (_pixart_blocks(net), _pixart_cross_attention)):
        if blocks is not None:
            return blocks, make
    return None


def patch_model(model):
    """A clone of ``model`` with the wrappers and the attn2 patch or the blocks' object patches (applying
    twice replaces, adds nothing)."""
    import comfy.patcher_extension as pe

    net = model.get_model_object("diffusion_model")
    wrappers = {pe.WrappersMP.CALC_COND_BATCH: calc_cond_batch_wrapper}
    if _pixart_blocks(net) is not None:
        wrappers[pe.WrappersMP.APPLY_MODEL] = pixart_apply_model
    m = patched_clone(model, WRAPPER_KEY, wrappers)
    blocks = _block_patches(net)
    if blocks is None:
        set_attn2_patch(m, kv_attn2_patch, WRAPPER_KEY)
        return m
    indices, make = blocks
    for i in indices:
        module = net.blocks[i].cross_attn
        chain_object_patch(m, f"diffusion_model.blocks.{i}.cross_attn.forward",
                           lambda previous, module=module: make(net, module, previous), WRAPPER_KEY)
    return m


class EOSSwapKVPatch(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=NODE,
            display_name="EOS Swap K/V Patch (model)",
            category=f"{CATEGORY}/conditioning",
            description=(
                "Needed for EOS Swap Conditioning with apply_to = 'keys only' or 'values only' (the paper's "
                "Appendix G): cross-attention then computes its Keys from one context and its Values from the "
                "other, for that conditioning only. The negative prompt and any other conditioning keep their own "
                "context; without such a conditioning the model samples exactly as before. UNet models (SD1.x, "
                "SD2.x, SDXL), PixArt and Wan text-to-video."
            ),
            inputs=[io.Model.Input("model", tooltip="The model to sample with. It is cloned, never modified.")],
            outputs=[io.Model.Output("patched_model", display_name="model",
                                     tooltip="The same model with the K/V swap hook; connect it to your sampler.")],
        )

    @classmethod
    def execute(cls, model) -> io.NodeOutput:
        check_model(model)
        return io.NodeOutput(patch_model(model))


def check_model(model) -> None:
    """Refuse models whose Keys and Values this patch cannot split (the Keys-only / Values-only swap
    would silently act on both or on neither): those neither UNets (attn2 patches) nor PixArt nor Wan T2V."""
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    net = getattr(getattr(model, "model", None), "diffusion_model", None)
    if not isinstance(net, UNetModel) and _block_patches(net) is None:
        raise ShapeFirstInputError(NODE, f"this model's network ({type(net).__name__}) has no cross-attention with "
                                         "Keys and Values this patch can split; it works with UNet models (SD1.x, "
                                         "SD2.x, SDXL), PixArt and Wan text-to-video. Remove it and use EOS Swap "
                                         "Conditioning with apply_to 'keys and values' on this model.")
