"""AttentionRecorder: the per-run state and the hooks of Attention Map Capture.

A SAMPLER_SAMPLE wrapper starts a fresh ``AttentionRun`` per sampling call and counts steps from
the sampler's callback; a CALC_COND_BATCH wrapper marks the first model evaluation of each
recorded step and finishes it (layers averaged on the common grid, stored on the CPU as
float16); an APPLY_MODEL wrapper tells which batch chunk is cond (0) and which uncond (1) and
how many text tokens the call carries. The state of one model call (which chunks, which
attention call is the flagged cross-attention) is kept per thread, and layer maps are added
under a lock: ComfyUI's multi-GPU CFG splitting runs the cond and uncond chunks on several
devices from a thread pool, each thread through these hooks.

Four ways to read the probabilities:
* UNet cross-attention: an ``attn2_patch`` flags the next attention call, the override
  (``attention_override``) computes softmax(q k^T / sqrt(d)) from the q and k it is handed.
* joint attention (SD3/MMDiT, Flux, Qwen-Image, Lumina 2): every attention call over [text; image]
  tokens passes the override; the image-query x text-key block is taken, see ``_observe_joint``.
* PixArt: an object patch on each block's ``cross_attn.forward`` recomputes q and k from the
  module's own projections and then runs the original forward.
* Wan (cross-attention over the tokens of a 5-D video latent): an object patch on each block's
  ``cross_attn.forward`` (which changes nothing) flags the attention calls inside it, and the
  override takes the flagged call whose keys are the text tokens; only the query rows of the kept
  frames are used, each kept frame of each video one entry of the maps' batch axis.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass

import torch

from ..shapefirst.attention import (BRANCH_NAMES, AttentionRun, EvalAccumulator, fold_repeats, frames_to_batch,
                                    grid_for, head_mean_probs, infer_hw, joint_text_probs, planned_steps,
                                    take_frames, to_maps)
from ._common import KEY_PREFIX, LOGGER, ShapeFirstInputError
from .attention_override import make_observing_override

CAPTURE_NODE = "AttentionMapCapture"
_ids = itertools.count(1)


@dataclass(frozen=True)
class CaptureSettings:
    branches: tuple[int, ...] = (0,)
    step_stride: int = 1
    max_tokens: int = 77
    max_grid: int = 64
    keep_layers: bool = False
    memory_limit_mb: float = 1024.0
    frame_stride: int = 1  # video latents: keep every Nth frame (the last always)


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


class AttentionRecorder:
    """Holds the last sampling run of the model it patched; reset at the start of each run."""

    def __init__(self, settings: CaptureSettings, kind: str, patch_size: int = 1, patch_frames: int = 1):
        self.id = next(_ids)
        self.key = f"{KEY_PREFIX}attention_capture.{self.id}"
        self.settings = settings
        self.kind = kind
        self.patch_size = patch_size
        self.patch_frames = patch_frames  # video: latent frames per token frame
        self.run: AttentionRun | None = None
        self.runs_started = 0
        self._lock = threading.Lock()
        self._reset()

    def _reset(self):
        self._run: AttentionRun | None = None
        self._step = 0
        self._acc: EvalAccumulator | None = None
        self._wanted: set[int] = set()
        self._branch_len: dict[int, int] = {}
        self._latent_hw = None
        self._device = None
        self._local = threading.local()  # a fresh one: no thread's call state survives a run
        self._checked = False
        self._warned: set[str] = set()

    @property
    def busy(self) -> bool:
        """True only while a sampling run with this capture is under way."""
        return self._run is not None

    def _current(self) -> _Call | None:
        return getattr(self._local, "call", None)

    def _warn(self, key: str, message: str):
        with self._lock:
            if key in self._warned:
                return
            self._warned.add(key)
        LOGGER.warning("%s: %s", CAPTURE_NODE, message)

    # -- wrappers ---------------------------------------------------------------------------
    def sampler_sample(self, executor, guider, sigmas, extra_args, callback, noise, latent_image, denoise_mask,
                       disable_pbar):
        total = max(0, len(sigmas) - 1)
        batch, frames, total_frames = int(noise.shape[0]), [], 0
        if noise.ndim == 5 and self.kind == "video":  # (B, C, F, H, W): every kept frame of every video is one entry
            total_frames = -(-int(noise.shape[2]) // self.patch_frames)
            frames = planned_steps(total_frames, self.settings.frame_stride)
            batch = batch * len(frames)
        run = AttentionRun(sigmas=[float(s) for s in sigmas[:-1]],
                           planned_steps=planned_steps(total, self.settings.step_stride),
                           latent_hw=tuple(int(s) for s in noise.shape[-2:]), batch=batch,
                           max_tokens=self.settings.max_tokens, model_kind=self.kind, frames=frames,
                           total_frames=total_frames, videos=int(noise.shape[0]) if frames else 0)
        self.run = run  # a new run replaces the last one: nothing leaks from earlier prompts
        self.runs_started += 1
        self._reset()
        self._run = run

        def step_callback(step, x0, x, total_steps):
            self._step = max(self._step, int(step) + 1)
            if callback is not None:
                return callback(step, x0, x, total_steps)

        try:
            samples = executor(guider, sigmas, extra_args, step_callback, noise, latent_image, denoise_mask,
                               disable_pbar)
            run.complete = True
            return samples
        finally:
            self._reset()  # also after an interruption or an error: no half-state survives

    def calc_cond_batch(self, executor, model, conds, x_in, timestep, model_options):
        run = self._run
        if run is None or self._acc is not None:
            return executor(model, conds, x_in, timestep, model_options)
        step = self._step
        wanted = [b for b in self.settings.branches
                  if b < len(conds) and conds[b] is not None and not run.has(b, step)]
        if step not in run.planned_steps or not wanted:
            return executor(model, conds, x_in, timestep, model_options)
        self._wanted = set(wanted)
        self._branch_len = {b: _context_length(conds[b]) for b in wanted}
        self._latent_hw = tuple(int(s) for s in x_in.shape[-2:])
        self._device = x_in.device
        self._acc = EvalAccumulator(keep_layers=self.settings.keep_layers)
        try:
            out = executor(model, conds, x_in, timestep, model_options)
            self._finish(step)
            return out
        finally:
            self._acc = None

    def apply_model(self, executor, x, t, c_concat, c_crossattn, control, transformer_options, **kwargs):
        if self._acc is None:
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        previous = self._current()
        text = int(c_crossattn.shape[1]) if isinstance(c_crossattn, torch.Tensor) and c_crossattn.ndim == 3 else 0
        self._local.call = _Call(list(transformer_options.get("cond_or_uncond") or []),
                                 tuple(int(s) for s in x.shape[-2:]), text,
                                 frames=int(x.shape[2]) if x.ndim == 5 else 0)
        try:
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        finally:
            self._local.call = previous

    # -- patches (closures: ComfyUI deep-copies model_options on clone, which would copy a bound
    #    method's recorder; a plain function is shared) -------------------------------------------
    def make_attn2_patch(self):
        rec = self

        def attn2_patch(n, context_attn2, value_attn2, extra_options):
            block = extra_options.get("block") or ("?", 0)
            index = extra_options.get("block_index", 0)
            rec._local.attn2 = (block, index)  # the next attention call is this layer's attn2
            call = rec._current()
            if rec._acc is not None and call is not None:
                layer = f"{block[0]}.{block[1]}.{index}"
                call.pending = (n.shape[1], context_attn2.shape[1], layer, extra_options.get("activations_shape"))
            return n, context_attn2, value_attn2

        return attn2_patch

    def make_override(self, previous=None, layers: dict | None = None):
        """The attention override. ``layers``: a UNet's {(kind, id, index): BasicTransformerBlock}
        when some layer may carry a preferred backend (looked up per call), else None."""
        rec = self

        def observe(args, kwargs):
            call = rec._current()
            if call is None or rec._acc is None:
                return
            if rec.kind == "joint":
                rec._observe_joint(call, args, kwargs)
                return
            if rec.kind == "video":
                layer = getattr(rec._local, "cross", None)
                if layer is not None:
                    rec._observe_video(call, layer, args, kwargs)
                return
            pending, call.pending = call.pending, None
            if pending is not None:
                rec._observe_call(call, pending, args, kwargs)

        preferred_for = None
        if layers:
            def preferred_for(kwargs):
                to = kwargs.get("transformer_options") or {}
                flagged, rec._local.attn2 = getattr(rec._local, "attn2", None), None
                block, index = to.get("block"), to.get("block_index", 0)
                layer = layers.get((*block, index)) if block else None
                if layer is None:
                    return None
                module = layer.attn2 if flagged == (block, index) else layer.attn1  # attn1 runs first
                return getattr(module, "comfy_attention", None)

        return make_observing_override(observe, previous, preferred_for)

    def make_pixart_forward(self, module, layer: str, previous=None):
        rec = self

        def forward(x, cond, mask=None):
            call = rec._current()
            rows = rec._rows(call, x.shape[0]) if rec._acc is not None and call is not None else None
            if rows:
                b, n, c = x.shape
                kv = module.kv_linear(cond).view(1, -1, 2, module.num_heads, module.head_dim)
                k = kv[:, :, 0].reshape(b, -1, c)
                q = module.q_linear(_take(x, rows, b))
                probs = head_mean_probs(q, _take(k, rows, b), module.num_heads)
                rec._add(call, layer, probs, rows, infer_hw(n, *call.hw))
            if previous is not None:
                return previous(x, cond, mask)
            return type(module).forward(module, x, cond, mask)

        return forward

    def make_flagging_forward(self, module, layer: str, previous=None):
        """A Wan block's ``cross_attn.forward`` that flags the attention calls made inside it as
        this layer's cross-attention, then runs the original (or an earlier patch) unchanged."""
        rec = self

        def forward(*args, **kwargs):
            outer, rec._local.cross = getattr(rec._local, "cross", None), layer
            try:
                if previous is not None:
                    return previous(*args, **kwargs)
                return type(module).forward(module, *args, **kwargs)
            finally:
                rec._local.cross = outer

        return forward

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
        """One joint attention call over [text; image(; more)] tokens: record the image queries'
        probabilities on the text keys, renormalised over the text keys (see
        ``shapefirst.attention.joint_text_probs`` for why)."""
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
        p = self.patch_size
        hw = (-(-call.hw[0] // p), -(-call.hw[1] // p))
        if nq != nk or heads is None or nq < call.text + hw[0] * hw[1]:
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
        probs = joint_text_probs(_take(q, rows, b), _take(k, rows, b), int(heads), call.text, hw[0] * hw[1],
                                 skip_reshape=skip, mask=mask)
        self._add(call, layer, probs, rows, hw)

    def _observe_video(self, call: _Call, layer: str, args, kwargs):
        """One attention call inside a Wan block's cross-attention: kept when its keys are the text
        tokens (an image-to-video model's first call attends to the CLIP-vision tokens instead)."""
        if len(args) < 2 or call.text <= 0 or call.frames <= 0:
            return
        q, k = args[0], args[1]
        heads = args[3] if len(args) > 3 else kwargs.get("heads")
        skip = bool(kwargs.get("skip_reshape", False))
        nq, nk = (q.shape[2], k.shape[2]) if skip else (q.shape[1], k.shape[1])
        if nk != call.text or heads is None:
            return
        p = self.patch_size
        hw = (-(-call.hw[0] // p), -(-call.hw[1] // p))
        total = -(-call.frames // self.patch_frames)
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
            if self._device is not None and maps.device != self._device:
                maps = maps.to(self._device)  # multi-GPU: each device's chunks join on the sampling device
            acc = self._acc
            if acc is not None:
                with self._lock:
                    acc.add(branch, layer, maps)

    def _finish(self, step: int):
        acc, run = self._acc, self._run
        branches = acc.branches()
        if not branches:
            return
        if run.grid is None:
            shapes = [hw for b in branches for hw in acc.resolutions(b)]
            run.grid = grid_for(shapes, self.settings.max_grid)
        added = 0
        for branch in branches:
            layers = acc.layer_means(branch) if self.settings.keep_layers else None
            before = run.nbytes()
            run.store(branch, step, acc.mean(branch, run.grid), layers)
            added += run.nbytes() - before
            if len(acc.names[branch]) > len(run.layer_names):
                run.layer_names = list(acc.names[branch])
        if not self._checked:
            self._checked = True
            self._check_memory(added, branches)

    def _check_memory(self, bytes_per_step: int, branches: list[int]):
        run, s = self._run, self.settings
        projected = bytes_per_step * len(run.planned_steps)
        if projected > s.memory_limit_mb * 2 ** 20:
            gh, gw = run.grid
            raise ShapeFirstInputError(
                CAPTURE_NODE,
                f"this run would store {projected / 2 ** 20:.0f} MB of attention maps, over memory_limit_mb = "
                f"{s.memory_limit_mb:g} ({len(run.planned_steps)} steps x {run.tokens_kept(branches[0])} tokens x "
                f"{gh}x{gw} grid x {run.batch} images{self._frames_note()} x {len(branches)} branches"
                f"{' + per-layer maps' if s.keep_layers else ''}). Keep fewer steps (step_stride), fewer tokens "
                "(max_tokens), a coarser grid (max_grid), "
                + ("fewer video frames (frame_stride), " if run.frames else "")
                + "turn keep_layers off, or raise memory_limit_mb.")

    def _frames_note(self) -> str:
        run = self._run
        if not run.frames:
            return ""
        return f" (= {run.videos} video{'s' if run.videos != 1 else ''} x {len(run.frames)} kept frames)"


def _take(t, rows: list[int], b: int):
    """The batch chunks ``rows`` (each ``b`` entries) of ``t``; ``t`` itself when that is all of it."""
    if len(rows) * b == t.shape[0]:
        return t
    return torch.cat([t[ci * b:(ci + 1) * b] for ci in rows])
