"""AttentionMapCapture: per-token, per-step cross-attention probabilities of a real sampling run.

How the probabilities are read, whatever attention backend ComfyUI runs:
* SD1.x / SD2.x / SDXL UNets: an ``attn2_patch`` (which changes nothing) flags the next attention
  call as cross-attention, and ``transformer_options["optimized_attention_override"]`` (every
  ComfyUI backend passes through it) computes softmax(q k^T / sqrt(d)) from the projected q and k
  it is handed, then calls the backend unchanged. The output is ComfyUI's own, so sampling is
  bit-identical with or without the capture.
* PixArt: its cross-attention passes no transformer_options; an object patch on each block's
  ``cross_attn.forward`` recomputes q and k from the module's own projections and then runs the
  original forward.
* Joint-attention models (SD3, Flux) and models without cross-attention are refused.

A SAMPLER_SAMPLE wrapper starts a fresh ``AttentionRun`` per sampling call and counts steps from
the sampler's callback; a CALC_COND_BATCH wrapper marks the first model evaluation of each
recorded step and finishes it (layers averaged on the common grid, stored on the CPU as
float16); an APPLY_MODEL wrapper tells which batch chunk is cond (0) and which uncond (1).
All hooks live on the clone this node returns; the state they touch is reset in ``finally``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from ..shapefirst.attention import (BRANCH_NAMES, COND, UNCOND, AttentionRun, EvalAccumulator, fold_repeats,
                                    grid_for, head_mean_probs, infer_hw, planned_steps, to_maps)
from ._api import io
from ._common import CATEGORY, KEY_PREFIX, LOGGER, ShapeFirstInputError

CAPTURE_NODE = "AttentionMapCapture"
AttentionCaptureType = io.Custom("SHAPEFIRST_ATTENTION")
OVERRIDE_KEY = "optimized_attention_override"
_ids = itertools.count(1)


@dataclass(frozen=True)
class CaptureSettings:
    branches: tuple[int, ...] = (COND,)
    step_stride: int = 1
    max_tokens: int = 77
    max_grid: int = 64
    keep_layers: bool = False
    memory_limit_mb: float = 1024.0


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


class AttentionRecorder:
    """Holds the last sampling run of the model it patched; reset at the start of each run."""

    def __init__(self, settings: CaptureSettings, kind: str):
        self.id = next(_ids)
        self.key = f"{KEY_PREFIX}attention_capture.{self.id}"
        self.settings = settings
        self.kind = kind
        self.run: AttentionRun | None = None
        self.runs_started = 0
        self._reset()

    def _reset(self):
        self._run: AttentionRun | None = None
        self._step = 0
        self._acc: EvalAccumulator | None = None
        self._wanted: set[int] = set()
        self._branch_len: dict[int, int] = {}
        self._latent_hw = None
        self._call = None  # (cond_or_uncond, chunk spatial size) of the UNet call under way
        self._pending = None  # (queries, keys, layer, activations_shape) flagged by attn2_patch
        self._checked = False
        self._warned: set[str] = set()

    @property
    def busy(self) -> bool:
        """True only while a sampling run with this capture is under way."""
        return self._run is not None

    def _warn(self, key: str, message: str):
        if key not in self._warned:
            self._warned.add(key)
            LOGGER.warning("%s: %s", CAPTURE_NODE, message)

    # -- wrappers ---------------------------------------------------------------------------
    def sampler_sample(self, executor, guider, sigmas, extra_args, callback, noise, latent_image, denoise_mask,
                       disable_pbar):
        total = max(0, len(sigmas) - 1)
        run = AttentionRun(sigmas=[float(s) for s in sigmas[:-1]],
                           planned_steps=planned_steps(total, self.settings.step_stride),
                           latent_hw=tuple(int(s) for s in noise.shape[-2:]), batch=int(noise.shape[0]),
                           max_tokens=self.settings.max_tokens, model_kind=self.kind)
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
        self._acc = EvalAccumulator(keep_layers=self.settings.keep_layers)
        try:
            out = executor(model, conds, x_in, timestep, model_options)
            self._finish(step)
            return out
        finally:
            self._acc = None
            self._pending = None

    def apply_model(self, executor, x, t, c_concat, c_crossattn, control, transformer_options, **kwargs):
        if self._acc is None:
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        previous = self._call
        self._call = (list(transformer_options.get("cond_or_uncond") or []), tuple(int(s) for s in x.shape[-2:]))
        try:
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        finally:
            self._call = previous
            self._pending = None

    # -- patches (closures: ComfyUI deep-copies model_options on clone, which would copy a bound
    #    method's recorder; a plain function is shared) -------------------------------------------
    def make_attn2_patch(self):
        rec = self

        def attn2_patch(n, context_attn2, value_attn2, extra_options):
            if rec._acc is not None and rec._call is not None:
                block = extra_options.get("block") or ("?", 0)
                layer = f"{block[0]}.{block[1]}.{extra_options.get('block_index', 0)}"
                rec._pending = (n.shape[1], context_attn2.shape[1], layer, extra_options.get("activations_shape"))
            return n, context_attn2, value_attn2

        return attn2_patch

    def make_override(self, previous=None):
        rec = self

        def attention_override(func, *args, **kwargs):
            pending, rec._pending = rec._pending, None
            if pending is not None and rec._acc is not None:
                rec._observe_call(pending, args, kwargs)
            if previous is not None:
                return previous(func, *args, **kwargs)
            return func(*args, **kwargs)

        return attention_override

    def make_pixart_forward(self, module, layer: str, previous=None):
        rec = self

        def forward(x, cond, mask=None):
            rows = rec._rows(x.shape[0]) if rec._acc is not None and rec._call is not None else None
            if rows:
                b, n, c = x.shape
                kv = module.kv_linear(cond).view(1, -1, 2, module.num_heads, module.head_dim)
                k = kv[:, :, 0].reshape(b, -1, c)
                q = module.q_linear(_take(x, rows, b))
                probs = head_mean_probs(q, _take(k, rows, b), module.num_heads)
                rec._add(layer, probs, rows, infer_hw(n, *rec._call[1]))
            if previous is not None:
                return previous(x, cond, mask)
            return type(module).forward(module, x, cond, mask)

        return forward

    # -- recording ------------------------------------------------------------------------------
    def _observe_call(self, pending, args, kwargs):
        if len(args) < 2:
            return
        q, k = args[0], args[1]
        heads = args[3] if len(args) > 3 else kwargs.get("heads")
        mask = args[4] if len(args) > 4 else kwargs.get("mask")
        skip = bool(kwargs.get("skip_reshape", False))
        nq, nk = (q.shape[2], k.shape[2]) if skip else (q.shape[1], k.shape[1])
        if (nq, nk) != tuple(pending[:2]) or heads is None:
            return  # not the cross-attention call that was flagged (e.g. an attn2 replace patch)
        rows = self._rows(q.shape[0])
        if not rows:
            return
        shape = pending[3]
        if shape and len(shape) >= 4 and shape[-2] * shape[-1] == nq:
            hw = (int(shape[-2]), int(shape[-1]))
        else:
            hw = infer_hw(nq, *self._call[1])
        b = q.shape[0] // len(self._call[0])
        if mask is not None and mask.ndim >= 3 and mask.shape[0] == q.shape[0]:
            mask = _take(mask, rows, b)
        probs = head_mean_probs(_take(q, rows, b), _take(k, rows, b), int(heads), skip_reshape=skip, mask=mask)
        self._add(pending[2], probs, rows, hw)

    def _rows(self, batch: int) -> list[int]:
        """Indices of the batch chunks of this call that belong to a recorded branch."""
        cond_or_uncond, chunk_hw = self._call
        if chunk_hw != self._latent_hw:
            self._warn("area", "a conditioning with an area (or a cropped batch) was not recorded; "
                               "maps cover whole-image conditionings only.")
            return []
        if not cond_or_uncond or batch % len(cond_or_uncond):
            return []
        return [ci for ci, branch in enumerate(cond_or_uncond) if branch in self._wanted]

    def _add(self, layer: str, probs, rows: list[int], hw):
        """``probs``: (len(rows) * b, N, K) for the chunks ``rows`` of the current call."""
        cond_or_uncond = self._call[0]
        b = probs.shape[0] // len(rows)
        for j, ci in enumerate(rows):
            branch = cond_or_uncond[ci]
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
            self._acc.add(branch, layer, to_maps(p, hw))

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
                f"{gh}x{gw} grid x {run.batch} images x {len(branches)} branches"
                f"{' + per-layer maps' if s.keep_layers else ''}). Keep fewer steps (step_stride), fewer tokens "
                "(max_tokens), a coarser grid (max_grid), turn keep_layers off, or raise memory_limit_mb.")


def _take(t, rows: list[int], b: int):
    """The batch chunks ``rows`` (each ``b`` entries) of ``t``; ``t`` itself when that is all of it."""
    if len(rows) * b == t.shape[0]:
        return t
    return torch.cat([t[ci * b:(ci + 1) * b] for ci in rows])


def model_kind(model) -> str:
    """'unet' or 'pixart'; refuses models whose text does not reach the image by cross-attention."""
    from comfy.ldm.modules.attention import BasicTransformerBlock
    from comfy.ldm.pixart.pixartms import PixArtMS

    dm = model.get_model_object("diffusion_model")
    if isinstance(dm, PixArtMS):
        return "pixart"
    for m in dm.modules():
        if isinstance(m, BasicTransformerBlock) and m.attn2 is not None and not m.switch_temporal_ca_to_sa:
            return "unet"
    name = type(dm).__name__
    joint = name in {"MMDiT", "OpenAISignatureMMDITWrapper", "Flux", "Chroma", "HunyuanVideo", "Lumina"}
    raise ShapeFirstInputError(
        CAPTURE_NODE,
        f"this model ({name}) has no cross-attention layers to capture"
        + (": SD3 and Flux attend to text and image tokens jointly, so there is no text-only attention map" if joint else "")
        + ". Connect an SD1.x, SD2.x, SDXL or PixArt model.")


def install(model, settings: CaptureSettings):
    """A clone of ``model`` with the capture attached, and its recorder. ``model`` is untouched."""
    import comfy.patcher_extension as pe

    kind = model_kind(model)
    rec = AttentionRecorder(settings, kind)
    m = model.clone()
    m.add_wrapper_with_key(pe.WrappersMP.SAMPLER_SAMPLE, rec.key, rec.sampler_sample)
    m.add_wrapper_with_key(pe.WrappersMP.CALC_COND_BATCH, rec.key, rec.calc_cond_batch)
    m.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, rec.key, rec.apply_model)
    if kind == "unet":
        m.set_model_attn2_patch(rec.make_attn2_patch())
        to = m.model_options.setdefault("transformer_options", {})
        to[OVERRIDE_KEY] = rec.make_override(to.get(OVERRIDE_KEY))  # composes with an earlier override
    else:
        dm = m.get_model_object("diffusion_model")
        for i, block in enumerate(dm.blocks):
            name = f"diffusion_model.blocks.{i}.cross_attn.forward"
            m.add_object_patch(name, rec.make_pixart_forward(block.cross_attn, f"blocks.{i}", m.object_patches.get(name)))
    return m, rec


class AttentionMapCapture(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=CAPTURE_NODE,
            display_name="Attention Map Capture (per token, per step)",
            category=f"{CATEGORY}/attention",
            description=(
                "Records the cross-attention probabilities softmax(QK^T/sqrt(d)) of every text token at every "
                "sampling step of the next run with this model: averaged over heads and over all cross-attention "
                "layers on one grid (the finest layer's, at most max_grid), for the conditional branch and "
                "optionally the unconditional one. Same maps under every attention backend; the sampled image is "
                "identical to sampling without it. Memory: 2 bytes x steps x tokens x grid pixels per image and "
                "branch (SDXL 1024 px, 30 steps, 77 tokens: 19 MB), kept on the CPU until the next run. "
                "SD1.x, SD2.x, SDXL and PixArt; SD3/Flux (joint attention) are refused. Use one sampler per "
                "capture node: each sampling run replaces the previous record."),
            inputs=[
                io.Model.Input("model", tooltip="The model to sample with. It is cloned, never modified."),
                io.Boolean.Input("record_uncond", default=False,
                                 tooltip="Also record the unconditional (negative prompt) branch. Off = conditional "
                                         "only. With cfg 1.0 ComfyUI skips that branch and nothing is recorded for it."),
                io.Int.Input("step_stride", default=1, min=1, max=1000,
                             tooltip="Record every Nth step (the last step is always recorded). 1 = every step."),
                io.Int.Input("max_tokens", default=77, min=1, max=4096,
                             tooltip="Keep maps for the first N text positions (77 = one whole CLIP chunk, [SOS] to "
                                     "padding). Per-token mean weights are kept for every position."),
                io.Int.Input("max_grid", default=64, min=4, max=256,
                             tooltip="Longest side of the common grid. The grid is the finest cross-attention layer's "
                                     "(64x64 for SD1.5 at 512 px and for SDXL at 1024 px), shrunk to this if larger."),
                io.Boolean.Input("keep_layers", default=False,
                                 tooltip="Also keep each layer's own map at its native resolution (raw data; about 6x "
                                         "the memory for SD1.5). Off = only the layer average."),
                io.Float.Input("memory_limit_mb", default=1024.0, min=1.0, max=65536.0, step=1.0,
                               tooltip="A run whose maps would exceed this many MB stops at its first step with an "
                                       "error saying what to reduce."),
            ],
            outputs=[
                io.Model.Output("captured_model", display_name="model",
                                tooltip="The same model with the capture attached; connect it to your sampler."),
                AttentionCaptureType.Output("capture", tooltip="Connect to Attention Map View or Attention Map Compare."),
            ],
            not_idempotent=True,  # each capture node records its own run, even with identical inputs
        )

    @classmethod
    def execute(cls, model, record_uncond=False, step_stride=1, max_tokens=77, max_grid=64, keep_layers=False,
                memory_limit_mb=1024.0) -> io.NodeOutput:
        settings = CaptureSettings(branches=(COND, UNCOND) if record_uncond else (COND,),
                                   step_stride=int(step_stride), max_tokens=int(max_tokens), max_grid=int(max_grid),
                                   keep_layers=bool(keep_layers), memory_limit_mb=float(memory_limit_mb))
        patched, recorder = install(model, settings)
        return io.NodeOutput(patched, recorder)
