"""Opt-in text-branch cache for the unguided tail of truncated guidance (an approximation).

In the tail of truncated guidance (eq. 9) only one branch is computed, and its text input never
changes. This cache goes one step further: each cross-attention layer's output is recorded, per
branch, at every evaluation outside the tail (so the last one before the tail wins), and in the
tail the layer returns the recorded output of the same branch instead of computing its query
projection, attention and output projection. The tail's prediction thus keeps what the text
contributed at the end of the guidance window (the paper's finding: the text has done its work by
then) and spends nothing more on it.

Which output is reused: the kept branch's own. With the ``uncond`` tail the reused output is the
empty prompt's, so the tail stays text-free as eq. 9 wants; with the ``cond`` tail it is the
prompt's. (T-GATE instead reuses the mean of the two branches' outputs and runs the prompt
branch: that re-adds half of the unconditional signal to a ``cond`` tail and half of the prompt
to an ``uncond`` one, so it would not be an approximation of either eq. 9 tail.)

Supported: UNets (SD1.x, SD2.x, SDXL; every ``BasicTransformerBlock.attn2``), PixArt (each
block's ``cross_attn``) and Wan (each block's ``cross_attn``); the layer's ``forward`` is replaced
through a ModelPatcher object patch, so no attn2 patch is needed and DiTs without attn2 patches
work the same way. Joint-attention models (SD3, Flux, Chroma, Qwen-Image, Lumina, AuraFlow,
HunyuanVideo, HiDream, OmniGen 2) have nothing to cache: text and image tokens share one softmax
and the text tokens are themselves updated by every block from the image, so the text's share of a
block's output cannot be kept without recomputing the attention; ``attach`` refuses them.
A layer whose attention another pack replaces (``attn2`` replace patches) or whose forward another
object patch took over is still wrapped, and computes through that code when it computes.
When a run starts inside the tail (nothing recorded yet) a layer computes its first tail call and
reuses that one.

The exact part (``attach_exact``, and included in ``attach``): a UNet cross-attention computes its
text keys and values (``to_k``/``to_v`` of the context) once per run and distinct context instead of
at every step. The context of each model call is compared by value, once per call, with the ones
seen in the run; a changed context (a prompt switched by timestep range) is computed afresh, and
the outputs are bit-identical to the uncached layer's.
"""

from __future__ import annotations

from ._common import KEY_PREFIX, LOGGER

WRAPPER_KEY = f"{KEY_PREFIX}text_cache"
_MARK = "_shapefirst_text_cache_previous"  # attribute on our forward: the forward it wrapped
_KV_ENTRIES = 8  # distinct text contexts per run (guided batch, tail batch, split or scheduled prompts)

TOOLTIP = (
    "Text cache for the unguided tail (approximation). From the end of the guidance window on, each "
    "cross-attention layer reuses the output it gave for the kept branch at the last guided step instead "
    "of computing it again: the tail skips the cross-attention work as well as the second branch. The "
    "steps before the tail are unchanged (bit-identical); the tail differs slightly from exact eq. 9. "
    "Off = exact eq. 9. Works with SD1.x, SD2.x, SDXL, PixArt and Wan; not with joint-attention models "
    "(SD3, Flux, Qwen-Image, Lumina), where the text cannot be separated from the image attention.")

_JOINT = {  # module of the diffusion model's class -> family (joint text-image attention)
    "comfy.ldm.modules.diffusionmodules.mmdit": "SD3",
    "comfy.ldm.flux": "Flux",
    "comfy.ldm.chroma_radiance": "Chroma Radiance",
    "comfy.ldm.chroma": "Chroma",
    "comfy.ldm.qwen_image": "Qwen-Image",
    "comfy.ldm.lumina": "Lumina",
    "comfy.ldm.aura": "AuraFlow",
    "comfy.ldm.hunyuan_video": "HunyuanVideo",
    "comfy.ldm.hidream": "HiDream",
    "comfy.ldm.omnigen": "OmniGen 2",
}
_JOINT_WHY = ("joint attention: text and image tokens share one softmax and every block updates the text "
              "tokens from the image, so no layer's text contribution can be reused without recomputing the "
              "attention")


def _not_available(family: str, why: str) -> ValueError:
    return ValueError(f"Truncated CFG: text_cache is not available for {family} ({why}); set text_cache to off")


def cross_attention_layers(model_patcher) -> tuple[str, list[str]]:
    """(family, dotted paths of the cross-attention modules under ``diffusion_model``), or ValueError."""
    dm = model_patcher.get_model_object("diffusion_model")
    module = type(dm).__module__
    for prefix, family in _JOINT.items():
        if module == prefix or module.startswith(prefix + "."):
            raise _not_available(family, _JOINT_WHY)
    from comfy.ldm.modules.attention import BasicTransformerBlock

    if module.startswith("comfy.ldm.pixart.") or module.startswith("comfy.ldm.wan."):
        family = "PixArt" if "pixart" in module else "Wan"
        layers = [name for name, m in dm.named_modules() if name.endswith(".cross_attn") and
                  name.startswith("blocks.") and name.count(".") == 2]
    else:
        family = "UNet"
        layers = [f"{name}.attn2" if name else "attn2" for name, m in dm.named_modules()
                  if isinstance(m, BasicTransformerBlock) and m.attn2 is not None and not m.switch_temporal_ca_to_sa]
    if not layers:
        raise _not_available(type(dm).__name__, "no cross-attention layers found; supported: SD1.x, SD2.x, SDXL, "
                                                "PixArt, Wan")
    return family, layers


class TextCache:
    """Per-run state of one patched model: the recorded outputs and the accounting."""

    def __init__(self, is_tail, family: str, layers: list[str]):
        self.is_tail, self.family, self.layers = is_tail, family, layers
        self.active = False
        self._store: dict = {}  # (layer, branch, ordinal) -> tensor of that branch's rows
        self._kv: dict = {}  # (layer, context number) -> (k, v): the text's keys and values
        self._contexts: list = []  # the distinct text contexts of the run, numbered by position
        self._ctx = None  # (context tensor, its number) during a model call
        self._call = None  # (reuse?, [(branch, ordinal) per batch chunk]) during a model call
        self.computed = self.reused = 0  # layer calls in the current/last run

    # -- run lifecycle ----------------------------------------------------------------------------
    def sampler_sample(self, executor, *args, **kwargs):
        self._store, self._kv, self._contexts, self._ctx, self._call = {}, {}, [], None, None
        self.computed = self.reused = 0
        self.active = True
        try:
            return executor(*args, **kwargs)
        finally:
            self._store, self._kv, self._contexts, self._ctx, self._call = {}, {}, [], None, None
            self.active = False  # nothing outlives the run
            if self.reused:
                LOGGER.info("TruncatedCFG text cache (%s): %d cross-attention calls reused, %d computed",
                            self.family, self.reused, self.computed)

    def apply_model(self, executor, x, t, c_concat, c_crossattn, control, transformer_options, **kwargs):
        if not self.active:
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        chunks = list(transformer_options.get("cond_or_uncond") or [0])
        seen: dict = {}
        keys = []
        for branch in chunks:
            keys.append((branch, seen.get(branch, 0)))
            seen[branch] = seen.get(branch, 0) + 1
        previous = self._call
        self._call = (None if self.is_tail is None else bool(self.is_tail(float(t.flatten()[0]))), keys)
        try:
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        finally:
            self._call = previous

    def diffusion_model(self, executor, x, timesteps, context=None, *args, **kwargs):
        """Give each distinct text context of the run a number, once per model call (one comparison)."""
        if not self.active or context is None:
            return executor(x, timesteps, context, *args, **kwargs)
        found = None
        for i, c in enumerate(self._contexts):
            if c.shape == context.shape and c.dtype == context.dtype and c.device == context.device and \
                    _equal(c, context):
                found = i
                break
        if found is None and len(self._contexts) < _KV_ENTRIES:
            found = len(self._contexts)
            self._contexts.append(context)
        previous, self._ctx = self._ctx, (context, found)
        try:
            return executor(x, timesteps, context, *args, **kwargs)
        finally:
            self._ctx = previous

    # -- exact: the text's keys and values are computed once per distinct context ----------------
    def cross_attention(self, module, layer: str, x, context=None, value=None, mask=None, transformer_options={}):
        """CrossAttention.forward with to_k/to_v of a context already seen in this run reused.

        Bit-identical: the projections are looked up only for the very context tensor the model call
        received, which ``diffusion_model`` matched (shape, dtype and every value) to one seen before
        in this run; they were computed by the same GEMM from an equal input.
        """
        if context is None or value is not None or mask is not None:
            return type(module).forward(module, x, context, value, mask, transformer_options)
        import comfy.ldm.modules.attention as attention

        q = module.to_q(x)
        current = self._ctx
        if current is None or context is not current[0] or current[1] is None:
            k, v = module.to_k(context), module.to_v(context)  # a context this run has not fixed: compute
        else:
            kv = self._kv.get((layer, current[1]))
            if kv is None:
                kv = self._kv[(layer, current[1])] = (module.to_k(context), module.to_v(context))
            k, v = kv
        out = attention.optimized_attention(q, k, v, module.heads, attn_precision=module.attn_precision,
                                            transformer_options=transformer_options)
        return module.to_out(out)

    # -- the layer patch (a closure: ComfyUI copies model_options on clone, object patches are shared)
    def make_forward(self, module, layer: str, previous=None):
        cache = self
        exact_kv = previous is None and _is_core_cross_attention(module)

        def compute(x, *args, **kwargs):
            if previous is not None:
                return previous(x, *args, **kwargs)
            if exact_kv and not args and cache.active:
                return cache.cross_attention(module, layer, x, **kwargs)
            return type(module).forward(module, x, *args, **kwargs)

        def forward(x, *args, **kwargs):
            call = cache._call
            if call is None or call[0] is None:  # outside a model call, or the exact part alone
                return compute(x, *args, **kwargs)
            reuse, keys = call
            rows, rest = divmod(int(x.shape[0]), len(keys))
            if rest:
                return compute(x, *args, **kwargs)
            if reuse:
                found = [cache._store.get((layer,) + k) for k in keys]
                want = (rows,) + tuple(x.shape[1:])
                if all(f is not None and tuple(f.shape) == want and f.dtype == x.dtype for f in found):
                    cache.reused += 1
                    return _fresh(found)
            out = compute(x, *args, **kwargs)
            cache.computed += 1
            if tuple(out.shape) == tuple(x.shape):  # batch-first output with the query's shape
                for i, k in enumerate(keys):
                    if not reuse or (layer,) + k not in cache._store:  # in the tail: first computed wins
                        cache._store[(layer,) + k] = out[i * rows:(i + 1) * rows]
            return out

        setattr(forward, _MARK, previous)
        return forward


def _equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def _is_core_cross_attention(module) -> bool:
    from comfy.ldm.modules.attention import CrossAttention

    return type(module).forward is CrossAttention.forward


def _fresh(parts):
    """A new tensor from the recorded parts (never the stored tensor: callers may add to it in place)."""
    import torch

    return parts[0].clone() if len(parts) == 1 else torch.cat(parts)


def attach(model_patcher, is_tail) -> None:
    """Attach the text cache to ``model_patcher`` (a clone the caller made), in place.

    ``is_tail(sigma: float) -> bool`` says whether a model evaluation at that sigma is in the
    unguided tail of the current run. Applying twice replaces the earlier attachment. Raises
    ValueError for models without a supported cross-attention (joint-attention DiTs). Includes
    ``attach_exact``'s reuse of the text keys and values.
    """
    family, layers = cross_attention_layers(model_patcher)
    _install(model_patcher, TextCache(is_tail, family, layers))


def attach_exact(model_patcher) -> bool:
    """Only the exact part, in place: each UNet cross-attention computes the keys and values of a
    text context once per run instead of once per step (bit-identical outputs). Returns False, and
    attaches nothing, for models it does not apply to (DiTs, joint attention)."""
    try:
        family, layers = cross_attention_layers(model_patcher)
    except ValueError:
        return False
    if family != "UNet":
        return False
    _install(model_patcher, TextCache(None, family, layers))
    return True


def _install(model_patcher, cache: TextCache) -> None:
    import comfy.patcher_extension as pe

    dm = model_patcher.get_model_object("diffusion_model")
    for kind, fn in ((pe.WrappersMP.SAMPLER_SAMPLE, cache.sampler_sample),
                     (pe.WrappersMP.APPLY_MODEL, cache.apply_model),
                     (pe.WrappersMP.DIFFUSION_MODEL, cache.diffusion_model)):
        model_patcher.remove_wrappers_with_key(kind, WRAPPER_KEY)  # applying twice replaces, never stacks
        model_patcher.add_wrapper_with_key(kind, WRAPPER_KEY, fn)
    for layer in cache.layers:
        name = f"diffusion_model.{layer}.forward"
        previous = model_patcher.object_patches.get(name)
        while previous is not None and hasattr(previous, _MARK):  # ours from an earlier attach: unwrap it
            previous = getattr(previous, _MARK)
        module = dm.get_submodule(layer)
        model_patcher.add_object_patch(name, cache.make_forward(module, layer, previous))
