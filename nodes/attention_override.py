"""An ``optimized_attention_override`` that looks at q and k and then attends exactly as the host would.

ComfyUI passes every attention call that carries ``transformer_options`` through
``transformer_options["optimized_attention_override"]``: ``override(func, q, k, v, heads, ...)``.
Newer hosts add two things an observer must keep intact:

* q, k and v may arrive as ``AttentionTensorContainer``s (single-owner inputs a backend may
  consume to free memory early). Core then calls ``override.container_function(q, k, v, ...)``
  if the override has one; otherwise it unwraps the containers itself and the backend's own
  container path (and its memory saving) is lost. This override has a container function: it
  only peeks at q and k and hands the containers on untouched.
* a layer may carry a preferred backend (``preferred_attention``, a ``ComfyAttention`` whose
  ``function`` is set from the checkpoint's metadata). Core drops it whenever an override is
  installed, so this override finds the layer's preference itself and calls it, as core does
  without an override.

An override installed earlier on the model (another node's) is chained: its container function
when it has one, else the override itself with the unwrapped tensors. Hosts without containers
or preferences (ComfyUI 0.3.x) simply never use those paths.
"""

from __future__ import annotations

from typing import Callable

from ._patching import first_in_call, leave_call


def _attention_module():
    import comfy.ldm.modules.attention as attention

    return attention


def container_type():
    """The host's ``AttentionTensorContainer`` class, or None on hosts without the protocol."""
    return getattr(_attention_module(), "AttentionTensorContainer", None)


def peek(t):
    """The tensor inside a container (not consumed), or ``t`` itself."""
    cls = container_type()
    return t.peek() if cls is not None and isinstance(t, cls) else t


def _default_backend():
    """The function core hands an override: the undecorated optimized attention of the host."""
    wrapped = _attention_module().optimized_attention
    return getattr(wrapped, "__wrapped__", wrapped)


def _preferred_function(kwargs, preferred_for):
    """The layer's preferred backend: from the call (a host that passes it on) or from the layer."""
    preference = kwargs.pop("preferred_attention", None)
    if preference is None and preferred_for is not None:
        preference = preferred_for(kwargs)
    return getattr(preference, "function", None) if preference is not None else None


def make_observing_override(observe: Callable, previous=None, preferred_for: Callable | None = None,
                            key=None):
    """An override calling ``observe(args, kwargs)`` (q and k as plain tensors, never consumed) first.

    ``previous``: the override already installed on the model, chained. ``preferred_for(kwargs)``:
    the ``ComfyAttention`` of the layer this call belongs to, or None; asked only when the
    call itself does not name one. ``key``: the patch's slot (``chain_override``); a copy of it that runs
    inside a copy further out in the same call (re-applied under another pack's override) attends
    without observing.
    """

    def watched(args, kwargs) -> bool:
        first = key is None or first_in_call(key)
        if first:
            observe(args, kwargs)
        return first

    def attention_override(func, *args, **kwargs):
        first = watched(args, kwargs)
        try:
            preferred = _preferred_function(kwargs, preferred_for)
            if previous is not None:
                return previous(func, *args, **kwargs)
            if preferred is not None:
                return preferred(*args, **kwargs)  # as core does without an override (kwargs say: inside)
            return func(*args, **kwargs)
        finally:
            if first and key is not None:
                leave_call(key)

    if container_type() is None:
        return attention_override

    def container_function(*args, **kwargs):
        first = watched((peek(args[0]), peek(args[1])) + tuple(args[2:]), kwargs)
        try:
            preferred = _preferred_function(kwargs, preferred_for)
            if previous is not None:
                chained = getattr(previous, "container_function", None)
                if chained is not None:
                    return chained(*args, **kwargs)
                taken = tuple(c.take() for c in args[:3]) + tuple(args[3:])
                return previous(_default_backend(), *taken, **kwargs)
            if preferred is not None:
                return preferred(*args, **kwargs)  # a backend's wrapper takes containers itself
            # the host's optimized attention, already inside its wrapper (kwargs carry the marker):
            # it uses the backend's container path when it has one, else unwraps
            return _attention_module().optimized_attention(*args, **kwargs)
        finally:
            if first and key is not None:
                leave_call(key)

    attention_override.container_function = container_function
    return attention_override


def has_preferences(modules) -> bool:
    """True when some attention layer among ``modules`` carries a preferred-backend slot."""
    return any(getattr(m, "comfy_attention", None) is not None for m in modules)
