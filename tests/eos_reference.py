"""Shared by the EOS swap tests: prompts, default node inputs, and an independent reference of
"[SOS] + A + [EOS] of B" built with plain indexing from core CLIPTextEncode outputs and token ids."""

from __future__ import annotations

from devtools.workflows.specs.common import BIRD, CHAIR, SKYLINE  # noqa: F401  (the workflows' prompts)

END = 49407
OPTS = {"eos_from": "B", "sem_from": "A", "sos_from": "A", "padding_is_eos": True, "layout": "prompt A",
        "sem_repeats": 1, "apply_to": "keys and values", "start_percent": 0.0, "end_percent": 1.0,
        "pooled_from": "B", "noise_seed": 0}
LONG = ", ".join(["a small red house with a green door and two round windows"] * 8)  # > 2 chunks


def reference_swap(enc_a, enc_b, ids_a, ids_b, channels=slice(None), padding_is_eos=True):
    """A's rows, with each chunk's [EOS] region (from its first end token) filled from B's chunk
    min(i, last) in order, B's last region row repeated."""
    out = enc_a.clone()
    for i, chunk in enumerate(ids_a):
        j = min(i, len(ids_b) - 1)
        ea, eb = chunk.index(END), ids_b[j].index(END)
        stop_a = len(chunk) if padding_is_eos else ea + 1
        stop_b = len(ids_b[j]) if padding_is_eos else eb + 1
        for k, pos in enumerate(range(ea, stop_a)):
            out[0, i * 77 + pos, channels] = enc_b[0, j * 77 + min(eb + k, stop_b - 1), channels]
    return out
