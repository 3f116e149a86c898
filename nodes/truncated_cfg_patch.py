"""The model patch behind every truncated-guidance node (the paper's eq. 9).

One implementation for the KSampler drop-in, the guider and the MODEL patch node:

* A keyed CALC_COND_BATCH wrapper decides per model evaluation whether its step is guided (the
  pure ``shapefirst.guidance`` schedule decides). Outside the window only the kept branch is
  computed, and its prediction is returned for both CFG slots: CFG then yields exactly that
  prediction (uncond + w * 0), other packs' pre/post-CFG hooks still run on a consistent pair,
  and the batch halves. Core's DualCFGGuider ([negative, middle, positive]) is truncated the same
  way: the kept branch in all three slots makes both of its guidance terms 0. Other guiders
  (PerpNegGuider) and single-pass evaluations (cfg 1, guidance-distilled models) are left exact, and
  reported as such.
* A keyed DIFFUSION_MODEL wrapper, moved innermost for each run, counts the batch rows the model
  really computes (EasyCache/LazyCache may skip whole evaluations).
* The SAMPLER_SAMPLE wrapper (``RunRecorder``) plans the run from the sigmas actually sampled,
  and in ``finally`` logs the accounting and hands it to ``on_finish``. A run that starts at
  the sigma where the previous run of the same prompt ended (chained samplers: a high-noise then a
  low-noise KSamplerAdvanced) adds up with it into one report.

Which step an evaluation belongs to, without reading the device: samplers that evaluate the model
once per step at the step's own sigma and report each step to the callback after it (euler, dpmpp_2m,
lms, ...: ``ONE_EVALUATION_PER_STEP``) are followed by their callback, on the host; where the decision
can change (inside the window and next to it) the evaluation's sigma is compared with the step's on the
device, and the comparisons are read once, when the run ends (a sampler that broke the rule is named in
a warning). A step of the tail away from the window does no work beyond core's one-pass step. Other samplers (heun, dpm_2, dpmpp_sde,
ones from other packs) may evaluate between the schedule's sigmas: their evaluation's sigma is read
(one read per evaluation, the decision's input).

Each evaluation's decision travels with the call: ``transformer_options[TAIL_KEY]`` is True in the
unguided tail and False inside the window (the text cache reads it). Everything is attached to a clone.
"""

from __future__ import annotations

import re

import torch

from ..shapefirst import guidance
from ..shapefirst.guidance import (MODE_ADAPTIVE, MODE_FIXED, TAIL_COND, TAIL_UNCOND, UNITS_SIGMA, UNITS_STEPS,
                                   GuidanceWindow, RunRecord)
from ._common import KEY_PREFIX, LOGGER
from ._patching import RunRecorder

WRAPPER_KEY = f"{KEY_PREFIX}truncated_cfg"
TAIL_KEY = f"{KEY_PREFIX}truncated_cfg.tail"  # per model call: True in the unguided tail, False inside the window
# core k-diffusion samplers that evaluate the model once per step, at the step's own sigma, and call the
# step callback after each step (read in ComfyUI 0.3.75 and 0.33.0; euler only without s_churn)
ONE_EVALUATION_PER_STEP = frozenset({
    "sample_euler", "sample_euler_ancestral", "sample_dpmpp_2m", "sample_dpmpp_2m_sde", "sample_dpmpp_3m_sde",
    "sample_lms", "sample_lcm", "sample_ipndm", "sample_ipndm_v", "sample_deis", "sample_dpmpp_2m_cfg_pp"})

__all__ = ["MODE_ADAPTIVE", "MODE_FIXED", "TAIL_COND", "TAIL_UNCOND", "UNITS_SIGMA", "UNITS_STEPS", "GuidanceWindow",
           "TruncationController", "patch_model", "TAIL_KEY"]


def steps_by_callback(sampler) -> bool:
    """True for a core sampler of ``ONE_EVALUATION_PER_STEP`` (its step callback tells each evaluation's step)."""
    fn = getattr(sampler, "sampler_function", None)
    options = getattr(sampler, "extra_options", None) or {}
    return (getattr(fn, "__module__", None) == "comfy.k_diffusion.sampling"
            and getattr(fn, "__name__", None) in ONE_EVALUATION_PER_STEP and not options.get("s_churn"))


def _prompt_id():
    try:
        from comfy_execution.utils import get_executing_context

        ctx = get_executing_context()
        return None if ctx is None else ctx.prompt_id
    except Exception:  # an older ComfyUI, or sampling outside an executing prompt
        return None


class TruncationController(RunRecorder):
    """Per-run state of one patched model: the run's schedule, its record, the curve."""

    def __init__(self, window: GuidanceWindow, node: str = "TruncatedCFG"):
        super().__init__(WRAPPER_KEY)
        self.settings = window
        self.node = node
        self.report: RunRecord | None = None  # the last run's record (a chain's runs add up)
        self.on_finish = None  # optional callable(report_dict), e.g. to show it in the browser
        self._prompt = self._chain_end = None
        self._clear()

    def _clear(self):
        self.schedule: guidance.TruncationSchedule | None = None
        self.record: RunRecord | None = None
        self._cfg = self.settings.cfg
        self._curve_steps: set[int] = set()
        self._pending: list = []  # (step, sigma, tensor of 3 stats) until the run ends: no sync per step
        self._rows_seen = self._rows_asked = 0
        self._warned_other = False
        self._by_callback = False  # this run's steps come from the sampler's step callback
        self._next_step = 0  # the step the next evaluation belongs to (by callback)
        self._off_step: dict = {}  # device -> flag: an evaluation's sigma was not its step's (read at the end)
        self._guider, self._dual_cfg = None, False  # this run's guider; core's DualCFGGuider (3 branches)

    # -- which step an evaluation belongs to ----------------------------------------------------
    def on_step(self, step, x0, x, total_steps) -> None:
        self._next_step = int(step) + 1

    def _locate(self, timestep) -> tuple[int, float]:
        """(step, sigma) of the evaluation at ``timestep``: from the step callback (no read), else read."""
        schedule = self.schedule
        if not self._by_callback:
            sigma = float(timestep.flatten()[0])  # the decision's input: samplers between the schedule's sigmas
            return schedule.step_of(sigma), sigma
        sigma = schedule.sigmas[min(self._next_step, schedule.steps - 1)]
        step = schedule.step_of(sigma)
        if any(schedule.is_enabled(s) for s in (step - 1, step, step + 1)):  # where the decision can change
            off = timestep.flatten()[0] != sigma  # on the device; read once when the run ends
            flag = self._off_step.get(timestep.device)
            self._off_step[timestep.device] = off if flag is None else flag | off
        return step, sigma

    # -- run lifecycle --------------------------------------------------------------------------
    def begin(self, guider=None, sigmas=None, extra_args=None, noise=None) -> None:
        import comfy.patcher_extension as pe

        self._clear()
        # read once per sampling call: on a GPU each read of a device tensor is a sync
        values = sigmas.tolist() if hasattr(sigmas, "tolist") else [float(s) for s in sigmas]
        if len(values) < 2:  # nothing to sample: the patch stays out of the way
            return
        self.schedule = self.settings.plan(values)
        self.record = RunRecord(steps=self.schedule.steps)
        self._by_callback = steps_by_callback(self.sampler)
        cfg = getattr(guider, "cfg", None)
        self._cfg = float(cfg) if isinstance(cfg, (int, float)) else self.settings.cfg
        self._guider, self._dual_cfg = guider, _is_dual_cfg(guider)
        # our row counter innermost, in this run's copy of the options: it sees only real model calls
        wrappers = ((extra_args or {}).get("model_options", {}).get("transformer_options", {}).get("wrappers", {})
                    .get(pe.WrappersMP.DIFFUSION_MODEL))
        if wrappers and self.key in wrappers:
            wrappers[self.key] = wrappers.pop(self.key)
        s = self.settings
        self._check_references(getattr(guider, "conds", None) or {})
        if s.units == UNITS_SIGMA and not self.schedule.guided_steps:
            LOGGER.warning(
                "%s: no sampled step has a noise level in the window [%g, %g] (sampled sigmas: %s), so this "
                "run is not guided at all (expected for the low-noise sampler of a chain). To guide it, widen "
                "sigma_low / sigma_high to include some of these sigmas.", self.node, s.sigma_low, s.sigma_high,
                ", ".join(f"{v:.4g}" for v in values[:-1]))

    def _check_references(self, conds: dict) -> None:
        """Edit models see the input image in the conditioning: reference latents (Qwen-Image-Edit, Flux
        Kontext: ``ref_latents``) or an image concatenated to the latent (HiDream E1 through
        InstructPixToPixConditioning: ``image_cond``). A tail that keeps a negative without it, while another
        branch has it, samples as if there were no input image."""
        def images(key):
            return {name for c in conds.get(key) or [] for name in (c.get("model_conds") or {})
                    if name in _INPUT_IMAGE_CONDS}

        if self.settings.tail != TAIL_UNCOND or "negative" not in conds:
            return
        absent = {k: images(k) - images("negative") for k in conds if k != "negative"}
        holders = sorted(k for k, names in absent.items() if names)
        if holders:
            what = ", ".join(_INPUT_IMAGE_CONDS[n] for n in sorted(set().union(*absent.values())))
            LOGGER.warning("%s: the %s conditioning%s the input image (%s) and the negative none, so the unguided "
                           "tail (tail 'uncond') samples without the input image. Give the negative the same image "
                           "(ReferenceLatent or InstructPixToPixConditioning on it too, as core's Qwen-Image-Edit "
                           "templates do), or set tail to 'cond'.", self.node, " and ".join(holders),
                           " carries" if len(holders) == 1 else "s carry", what)

    def finish(self, completed: bool = True) -> None:
        r = self.record
        if r is None:
            return
        try:
            self._flush_curve()
            if any(bool(flag) for flag in self._off_step.values()):  # one read per run
                LOGGER.warning("%s: the sampler %s evaluated the model at a noise level other than its step's, so "
                               "the window was applied to the steps its callback counted; please report this "
                               "sampler.", self.node, getattr(getattr(self.sampler, "sampler_function", None),
                                                              "__name__", type(self.sampler).__name__))
            if self._rows_seen:
                r.rows_computed = self._rows_seen
            else:  # a model without DIFFUSION_MODEL wrappers: the rows handed to it
                r.rows_computed = self._rows_asked
            r.stop_step = self.schedule.adaptive_stop
            LOGGER.info(
                "TruncatedCFG: %d steps, %d model evaluations, %d guided, %d conditional passes skipped, "
                "%.1f%% of plain CFG's UNet work saved%s%s", r.steps, r.evaluations, r.guided, r.skipped_passes,
                100 * r.saved_fraction, "" if r.stop_step is None else f", adaptive stop at step {r.stop_step}",
                f" ({r.note})" if r.note else "")
            if not completed:
                return
            # a run that starts where the last one of this prompt ended continues it (chained samplers)
            prompt, sigmas = _prompt_id(), self.schedule.sigmas
            last = self._chain_end
            if (self.report is not None and prompt is not None and prompt == self._prompt and last is not None
                    and abs(sigmas[0] - last) <= guidance.SIGMA_RTOL * max(abs(last), 1e-12)):
                self.report.extend(r)
            else:
                self.report = RunRecord(**{k: getattr(r, k) for k in r.__dataclass_fields__})
            self._prompt, self._chain_end = prompt, sigmas[-1]
            if self.on_finish is not None:
                self.on_finish(self.report.as_dict())
        finally:
            # nothing of the run survives it: the guider holds the model this controller is attached to (a
            # reference cycle would keep both until a full collection, and ComfyUI warns of a leak when a
            # patched clone and its parent then die together), the flags are device tensors
            self.schedule, self._guider = None, None
            self._pending, self._off_step = [], {}

    # -- wrappers ---------------------------------------------------------------------------------
    def diffusion_model_wrapper(self, executor, *args, **kwargs):
        if self.active and args and hasattr(args[0], "shape"):
            self._rows_seen += int(args[0].shape[0])
        return executor(*args, **kwargs)

    def calc_cond_batch_wrapper(self, executor, model, conds, x_in, timestep, model_options):
        report = self.record
        if report is None or self.schedule is None:  # sampled without SAMPLER_SAMPLE: plain CFG
            return executor(model, conds, x_in, timestep, model_options)
        rows = int(x_in.shape[0])
        report.evaluations += 1
        step, sigma = self._locate(timestep)
        schedule = self.schedule
        guided = schedule.is_enabled(step)
        options = _with_tail(model_options, not guided)
        active = sum(c is not None for c in conds)
        keep = self._kept(conds)
        if keep is None or active < 2:
            report.rows_full_cfg += rows * active
            self._rows_asked += rows * active
            if keep is None:
                report.other_guiders += 1
                if not self._warned_other:
                    self._warned_other = True
                    LOGGER.warning("%s: this sampler's guider evaluates %d conditionings, more than two and not as "
                                   "DualCFGGuider does (PerpNegGuider...); "
                                   "truncated guidance applies to CFG and DualCFGGuider only, so this run is "
                                   "sampled exactly, with nothing skipped.", self.node, len(conds))
            else:
                report.single_pass += 1
            return executor(model, conds, x_in, timestep, options)
        report.rows_full_cfg += active * rows
        if guided:
            report.guided += 1
            self._rows_asked += active * rows
            out = executor(model, conds, x_in, timestep, options)
            self._measure(step, sigma, *self._guidance_pair(conds, out), x_in)
            return out
        only = [None] * len(conds)
        only[keep] = conds[keep]
        out = executor(model, only, x_in, timestep, options)
        report.skipped_passes += active - 1
        self._rows_asked += rows
        return [out[keep]] * len(conds)  # every guidance term is then exactly 0: the guider returns out[keep]

    def _kept(self, conds) -> int | None:
        """The branch computed outside the window, in the guider's order of ``conds``; None: a guider whose
        branches truncation does not know (left exact).

        CFG: [cond, uncond]. DualCFGGuider: [negative, middle, positive] (core's ``Guider_DualCFG``), whose
        regular style n + cfg2 (m - n) + cfg1 (p - m) and nested style n + cfg2 (m + cfg1 (p - m) - n) both
        give the kept branch when all three slots hold it (eq. 9 with both text guidance terms dropped): the
        tail 'uncond' keeps the negative (the middle when core's cfg1 optimisation left the negative out,
        cfg_cond2_negative = 1: the middle is then the unguided branch), the tail 'cond' the positive."""
        if len(conds) == 2:
            return self.settings.keep
        if len(conds) == 3 and self._dual_cfg:
            if self.settings.tail == TAIL_COND:
                return 2
            return next((i for i in (0, 1) if conds[i] is not None), 2)
        return None

    def _guidance_pair(self, conds, out) -> tuple:
        """(guided prediction, unguided prediction, scale) of an evaluation, for the guidance-strength curve:
        CFG's (cond, uncond, cfg); DualCFGGuider's combined prediction against its unguided branch (the
        negative, or the middle when core left the negative out), scale 1."""
        if len(out) == 2:
            return out[0], out[1], self._cfg
        g = self._guider
        n, m, p = out
        if conds[0] is None:  # regular style, cfg_cond2_negative 1: m + cfg1 (p - m)
            return m + g.cfg1 * (p - m), m, 1.0
        if getattr(g, "nested", False):
            return n + g.cfg2 * (m + g.cfg1 * (p - m) - n), n, 1.0
        return n + g.cfg2 * (m - n) + g.cfg1 * (p - m), n, 1.0

    # -- helpers ------------------------------------------------------------------------------------
    def _measure(self, step: int, sigma: float, cond, uncond, cfg: float, x_in) -> None:
        u, g, ratio = guidance.guidance_strength(cond, uncond, x_in, cfg)
        if step not in self._curve_steps:  # one point per step: its first evaluation
            self._curve_steps.add(step)
            # kept on the device and read once at the end: a read here would stall the GPU every step
            self._pending.append((step, sigma, torch.stack([u.mean(), g.mean(), ratio.mean()]).detach()))
        if self.settings.mode == MODE_ADAPTIVE and self.schedule.adaptive_stop is None:
            self.schedule.observe(step, float(ratio.max()))  # every sample of the batch must be below

    def _flush_curve(self) -> None:
        """Read the curve's values off the device, once per run, into the record."""
        if not self._pending:
            return
        values = torch.stack([t for _, _, t in self._pending]).to("cpu", torch.float64).tolist()
        for (step, sigma, _), (u, g, ratio) in zip(self._pending, values):
            self.record.curve.append({"step": step, "sigma": sigma, "rms_uncond": u, "rms_guidance": g,
                                      "ratio": ratio})
        self._pending = []


# model conds through which an edit model sees its input image -> what the user connected
_INPUT_IMAGE_CONDS = {"ref_latents": "reference latents", "image_cond": "an InstructPix2Pix image"}


def _is_dual_cfg(guider) -> bool:
    """True for core's DualCFGGuider (or a subclass): its branches are [negative, middle, positive]. Told by
    the class's name and module: ComfyUI loads comfy_extras under module names of its own (0.3.75: the
    file's path), so an import here would be another copy of the class."""
    return any(c.__name__ == "Guider_DualCFG" and re.split(r"[./\\]", c.__module__)[-1] == "nodes_custom_sampler"
               for c in type(guider).__mro__)  # the module: comfy_extras.nodes_custom_sampler, or its file path


def _with_tail(model_options: dict, tail: bool) -> dict:
    """This call's own copy of ``model_options`` whose transformer_options say whether it is in the tail."""
    transformer_options = dict(model_options.get("transformer_options", {}))
    transformer_options[TAIL_KEY] = tail
    return {**model_options, "transformer_options": transformer_options}


def patch_model(model, window: GuidanceWindow, node: str = "TruncatedCFG"):
    """A clone of ``model`` with truncated guidance attached, and its controller.

    Applying it to a model that already has it replaces the earlier one (same keys): never stacks.
    """
    import comfy.patcher_extension as pe

    controller = TruncationController(window, node)
    patched = controller.install(model, {pe.WrappersMP.CALC_COND_BATCH: controller.calc_cond_batch_wrapper,
                                         pe.WrappersMP.DIFFUSION_MODEL: controller.diffusion_model_wrapper})
    return patched, controller
