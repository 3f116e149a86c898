"""EOSSwapKVPatch: lets cross-attention take its Keys and its Values from two different contexts,
for the Keys-only / Values-only EOS swaps of Yi et al. (NeurIPS 2024) Appendix G.

How it reaches exactly the right rows:
* EOSSwapConditioning (apply_to = keys only / values only) stores, in the conditioning dict under
  ``KV_KEY``, the Values context; the conditioning tensor itself is the Keys context.
* When a run starts (a ``RunRecorder``, SAMPLER_SAMPLE) every cond of the run that carries ``KV_KEY``
  is checked and its Values context placed on the sampling device, once. A conditioning whose tensor
  was changed after the node (Zero Out, Concat...) is no longer the one the Values belong to: it is
  left alone, with a warning. A CALC_COND_BATCH wrapper then maps, at every model evaluation, the
  sampling uuid of each such cond being evaluated to its Values context, in a copy of
  ``transformer_options`` for this call only (nothing is kept between runs).
* Where the Keys and Values are split follows the model's description (``shapefirst/families.py``,
  ``KVProjection``), on the described text cross-attention layers:
  - ``value_context`` (UNets): an attn2 patch gets ``extra_options["uuids"]`` (one uuid per batch chunk,
    in batch order) and replaces, for each mapped chunk, that chunk's Values rows, repeated to the
    chunk's batch size and to the token length of the batch (ComfyUI repeats shorter contexts to a
    common length when cond and uncond differ). Every other chunk keeps its own context; the Keys are
    never touched.
  - ``separate`` (Wan text- and image-to-video: K and V are separate projections of the embedded text):
    each layer's ``forward`` is object-patched. For the mapped chunks it embeds the Values context with
    the network's own embedder (once per model call, cached in that call's ``transformer_options``) and
    projects V from it; Q, K, the image-to-video model's CLIP-vision attention and every other chunk are
    the layer's own.
  - ``fused`` (PixArt: K and V from one ``kv_linear`` of the caption embedded by ``y_embedder``): the
    layer is handed no ``transformer_options``, so a keyed APPLY_MODEL wrapper keeps each model call's
    for the layers in a ``CallState`` (per thread); each layer's ``forward`` is object-patched and takes
    K from ``kv_linear`` of the layer's context and V from ``kv_linear`` of the embedded Values context.
  Families whose description refuses it (joint attention) are refused with that reason.
"""

from __future__ import annotations

import torch

from ..shapefirst import families as fam
from ._api import io
from ._common import CATEGORY, KEY_PREFIX, LOGGER, ShapeFirstInputError
from ._patching import CallState, RunRecorder, chain_object_patch, set_attn2_patch
from .eos_swap import KV_KEY, NODE as EOS_NODE
from .model_families import require, supported_list as supported

NODE = "EOSSwapKVPatch"
WRAPPER_KEY = f"{KEY_PREFIX}eos_swap.kv"
MAP_KEY = f"{KEY_PREFIX}eos_swap.values_by_uuid"
WARNED_KEY = f"{KEY_PREFIX}eos_swap.warned"
EMBED_KEY = f"{KEY_PREFIX}eos_swap.embedded_values"  # Wan, PixArt: per model call, uuid -> embedded Values context
_OPTIONS = CallState()  # PixArt: the transformer_options of the model call under way in this thread


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """The cond's tensor is still the node's: the same tensor (ComfyUI passes it on as is) or an equal one."""
    if a is b:
        return True
    return a.shape == b.shape and torch.equal(a.to(b.device, b.dtype), b)


def values_by_uuid(conds, device) -> dict:
    """uuid -> Values context on ``device``, for every cond that EOSSwapConditioning marked (keys/values only).

    A marked cond whose tensor no longer matches the stored Keys context was changed after the
    node (Conditioning Zero Out, Concat, Average...): it is no longer that conditioning, so it is
    left alone, with one warning per sampling run (noted in the run's own copy of the cond dict:
    ComfyUI copies conds for every run).
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
                    c[WARNED_KEY] = True
                    LOGGER.warning(
                        "%s: a conditioning from %s (%s) was changed after that node (e.g. by Conditioning Zero Out, "
                        "Concat or Average), so its Keys/Values swap is not applied. Connect the EOS swap "
                        "conditioning to the sampler directly to swap Keys or Values only.", NODE, EOS_NODE,
                        data.get("mode"))
                continue
            mapping[c["uuid"]] = data["values"].to(device)
    return mapping


class KVSwap(RunRecorder):
    """The conditionings of one run whose Values are swapped: checked and placed on the sampling device once,
    when the run starts; each evaluation then maps the uuids of its conds to them (nothing read per call)."""

    def __init__(self):
        super().__init__(WRAPPER_KEY)
        self._values: dict | None = None

    def begin(self, guider, sigmas, extra_args, noise) -> None:
        conds = getattr(guider, "conds", None)
        self._values = values_by_uuid(conds.values(), noise.device) if isinstance(conds, dict) else None

    def finish(self, completed: bool) -> None:
        self._values = None

    def calc_cond_batch(self, executor, model, conds, x_in, timestep, model_options):
        if self.active and self._values is not None:
            present = {c.get("uuid") for group in conds for c in (group or ())}
            mapping = {u: v for u, v in self._values.items() if u in present}
        else:  # sampled without the run wrapper
            mapping = values_by_uuid(conds, x_in.device)
        if mapping:
            model_options = dict(model_options)
            transformer_options = dict(model_options.get("transformer_options", {}))
            transformer_options[MAP_KEY] = mapping
            transformer_options[EMBED_KEY] = {}
            model_options["transformer_options"] = transformer_options
        return executor(model, conds, x_in, timestep, model_options)


def _on(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` with ``like``'s dtype and device (already there but on another device of a multi-GPU split)."""
    if t.device != like.device:
        t = t.to(like.device, non_blocking=True)
    return t.to(dtype=like.dtype)


def _fit(values: torch.Tensor, rows: int, tokens: int, like: torch.Tensor) -> torch.Tensor:
    """``values`` (b, T, C) repeated to (rows, tokens, C) as ComfyUI repeats conds (batch and length)."""
    if tokens % values.shape[1]:
        raise ShapeFirstInputError(
            NODE, f"the batch's context has {tokens} tokens, not a multiple of the stored {values.shape[1]}; "
                  "this conditioning was combined in a way the K/V swap cannot follow.")
    v = _on(values, like)
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


def _separate_kv(network, module, previous):
    """``forward`` of a layer whose K and V are separate projections of the embedded text (Wan): V of the
    mapped chunks from their Values context. Image-to-video layers also attend, first, to the CLIP-vision
    tokens placed before the text in their context (``context_img_len`` of them), with their own projections."""
    import comfy.ldm.wan.model as wan_model  # its attention function, looked up at call time as the layer does

    image_branch = network.family.kv.image_branch
    embedder = network.attribute(network.family.kv.embedder)

    def original(x, context, *args, **kwargs):
        if previous is not None:
            return previous(x, context, *args, **kwargs)
        return type(module).forward(module, x, context, *args, **kwargs)

    def forward(x, context, *args, **kwargs):
        options = kwargs.get("transformer_options", args[-1] if args and isinstance(args[-1], dict) else {})
        mapping, uuids = options.get(MAP_KEY), options.get("uuids")
        if not mapping or not uuids:
            return original(x, context, *args, **kwargs)
        images = (args[0] if args else kwargs.get("context_img_len")) if image_branch else 0
        text = context[:, images:] if image_branch else context
        cache = options.setdefault(EMBED_KEY, {})

        def embed(u, values):
            if u not in cache:
                cache[u] = embedder(_on(values, text))
            return cache[u]

        values = _replace_chunks(text, uuids, mapping, embed)
        if values is None:
            return original(x, context, *args, **kwargs)
        q = module.norm_q(module.q(x))
        k = module.norm_k(module.k(text))
        v = module.v(values)
        if image_branch:  # as the layer computes it: the image tokens' attention first
            image = context[:, :images]
            k_img, v_img = module.norm_k_img(module.k_img(image)), module.v_img(image)
            img_x = wan_model.optimized_attention(q, k_img, v_img, heads=module.num_heads, transformer_options=options,
                                                  low_precision_attention=False)
        out = wan_model.optimized_attention(q, k, v, heads=module.num_heads, transformer_options=options)
        return module.o(out + img_x if image_branch else out)

    return forward


def pixart_apply_model(executor, x, t, c_concat, c_crossattn, control, transformer_options, **kwargs):
    """PixArt hands its blocks no ``transformer_options``: keep this call's for them, in this thread."""
    previous = _OPTIONS.enter(transformer_options)
    try:
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
    finally:
        _OPTIONS.leave(previous)


def _fused_kv(network, module, previous):
    """``forward`` of a layer whose K and V come from one ``kv_linear`` of the embedded caption (PixArt): K
    from the layer's context, V from the mapped chunks' embedded Values context."""
    import comfy.ldm.pixart.blocks as pixart_blocks  # its attention function, looked up at call time as the block does

    embedder, net = network.attribute(network.family.kv.embedder), network.net

    def original(x, cond, mask=None):
        if previous is not None:
            return previous(x, cond, mask)
        return type(module).forward(module, x, cond, mask)

    def forward(x, cond, mask=None):
        options = _OPTIONS.current or {}
        mapping, uuids = options.get(MAP_KEY), options.get("uuids")
        b, _, c = x.shape
        if not mapping or not uuids or mask is not None or cond.shape[1] % b:
            return original(x, cond, mask)
        cache = options.setdefault(EMBED_KEY, {})

        def embed(u, values):
            if u not in cache:
                cache[u] = embedder(_on(values, cond), net.training)
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


_LAYER_PATCHES = {"separate": _separate_kv, "fused": _fused_kv}


def patch_model(model):
    """A clone of ``model`` with the wrappers and the attn2 patch or the layers' object patches (applying
    twice replaces, adds nothing). A model whose description does not allow the swap is refused."""
    import comfy.patcher_extension as pe

    network = check_model(model)
    kind = network.family.kv.kind
    swap = KVSwap()
    wrappers = {pe.WrappersMP.CALC_COND_BATCH: swap.calc_cond_batch}
    if network.family.layers.reached == fam.NO_OPTIONS:
        wrappers[pe.WrappersMP.APPLY_MODEL] = pixart_apply_model
    m = swap.install(model, wrappers)
    if kind == "value_context":
        set_attn2_patch(m, kv_attn2_patch, WRAPPER_KEY)
        return m
    make = _LAYER_PATCHES[kind]
    for path in network.layers:
        chain_object_patch(m, f"diffusion_model.{path}.forward",
                           lambda previous, module=network.layer(path): make(network, module, previous), WRAPPER_KEY)
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
                "SD2.x, SDXL), PixArt and Wan (text- and image-to-video)."
            ),
            inputs=[io.Model.Input("model", tooltip="The model to sample with. It is cloned, never modified.")],
            outputs=[io.Model.Output("patched_model", display_name="model",
                                     tooltip="The same model with the K/V swap hook; connect it to your sampler.")],
        )

    @classmethod
    def execute(cls, model) -> io.NodeOutput:
        return io.NodeOutput(patch_model(model))


def check_model(model):
    """The model's described network, when its Keys and Values can be split; else the refusal with the
    family's reason (a Keys-only / Values-only swap would silently act on both or on neither)."""
    return require(model, fam.KV_PATCH, NODE, "EOS Swap K/V Patch",
                   f"It works with {supported(fam.KV_PATCH)} models; remove it and use EOS Swap Conditioning with "
                   "apply_to 'keys and values' on this model.")
