"""AttentionRecorder: the per-run state and the hooks of Attention Map Capture.

A ``RunRecorder`` (SAMPLER_SAMPLE) starts a fresh ``AttentionRun`` per sampling call and counts steps
from the sampler's callback; a CALC_COND_BATCH wrapper marks the first model evaluation of each
recorded step and finishes it (layers averaged on the common grid, copied to the CPU as float16
without waiting for the device; the copies settle when the run ends); an APPLY_MODEL wrapper tells
which batch chunk is cond (0) and which uncond (1) and how many text tokens the call carries. The
state of one model call (which chunks, which attention call is the flagged cross-attention) is a
``CallState`` (per thread), and layer maps are added under a lock: ComfyUI's multi-GPU CFG splitting
runs the cond and uncond chunks on several devices from a thread pool, each thread through these hooks.

How the probabilities are read follows the model's description (``nodes/model_families.py``), one of
four modes:
* ``unet`` (cross-attention reached by attn2 patches): the patch flags the next attention call, the
  override (``attention_override``) computes softmax(q k^T / sqrt(d)) from the q and k it is handed.
* ``joint`` (joint attention): every attention call over the text and image tokens passes the override;
  the image-query x text-key block is taken where the family's layout puts the two parts, see
  ``_observe_joint``.
* ``pixart`` (cross-attention whose call passes no transformer_options): an object patch on each layer
  recomputes q and k from the layer's own projections, then runs the original forward.
* ``video`` (cross-attention reached by the override over a 5-D latent: Wan): an object patch on each
  layer (which changes nothing) flags the attention calls inside it, and the override takes the
  described text call; only the query rows of the kept frames are used, each kept frame of each video
  one entry of the maps' batch axis.
"""

from __future__ import annotations

import itertools
import threading

import torch

from ..shapefirst.attention import AttentionRun, EvalAccumulator, grid_for, head_mean_probs, infer_hw, planned_steps
from ._common import LOGGER, ShapeFirstInputError
from ._device import host_copy, settle
from ._patching import CallState, RunRecorder
from .attention_override import make_observing_override
from .attention_readings import CaptureSettings, Observers, Reading, _Call, _context_length, _Layer, _take

CAPTURE_NODE = "AttentionMapCapture"
__all__ = ["AttentionRecorder", "CaptureSettings", "Reading", "CAPTURE_NODE"]
_ids = itertools.count(1)


class AttentionRecorder(Observers, RunRecorder):
    """Holds the last sampling run of the model it patched; reset at the start of each run."""

    def __init__(self, settings: CaptureSettings, reading: Reading):
        self.id = next(_ids)
        super().__init__(f"attention_capture.{self.id}")
        self.settings = settings
        self.reading = reading
        self.kind = reading.mode
        self.run: AttentionRun | None = None
        self._lock = threading.Lock()
        self._call = CallState()  # the model call under way: _Call
        self._attn2 = CallState()  # unet: (block, index) of the attn2 patch that ran last
        self._layer = CallState()  # video: the flagged layer call under way, _Layer
        self._reset()

    def _reset(self):
        self._run: AttentionRun | None = None
        self._step = 0
        self._acc: EvalAccumulator | None = None
        self._wanted: set[int] = set()
        self._branch_len: dict[int, int] = {}
        self._latent_hw = None
        self._device = None
        self._devices: set = set()  # where maps were copied from: settled when the run ends
        for state in (self._call, self._attn2, self._layer):
            state.clear()  # no thread's call state survives a run
        self._checked = False
        self._warned: set[str] = set()

    @property
    def busy(self) -> bool:
        """True only while a sampling run with this capture is under way."""
        return self.active

    def _warn(self, key: str, message: str):
        with self._lock:
            if key in self._warned:
                return
            self._warned.add(key)
        LOGGER.warning("%s: %s", CAPTURE_NODE, message)

    # -- run lifecycle (RunRecorder) ------------------------------------------------------------
    def begin(self, guider, sigmas, extra_args, noise) -> None:
        values = sigmas.tolist() if hasattr(sigmas, "tolist") else [float(s) for s in sigmas]  # once per run
        total = max(0, len(values) - 1)
        batch, frames, total_frames = int(noise.shape[0]), [], 0
        if noise.ndim == 5 and self.kind == "video":  # (B, C, F, H, W): every kept frame of every video is one entry
            total_frames = -(-int(noise.shape[2]) // self.reading.patch_frames)
            frames = planned_steps(total_frames, self.settings.frame_stride)
            batch = batch * len(frames)
        run = AttentionRun(sigmas=values[:-1], planned_steps=planned_steps(total, self.settings.step_stride),
                           latent_hw=tuple(int(s) for s in noise.shape[-2:]), batch=batch,
                           max_tokens=self.settings.max_tokens, model_kind=self.kind, frames=frames,
                           total_frames=total_frames, videos=int(noise.shape[0]) if frames else 0)
        self._reset()
        self.run = self._run = run  # a new run replaces the last one: nothing leaks from earlier prompts

    def on_step(self, step, x0, x, total_steps) -> None:
        self._step = max(self._step, int(step) + 1)

    def on_result(self, samples) -> None:
        self._run.complete = True

    def finish(self, completed: bool) -> None:
        try:
            settle(self._devices)  # the maps copied during the run are on the CPU from here on
        finally:
            self._reset()  # also after an interruption or an error: no half-state survives

    # -- wrappers ---------------------------------------------------------------------------
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
        text = int(c_crossattn.shape[1]) if isinstance(c_crossattn, torch.Tensor) and c_crossattn.ndim == 3 else 0
        previous = self._call.enter(_Call(list(transformer_options.get("cond_or_uncond") or []),
                                          tuple(int(s) for s in x.shape[-2:]), text,
                                          frames=int(x.shape[2]) if x.ndim == 5 else 0))
        try:
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        finally:
            self._call.leave(previous)

    # -- patches (closures: ComfyUI deep-copies model_options on clone, which would copy a bound
    #    method's recorder; a plain function is shared) -------------------------------------------
    def make_attn2_patch(self):
        rec = self

        def attn2_patch(n, context_attn2, value_attn2, extra_options):
            block = extra_options.get("block") or ("?", 0)
            index = extra_options.get("block_index", 0)
            rec._attn2.enter((block, index))  # the next attention call is this layer's attn2
            call = rec._call.current
            if rec._acc is not None and call is not None:
                layer = f"{block[0]}.{block[1]}.{index}"
                call.pending = (n.shape[1], context_attn2.shape[1], layer, extra_options.get("activations_shape"))
            return n, context_attn2, value_attn2

        return attn2_patch

    def make_override(self, previous=None, layers: dict | None = None, key=None):
        """The attention override. ``layers``: a UNet's {(kind, id, index): the block holding attn1 and
        attn2} when some layer may carry a preferred backend (looked up per call), else None."""
        rec = self

        def observe(args, kwargs):
            if rec.kind == "video":
                layer = rec._layer.current
                if layer is None:
                    return
                layer.calls += 1  # counted in every evaluation: the text call is found by its place
                call = rec._call.current
                if call is not None and rec._acc is not None and layer.calls == rec.reading.text_call + 1:
                    rec._observe_video(call, layer.name, args, kwargs)
                return
            call = rec._call.current
            if call is None or rec._acc is None:
                return
            if rec.kind == "joint":
                rec._observe_joint(call, args, kwargs)
                return
            pending, call.pending = call.pending, None
            if pending is not None:
                rec._observe_call(call, pending, args, kwargs)

        preferred_for = None
        if layers:
            def preferred_for(kwargs):
                to = kwargs.get("transformer_options") or {}
                flagged = rec._attn2.enter(None)
                block, index = to.get("block"), to.get("block_index", 0)
                layer = layers.get((*block, index)) if block else None
                if layer is None:
                    return None
                module = layer.attn2 if flagged == (block, index) else layer.attn1  # attn1 runs first
                return getattr(module, "comfy_attention", None)

        return make_observing_override(observe, previous, preferred_for, key)

    def make_pixart_forward(self, module, layer: str, previous=None):
        rec = self

        def forward(x, cond, mask=None):
            call = rec._call.current
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
        """A layer's ``forward`` that flags the attention calls made inside it as this layer's (the
        reading's ``text_call``-th is the text's), then runs the original (or an earlier patch) unchanged."""
        rec = self

        def forward(*args, **kwargs):
            outer = rec._layer.enter(_Layer(layer))
            try:
                if previous is not None:
                    return previous(*args, **kwargs)
                return type(module).forward(module, *args, **kwargs)
            finally:
                rec._layer.leave(outer)

        return forward

    def _finish(self, step: int):
        acc, run = self._acc, self._run
        branches = acc.branches()
        if not branches:
            return
        self._devices.add(self._device)
        if run.grid is None:
            shapes = [hw for b in branches for hw in acc.resolutions(b)]
            run.grid = grid_for(shapes, self.settings.max_grid)
        added = 0
        for branch in branches:
            layers = acc.layer_means(branch) if self.settings.keep_layers else None
            before = run.nbytes()
            run.store(branch, step, acc.mean(branch, run.grid), layers, to_host=host_copy)
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
