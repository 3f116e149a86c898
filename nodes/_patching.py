"""The one way ShapeFirst patches a MODEL: clone, keyed wrappers, de-duplicated attention patches,
chained overrides and object patches, per-thread call state, and a per-run recorder.

* ``patched_clone(model, key, wrappers)``: a clone with keyed wrappers; each key is removed before
  it is added, so applying a node twice replaces its wrappers and never stacks them.
* ``set_attn2_patch(model, patch, key)``: an attn2 patch tagged with ``key``; an earlier patch with
  the same key is replaced (ComfyUI deep-copies ``model_options`` on clone, so identity alone
  cannot tell two copies of the same patch apart).
* ``chain_override(model, make, key)`` / ``chain_object_patch(model, name, make, key)``: install a new
  ``optimized_attention_override`` or object patch that receives the one already there (another
  pack's, or an earlier ShapeFirst node's) and calls it, instead of claiming the slot. An earlier copy
  of the same key is unwrapped when it is outermost; when another pack's patch wraps it, it stays in
  the chain but acts only where no copy of its key runs further out in the same call
  (``first_in_call``): applying a node twice never acts twice.
* ``CallState``: what one model call under way has set up (which branch each batch chunk is, a
  flagged layer...), visible to the thread that runs the call only. ComfyUI's multi-GPU CFG
  splitting runs the calls of one evaluation on several threads at once.
* ``RunRecorder``: base class for state that belongs to one sampling run. Its SAMPLER_SAMPLE wrapper
  calls ``begin`` before the run and ``finish`` in ``finally`` (also after an interruption or an
  error), wraps the step callback, and marks the run complete only when sampling returned.

Shaped after core's EasyCache (state cloned per run, restored in finally) and AnimateDiff-Evolved's
ModelPatcherHelper (one helper owns the keys it adds).
"""

from __future__ import annotations

import threading

from ._common import KEY_PREFIX

OVERRIDE_KEY = "optimized_attention_override"
PATCH_KEY_ATTR = "shapefirst_key"
PREVIOUS_ATTR = "shapefirst_previous"


def wrapper_key(name: str) -> str:
    """The namespaced key for a ShapeFirst wrapper, e.g. ``shapefirst.truncated_cfg``."""
    return name if name.startswith(KEY_PREFIX) else f"{KEY_PREFIX}{name}"


def set_wrapper(model, kind: str, key: str, fn) -> None:
    """Replace (never stack) the wrapper of type ``kind`` stored under ``key`` on a clone."""
    model.remove_wrappers_with_key(kind, key)
    model.add_wrapper_with_key(kind, key, fn)


def set_wrappers(model, key: str, wrappers: dict) -> None:
    """``set_wrapper`` for each {WrappersMP type: fn} of ``wrappers``, in place on a clone."""
    for kind, fn in wrappers.items():
        set_wrapper(model, kind, key, fn)


def patched_clone(model, key: str, wrappers: dict | None = None):
    """A clone of ``model`` with ``wrappers`` ({WrappersMP type: fn}) under ``key``; ``model`` is untouched."""
    m = model.clone()
    set_wrappers(m, key, wrappers or {})
    return m


def set_attn2_patch(model, patch, key: str) -> None:
    """Add ``patch`` to the clone's attn2 patches, replacing an earlier one with the same ``key``."""
    setattr(patch, PATCH_KEY_ATTR, key)
    to = model.model_options.setdefault("transformer_options", {})
    patches = to.setdefault("patches", {})
    kept = [p for p in patches.get("attn2_patch", []) if getattr(p, PATCH_KEY_ATTR, None) != key]
    patches["attn2_patch"] = kept + [patch]  # a new list: never mutate one an upstream clone holds


# -- calls under way, per thread ---------------------------------------------------------------------------

class CallState:
    """A value set up for one model call (or one layer call) under way, per thread.

    ``enter(value)`` sets it for the calling thread and returns what was there, ``leave(previous)``
    puts that back (in ``finally``); ``current`` reads it. ``clear()`` drops every thread's value
    (at the start and end of a run).
    """

    def __init__(self):
        self._local = threading.local()

    @property
    def current(self):
        return getattr(self._local, "value", None)

    def enter(self, value):
        previous = self.current
        self._local.value = value
        return previous

    def leave(self, previous) -> None:
        self._local.value = previous

    def clear(self) -> None:
        self._local = threading.local()


_ACTIVE = threading.local()  # .keys: the patch keys acting in this thread's call


def first_in_call(key) -> bool:
    """True, and ``key`` is marked active in this thread, when no copy of ``key`` acts further out in the
    call under way; pair a True with ``leave_call(key)`` in ``finally``. Keys are per slot (a patch key and
    the override or the object patched): one node's override still acts inside its own object patch."""
    keys = getattr(_ACTIVE, "keys", None)
    if keys is None:
        keys = _ACTIVE.keys = set()
    if key in keys:
        return False
    keys.add(key)
    return True


def leave_call(key) -> None:
    _ACTIVE.keys.discard(key)


def _unwrapped(previous, key: str):
    """The chain below ``previous`` without our outermost copies of ``key`` (re-applying replaces them)."""
    while previous is not None and getattr(previous, PATCH_KEY_ATTR, None) == key:
        previous = getattr(previous, PREVIOUS_ATTR, None)
    return previous


def _tagged(fn, key: str, previous):
    setattr(fn, PATCH_KEY_ATTR, key)
    setattr(fn, PREVIOUS_ATTR, previous)
    return fn


def chain_override(model, make, key: str) -> None:
    """Install ``make(previous, key)`` as the clone's ``optimized_attention_override``.

    ``previous`` is the override already there (or None); the new one must call it (``previous(func,
    *args, **kwargs)``) instead of ``func`` when it is set, and act (observe) only when
    ``first_in_call(slot)`` (``slot``, the second argument of ``make``) says no copy of it acts further out.
    """
    to = model.model_options.setdefault("transformer_options", {})
    previous = _unwrapped(to.get(OVERRIDE_KEY), key)
    to[OVERRIDE_KEY] = _tagged(make(previous, (key, OVERRIDE_KEY)), key, previous)


def chain_object_patch(model, name: str, make, key: str) -> None:
    """Object-patch ``name`` (``diffusion_model.<path>.<attribute>``) with ``make(previous)``, where
    ``previous`` is the patch already there (None: the original attribute). Re-applying the same ``key``
    replaces; a copy of the key left inside another pack's patch passes calls through to what it wraps
    while a copy further out acts."""
    previous = _unwrapped(model.object_patches.get(name), key)
    fn = make(previous)
    path, attribute = name.rsplit(".", 1)
    owner = model.get_model_object(path)
    original = previous if previous is not None else getattr(type(owner), attribute).__get__(owner)

    slot = (key, name)

    def patched(*args, **kwargs):
        if not first_in_call(slot):
            return original(*args, **kwargs)
        try:
            return fn(*args, **kwargs)
        finally:
            leave_call(slot)

    model.add_object_patch(name, _tagged(patched, key, previous))


# -- per run ---------------------------------------------------------------------------------------------------

class RunRecorder:
    """Per-run state around WrappersMP.SAMPLER_SAMPLE.

    Subclasses implement ``begin(guider, sigmas, extra_args, noise)`` (set up this run's state) and
    ``finish(completed)`` (publish or drop it; runs in ``finally``), and may override
    ``on_step(step, x0, x, total_steps)`` (the sampler's step callback, before the user's) and
    ``on_result(samples)``. ``active`` is True only while a run is under way; ``sampler`` is the
    run's sampler object (core's KSAMPLER for the k-diffusion samplers); ``last_run_complete`` tells
    whether the last run returned normally.
    """

    def __init__(self, key: str):
        self.key = wrapper_key(key)
        self.active = False
        self.sampler = None
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
        self.sampler = getattr(executor, "class_obj", None)
        completed = False

        def step_callback(step, x0, x, total_steps):
            self.on_step(step, x0, x, total_steps)
            if callback is not None:
                return callback(step, x0, x, total_steps)

        try:  # finish() runs whatever happens from begin() on: no run state outlives the run
            self.begin(guider, sigmas, extra_args, noise)
            self.active = True
            out = executor(guider, sigmas, extra_args, step_callback, noise, *args, **kwargs)
            self.on_result(out)
            completed = True
            return out
        finally:
            self.active = False
            self.last_run_complete = completed
            try:
                self.finish(completed)
            finally:
                self.sampler = None

    def wrappers(self, extra: dict | None = None) -> dict:
        import comfy.patcher_extension as pe

        return {pe.WrappersMP.SAMPLER_SAMPLE: self.sampler_sample, **(extra or {})}

    def attach(self, model, wrappers: dict | None = None) -> None:
        """This recorder's SAMPLER_SAMPLE wrapper plus ``wrappers``, under its key, in place on a clone."""
        set_wrappers(model, self.key, self.wrappers(wrappers))

    def install(self, model, wrappers: dict | None = None):
        """A clone of ``model`` with this recorder's SAMPLER_SAMPLE wrapper plus ``wrappers``, all under its key."""
        return patched_clone(model, self.key, self.wrappers(wrappers))
