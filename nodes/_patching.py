"""The one way ShapeFirst patches a MODEL: clone, keyed wrappers, de-duplicated attention patches,
chained overrides, and a per-run recorder.

* ``patched_clone(model, key, wrappers)``: a clone with keyed wrappers; each key is removed before
  it is added, so applying a node twice replaces its wrappers and never stacks them.
* ``set_attn2_patch(model, patch, key)``: an attn2 patch tagged with ``key``; an earlier patch with
  the same key is replaced (ComfyUI deep-copies ``model_options`` on clone, so identity alone
  cannot tell two copies of the same patch apart).
* ``chain_override(model, make)`` / ``chain_object_patch(model, name, make)``: install a new
  ``optimized_attention_override`` or object patch that receives the one already there (another
  pack's, or an earlier ShapeFirst node's) and calls it, instead of claiming the slot.
* ``RunRecorder``: base class for state that belongs to one sampling run. Its SAMPLER_SAMPLE wrapper
  calls ``begin`` before the run and ``finish`` in ``finally`` (also after an interruption or an
  error), wraps the step callback, and marks the run complete only when sampling returned.

Shaped after core's EasyCache (state cloned per run, restored in finally) and AnimateDiff-Evolved's
ModelPatcherHelper (one helper owns the keys it adds).
"""

from __future__ import annotations

from ._common import KEY_PREFIX

OVERRIDE_KEY = "optimized_attention_override"
PATCH_KEY_ATTR = "shapefirst_key"


def wrapper_key(name: str) -> str:
    """The namespaced key for a ShapeFirst wrapper, e.g. ``shapefirst.truncated_cfg``."""
    return name if name.startswith(KEY_PREFIX) else f"{KEY_PREFIX}{name}"


def set_wrapper(model, kind: str, key: str, fn) -> None:
    """Replace (never stack) the wrapper of type ``kind`` stored under ``key`` on a clone."""
    model.remove_wrappers_with_key(kind, key)
    model.add_wrapper_with_key(kind, key, fn)


def set_callback(model, kind: str, key: str, fn) -> None:
    """Replace (never stack) the callback of type ``kind`` stored under ``key`` on a clone."""
    model.remove_callbacks_with_key(kind, key)
    model.add_callback_with_key(kind, key, fn)


def patched_clone(model, key: str, wrappers: dict | None = None):
    """A clone of ``model`` with ``wrappers`` ({WrappersMP type: fn}) under ``key``; ``model`` is untouched."""
    m = model.clone()
    for kind, fn in (wrappers or {}).items():
        set_wrapper(m, kind, key, fn)
    return m


def set_attn2_patch(model, patch, key: str) -> None:
    """Add ``patch`` to the clone's attn2 patches, replacing an earlier one with the same ``key``."""
    setattr(patch, PATCH_KEY_ATTR, key)
    to = model.model_options.setdefault("transformer_options", {})
    patches = to.setdefault("patches", {})
    kept = [p for p in patches.get("attn2_patch", []) if getattr(p, PATCH_KEY_ATTR, None) != key]
    patches["attn2_patch"] = kept + [patch]  # a new list: never mutate one an upstream clone holds


def chain_override(model, make, key: str) -> None:
    """Install ``make(previous)`` as the clone's ``optimized_attention_override``.

    ``previous`` is the override already there (or None); the new one must call it (``previous(func,
    *args, **kwargs)``) instead of ``func`` when it is set. An earlier override with the same ``key``
    (this node applied twice) is unwrapped first, so the chain never grows with repeated application.
    """
    to = model.model_options.setdefault("transformer_options", {})
    previous = to.get(OVERRIDE_KEY)
    while previous is not None and getattr(previous, PATCH_KEY_ATTR, None) == key:
        previous = getattr(previous, "shapefirst_previous", None)
    fn = make(previous)
    setattr(fn, PATCH_KEY_ATTR, key)
    fn.shapefirst_previous = previous
    to[OVERRIDE_KEY] = fn


def chain_object_patch(model, name: str, make, key: str) -> None:
    """Object-patch ``name`` with ``make(previous)``, where ``previous`` is the patch already there
    (None: the original attribute). Re-applying the same ``key`` replaces, as for overrides."""
    previous = model.object_patches.get(name)
    while previous is not None and getattr(previous, PATCH_KEY_ATTR, None) == key:
        previous = getattr(previous, "shapefirst_previous", None)
    fn = make(previous)
    setattr(fn, PATCH_KEY_ATTR, key)
    fn.shapefirst_previous = previous
    model.add_object_patch(name, fn)


class RunRecorder:
    """Per-run state around WrappersMP.SAMPLER_SAMPLE.

    Subclasses implement ``begin(guider, sigmas, extra_args, noise)`` (set up this run's state) and
    ``finish(completed)`` (publish or drop it; runs in ``finally``), and may override
    ``on_step(step, x0, x, total_steps)`` (the sampler's step callback, before the user's) and
    ``on_result(samples)``. ``active`` is True only while a run is under way;
    ``last_run_complete`` tells whether the last run returned normally.
    """

    def __init__(self, key: str):
        self.key = wrapper_key(key)
        self.active = False
        self.runs_started = 0
        self.last_run_complete = False

    # -- to implement -------------------------------------------------------------------------
    def begin(self, guider, sigmas, extra_args, noise) -> None:
        pass

    def finish(self, completed: bool) -> None:
        pass

    def on_step(self, step, x0, x, total_steps) -> None:
        pass

    def on_result(self, samples) -> None:
        """Called with the sampler's output when the run returned normally (before ``finish``)."""

    # -- the wrapper ----------------------------------------------------------------------------
    def sampler_sample(self, executor, guider, sigmas, extra_args, callback, noise, *args, **kwargs):
        self.runs_started += 1
        self.last_run_complete = False
        self.begin(guider, sigmas, extra_args, noise)
        self.active = True
        completed = False

        def step_callback(step, x0, x, total_steps):
            self.on_step(step, x0, x, total_steps)
            if callback is not None:
                return callback(step, x0, x, total_steps)

        try:
            out = executor(guider, sigmas, extra_args, step_callback, noise, *args, **kwargs)
            self.on_result(out)
            completed = True
            return out
        finally:
            self.active = False
            self.last_run_complete = completed
            self.finish(completed)

    def install(self, model, wrappers: dict | None = None):
        """A clone of ``model`` with this recorder's SAMPLER_SAMPLE wrapper plus ``wrappers``, all under its key."""
        import comfy.patcher_extension as pe

        return patched_clone(model, self.key, {pe.WrappersMP.SAMPLER_SAMPLE: self.sampler_sample, **(wrappers or {})})
