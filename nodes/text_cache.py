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

Which layers: the text cross-attention layers of the model's description (``shapefirst/families.py``;
UNets, PixArt, Wan); each layer's ``forward`` is replaced through a chained object patch, so no attn2
patch is needed. Families whose description refuses it (joint attention: text and image tokens share
one softmax and every block updates the text tokens from the image) are refused with that reason. A
layer whose attention another pack replaces (``attn2`` replace patches) or whose forward another
object patch took over is still wrapped, and computes through that code when it computes. When a run
starts inside the tail (nothing recorded yet) a layer computes its first tail call and reuses that one.
Whether an evaluation is in the tail is what the truncation patch decided for it (``TAIL_KEY`` in the
call's transformer_options): the cache reads no sigma.

The exact part (``keys_values``, and included with ``tail_output`` where the description allows it:
UNet cross-attention): a layer computes its text keys and values (``to_k``/``to_v`` of the context)
once per run and distinct context instead of at every step. A model call's context is known by the
conditionings its batch chunks come from (their sampling uuids, in batch order) and its shape: no
tensor is read back per call. Each later context under the same key is compared with the first one on
the device, and the comparisons are read once, when the run ends: should another node have changed a
conditioning's text inside the model call, the run is refused there with the fix. Otherwise the
outputs are bit-identical to the uncached layer's.

State of a model call (tail or not, which branch each batch chunk is, the call's context) is per thread
(``CallState``): ComfyUI's multi-GPU CFG splitting runs the two branches of an evaluation at once.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from ..shapefirst import families as fam
from ._common import KEY_PREFIX, LOGGER, ShapeFirstInputError
from ._patching import CallState, RunRecorder, chain_object_patch
from .model_families import require
from .truncated_cfg_patch import TAIL_KEY

WRAPPER_KEY = f"{KEY_PREFIX}text_cache"
MODE_KV, MODE_TAIL = "keys_values", "tail_output"
_KV_ENTRIES = 8  # distinct text contexts per run (guided batch, tail batch, split or scheduled prompts)


@dataclass
class _Call:
    """One model call under way in one thread."""

    reuse: bool | None  # in the tail (reuse recorded outputs), guided (record them), None: neither
    keys: list  # (branch, ordinal) per batch chunk
    context_key: tuple | None  # the conditionings of the batch chunks
    context: tuple | None = None  # (the context tensor handed to the network, its number in the run)


class TextCache(RunRecorder):
    """Per-run state of one patched model: the recorded outputs and the accounting."""

    def __init__(self, family: str, layers: list[str], tail: bool, exact: bool, node: str):
        super().__init__(WRAPPER_KEY)
        self.family, self.layers, self.tail, self.exact, self.node = family, layers, tail, exact, node
        self._call = CallState()
        self._lock = threading.Lock()
        self._clear()

    def _clear(self):
        self._store: dict = {}  # (layer, branch, ordinal) -> tensor of that branch's rows
        self._kv: dict = {}  # (layer, context number) -> (k, v): the text's keys and values
        self._numbers: dict = {}  # (conditionings, shape, dtype, device) -> context number
        self._first: dict = {}  # context number -> the first context seen under it
        self._changed: dict = {}  # device -> a device flag: some later context differed from its first
        self._call.clear()
        self.computed = self.reused = 0  # layer calls in the current/last run

    # -- run lifecycle (RunRecorder) ------------------------------------------------------------
    def begin(self, guider, sigmas, extra_args, noise) -> None:
        self._clear()

    def finish(self, completed: bool) -> None:
        changed = [flag for flag in self._changed.values()]
        reused, computed = self.reused, self.computed
        self._clear()  # nothing outlives the run
        if reused:
            LOGGER.info("TruncatedCFG text cache (%s): %d cross-attention calls reused, %d computed",
                        self.family, reused, computed)
        if completed and any(bool(flag) for flag in changed):  # one read per run, after sampling
            raise ShapeFirstInputError(
                self.node, "text_cache 'keys_values': a conditioning's text context changed inside the model "
                           "calls of this run (another node alters it there), so keys and values projected at "
                           "an earlier step did not match it. Set text_cache to 'off' with that node.")

    # -- wrappers ---------------------------------------------------------------------------------
    def apply_model(self, executor, x, t, c_concat, c_crossattn, control, transformer_options, **kwargs):
        if not self.active:
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        seen: dict = {}
        keys = []
        for branch in transformer_options.get("cond_or_uncond") or [0]:
            keys.append((branch, seen.get(branch, 0)))
            seen[branch] = seen.get(branch, 0) + 1
        tail = transformer_options.get(TAIL_KEY) if self.tail else None
        uuids = transformer_options.get("uuids")
        previous = self._call.enter(_Call(None if tail is None else bool(tail), keys,
                                          tuple(uuids) if self.exact and uuids else None))
        try:
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        finally:
            self._call.leave(previous)

    def diffusion_model(self, executor, x, timesteps, context=None, *args, **kwargs):
        """Number the call's text context by the conditionings it comes from (no read of the tensor)."""
        call = self._call.current
        if not self.active or context is None or call is None or call.context_key is None:
            return executor(x, timesteps, context, *args, **kwargs)
        outer, call.context = call.context, (context, self._number(call.context_key, context))
        try:
            return executor(x, timesteps, context, *args, **kwargs)
        finally:
            call.context = outer

    def _number(self, conditionings: tuple, context) -> int | None:
        key = (conditionings, tuple(context.shape), context.dtype, context.device)
        with self._lock:
            number = self._numbers.get(key)
            if number is None:
                if len(self._numbers) >= _KV_ENTRIES:
                    return None
                number = self._numbers[key] = len(self._numbers)
                self._first[number] = context
                return number
            first = self._first[number]
        if first is not context:  # the same conditionings: checked on the device, read when the run ends
            differs = (first != context).any()
            with self._lock:
                flag = self._changed.get(context.device)
                self._changed[context.device] = differs if flag is None else flag | differs
        return number

    # -- exact: the text's keys and values are computed once per distinct context ----------------
    def cross_attention(self, module, layer: str, x, context=None, value=None, mask=None, transformer_options={}):
        """The UNet cross-attention layer's forward with to_k/to_v of a context already seen in this run reused.

        Bit-identical: the projections are looked up only for the very context tensor the model call
        received, numbered by the conditionings it is made of; they were computed by the same GEMM
        from an equal input (checked when the run ends).
        """
        if context is None or value is not None or mask is not None:
            return type(module).forward(module, x, context, value, mask, transformer_options)
        import comfy.ldm.modules.attention as attention

        q = module.to_q(x)
        call = self._call.current
        current = call.context if call is not None else None
        if current is None or context is not current[0] or current[1] is None:
            k, v = module.to_k(context), module.to_v(context)  # a context this run has not numbered: compute
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
        exact_kv = previous is None and self.exact

        def compute(x, *args, **kwargs):
            if previous is not None:
                return previous(x, *args, **kwargs)
            if exact_kv and not args and cache.active:
                return cache.cross_attention(module, layer, x, **kwargs)
            return type(module).forward(module, x, *args, **kwargs)

        def forward(x, *args, **kwargs):
            call = cache._call.current
            if call is None or call.reuse is None:  # outside a model call, or the exact part alone
                return compute(x, *args, **kwargs)
            keys = call.keys
            rows, rest = divmod(int(x.shape[0]), len(keys))
            if rest:
                return compute(x, *args, **kwargs)
            if call.reuse:
                found = [cache._store.get((layer,) + k) for k in keys]
                want = (rows,) + tuple(x.shape[1:])
                if all(f is not None and tuple(f.shape) == want and f.dtype == x.dtype for f in found):
                    with cache._lock:
                        cache.reused += 1
                    return _fresh(found, x.device)
            out = compute(x, *args, **kwargs)
            with cache._lock:
                cache.computed += 1
            if tuple(out.shape) == tuple(x.shape):  # batch-first output with the query's shape
                for i, k in enumerate(keys):
                    if not call.reuse or (layer,) + k not in cache._store:  # in the tail: first computed wins
                        cache._store[(layer,) + k] = out[i * rows:(i + 1) * rows]
            return out

        return forward


def _fresh(parts, device):
    """A new tensor from the recorded parts on ``device`` (never the stored tensor: callers may add to it in
    place; multi-GPU: a part may have been recorded on another device)."""
    import torch

    parts = [p if p.device == device else p.to(device, non_blocking=True) for p in parts]
    return parts[0].clone() if len(parts) == 1 else torch.cat(parts)


def attach(model_patcher, mode: str, node: str) -> None:
    """Attach the text cache in ``mode`` (``keys_values``: the exact part alone; ``tail_output``: reuse in
    the tail, with the exact part where the family allows it) to ``model_patcher`` (a clone the caller
    made, with truncated guidance attached), in place. Applying twice replaces the earlier attachment.
    A model the mode does not apply to is refused with its family's reason, naming ``node``."""
    import comfy.patcher_extension as pe

    feature = fam.KEYS_VALUES if mode == MODE_KV else fam.TEXT_CACHE
    network = require(model_patcher, feature, node, f"text_cache '{mode}'", "Set text_cache to 'off'.")
    exact = network.why_not(fam.KEYS_VALUES) is None
    cache = TextCache(network.family.name, network.layers, mode == MODE_TAIL, exact, node)
    wrappers = {pe.WrappersMP.APPLY_MODEL: cache.apply_model}
    if exact:
        wrappers[pe.WrappersMP.DIFFUSION_MODEL] = cache.diffusion_model
    else:
        model_patcher.remove_wrappers_with_key(pe.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY)
    cache.attach(model_patcher, wrappers)
    for layer in cache.layers:
        chain_object_patch(model_patcher, f"diffusion_model.{layer}.forward",
                           lambda previous, module=network.layer(layer), name=layer:
                           cache.make_forward(module, name, previous), WRAPPER_KEY)
