"""How Attention Map Capture turns one attention call into maps, per mode (see attention_recorder):
the settings and the reading of a model, the state of a model call, and the observers that compute the
probabilities of a call and add them to the evaluation's accumulator (a mixin of AttentionRecorder).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..shapefirst.attention import (BRANCH_NAMES, fold_repeats, frames_to_batch, head_mean_probs, infer_hw,
                                    joint_text_probs, take_frames, to_maps)
from ..shapefirst.families import JointLayout


@dataclass(frozen=True)
class CaptureSettings:
    branches: tuple[int, ...] = (0,)
    step_stride: int = 1
    max_tokens: int = 77
    max_grid: int = 64
    keep_layers: bool = False
    memory_limit_mb: float = 1024.0
    frame_stride: int = 1  # video latents: keep every Nth frame (the last always)


@dataclass(frozen=True)
class Reading:
    """How the capture reads one model (from its description): the mode, the patch grid, the joint
    layout, which attention call inside a flagged layer is the text's."""

    mode: str  # "unet", "joint", "pixart" or "video"
    patch_size: int = 1
    patch_frames: int = 1  # video: latent frames per token frame
    layout: JointLayout = field(default_factory=JointLayout)
    text_pad: int | None = None  # joint: the text is padded to a multiple of this
    text_call: int = 0


def _context_length(entries) -> int:
    """Token count of a branch's conditioning: >0 known, 0 unknown, -1 mixed lengths."""
    lengths = set()
    for entry in entries or []:
        c = (entry.get("model_conds") or {}).get("c_crossattn") if isinstance(entry, dict) else None
        cond = getattr(c, "cond", None)
        if cond is not None and cond.ndim >= 2:
            lengths.add(int(cond.shape[-2]))
    if len(lengths) > 1:
        return -1
    return lengths.pop() if lengths else 0


@dataclass
class _Call:
    """One model call under way in one thread."""

    chunks: list  # cond_or_uncond of the batch
    hw: tuple  # latent (h, w) of the call
    text: int  # text tokens in the call (joint attention), 0 if unknown
    pending: tuple | None = None  # (queries, keys, layer, activations_shape) flagged by attn2_patch
    joint_calls: int = 0
    frames: int = 0  # latent frames of a video call, 0 for images


@dataclass
class _Layer:
    """A flagged layer call under way (video mode): its name and the attention calls seen inside it."""

    name: str
    calls: int = 0


class Observers:
    """The four readings of an attention call; the recorder supplies ``reading``, ``_run``, ``_acc``,
    ``_wanted``, ``_branch_len``, ``_latent_hw``, ``_device``, ``_lock`` and ``_warn``."""

    # -- recording ------------------------------------------------------------------------------
    def _observe_call(self, call: _Call, pending, args, kwargs):
        if len(args) < 2:
            return
        q, k = args[0], args[1]
        heads = args[3] if len(args) > 3 else kwargs.get("heads")
        mask = args[4] if len(args) > 4 else kwargs.get("mask")
        skip = bool(kwargs.get("skip_reshape", False))
        nq, nk = (q.shape[2], k.shape[2]) if skip else (q.shape[1], k.shape[1])
        if (nq, nk) != tuple(pending[:2]) or heads is None:
            return  # not the cross-attention call that was flagged (e.g. an attn2 replace patch)
        rows = self._rows(call, q.shape[0])
        if not rows:
            return
        shape = pending[3]
        if shape and len(shape) >= 4 and shape[-2] * shape[-1] == nq:
            hw = (int(shape[-2]), int(shape[-1]))
        else:
            hw = infer_hw(nq, *call.hw)
        b = q.shape[0] // len(call.chunks)
        if mask is not None and mask.ndim >= 3 and mask.shape[0] == q.shape[0]:
            mask = _take(mask, rows, b)
        probs = head_mean_probs(_take(q, rows, b), _take(k, rows, b), int(heads), skip_reshape=skip, mask=mask)
        self._add(call, pending[2], probs, rows, hw)

    def _observe_joint(self, call: _Call, args, kwargs):
        """One joint attention call over the text and image tokens (in the order of the family's layout; more
        tokens may follow): record the image queries' probabilities on the text keys, renormalised over the
        text keys (see ``shapefirst.attention.joint_text_probs`` for why)."""
        if len(args) < 2 or call.text <= 0:
            return
        if call.frames > 1:  # Qwen-Image's latent is (B, C, 1, H, W); several frames are not one image
            self._warn("joint_frames", f"a joint-attention call over {call.frames} latent frames was not recorded; "
                                       "maps cover single-frame latents only.")
            return
        q, k = args[0], args[1]
        heads = args[3] if len(args) > 3 else kwargs.get("heads")
        skip = bool(kwargs.get("skip_reshape", False))
        nq, nk = (q.shape[2], k.shape[2]) if skip else (q.shape[1], k.shape[1])
        p = self.reading.patch_size
        hw = (-(-call.hw[0] // p), -(-call.hw[1] // p))
        pad = self.reading.text_pad
        text = -(-call.text // pad) * pad if pad else call.text
        if self.reading.layout.padded and pad:  # both parts padded: a joint call is exactly their padded sum
            expected = text + -(-hw[0] * hw[1] // pad) * pad
            joint = nq == expected
            if nq > expected and nq == nk:
                self._warn("padded_extra", f"a joint-attention call over {nq} tokens, more than the {expected} of the "
                                           "padded text and image (reference images?), was not recorded.")
        else:
            joint = nq >= text + hw[0] * hw[1]
        if nq != nk or heads is None or not joint:
            return  # image-only (SD3.5's second attention, Lumina 2's noise refiner) or text-only (its context refiner)
        rows = self._rows(call, q.shape[0])
        if not rows:
            return
        to = kwargs.get("transformer_options") or {}
        index = call.joint_calls
        call.joint_calls += 1
        layer = f"{to['block_type']}.{to.get('block_index', 0)}" if "block_type" in to else f"joint.{index}"
        b = q.shape[0] // len(call.chunks)
        mask = args[4] if len(args) > 4 else kwargs.get("mask")  # Qwen-Image and Lumina 2 pass it positionally
        if mask is not None and mask.ndim >= 3 and mask.shape[0] == q.shape[0]:
            mask = _take(mask, rows, b)
        (t0, _), image = self.reading.layout.spans(text, hw[0] * hw[1])
        probs = joint_text_probs(_take(q, rows, b), _take(k, rows, b), int(heads), (t0, call.text), image,
                                 skip_reshape=skip, mask=mask)
        self._add(call, layer, probs, rows, hw)

    def _observe_video(self, call: _Call, layer: str, args, kwargs):
        """The text's attention call inside a flagged cross-attention layer over a video latent (Wan
        image-to-video's first call attends to the CLIP-vision tokens: the reading names the text's)."""
        if len(args) < 2 or call.text <= 0 or call.frames <= 0:
            return
        q, k = args[0], args[1]
        heads = args[3] if len(args) > 3 else kwargs.get("heads")
        skip = bool(kwargs.get("skip_reshape", False))
        nq, nk = (q.shape[2], k.shape[2]) if skip else (q.shape[1], k.shape[1])
        if nk != call.text or heads is None:
            return
        p = self.reading.patch_size
        hw = (-(-call.hw[0] // p), -(-call.hw[1] // p))
        total = -(-call.frames // self.reading.patch_frames)
        if nq != total * hw[0] * hw[1]:
            self._warn("video", f"a cross-attention call with {nq} query positions is not the {total} frames x "
                                f"{hw[0]}x{hw[1]} tokens of the latent (reference frames?); it was not recorded.")
            return
        rows = self._rows(call, q.shape[0])
        if not rows:
            return
        frames = self._run.frames
        b = q.shape[0] // len(call.chunks)
        qk = take_frames(_take(q, rows, b), frames, total, skip_reshape=skip)
        probs = head_mean_probs(qk, _take(k, rows, b), int(heads), skip_reshape=skip, mask=None)
        self._add(call, layer, frames_to_batch(probs, len(frames)), rows, hw)

    def _rows(self, call: _Call, batch: int) -> list[int]:
        """Indices of the batch chunks of this call that belong to a recorded branch."""
        if call.hw != self._latent_hw:
            self._warn("area", "a conditioning with an area (or a cropped batch) was not recorded; "
                               "maps cover whole-image conditionings only.")
            return []
        if not call.chunks or batch % len(call.chunks):
            return []
        return [ci for ci, branch in enumerate(call.chunks) if branch in self._wanted]

    def _add(self, call: _Call, layer: str, probs, rows: list[int], hw):
        """``probs``: (len(rows) * b, N, K) for the chunks ``rows`` of the current call."""
        b = probs.shape[0] // len(rows)
        for j, ci in enumerate(rows):
            branch = call.chunks[ci]
            p = probs[j * b:(j + 1) * b]
            length = self._branch_len.get(branch, 0)
            if length < 0:
                self._warn("mixed", f"the {BRANCH_NAMES.get(branch, branch)} branch combines prompts of different "
                                    "lengths; it is not recorded. Use prompts of one length (e.g. both under 75 tokens).")
                continue
            if length and p.shape[-1] != length:
                if p.shape[-1] % length:
                    continue
                p = fold_repeats(p, length)
            maps = to_maps(p, hw)
            if self._device is not None and maps.device != self._device:  # multi-GPU: join on the sampling device
                maps = maps.to(self._device, non_blocking=True)
            acc = self._acc
            if acc is not None:
                with self._lock:
                    acc.add(branch, layer, maps)


def _take(t, rows: list[int], b: int):
    """The batch chunks ``rows`` (each ``b`` entries) of ``t``; ``t`` itself when that is all of it."""
    if len(rows) * b == t.shape[0]:
        return t
    return torch.cat([t[ci * b:(ci + 1) * b] for ci in rows])
