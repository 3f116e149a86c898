"""The model patch behind TruncatedCFGSampler / TruncatedCFGGuider (the paper's eq. 9).

A keyed CALC_COND_BATCH wrapper decides per model evaluation whether the step is guided.
Outside the guidance window only the kept branch is computed, and its prediction is returned
for both CFG slots: CFG then yields exactly that prediction (uncond + w * 0), other packs'
pre/post-CFG hooks still run on a consistent pair, and the UNet batch halves. A keyed
SAMPLER_SAMPLE wrapper resets the per-run state at the start of each sampling call and logs the
accounting at its end. Everything is attached to a clone; the user's MODEL is never modified.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..shapefirst import guidance
from ._common import KEY_PREFIX, LOGGER

WRAPPER_KEY = f"{KEY_PREFIX}truncated_cfg"
TAIL_UNCOND = "uncond"
TAIL_COND = "cond"
MODE_FIXED = "fixed"
MODE_ADAPTIVE = "adaptive"


@dataclass(frozen=True)
class TruncationSettings:
    start: float = 0.0
    end: float = 0.4
    tail: str = TAIL_UNCOND
    mode: str = MODE_FIXED
    threshold: float = 0.1
    cfg: float = 7.5  # the guidance scale w, for the strength curve


class TruncationController:
    """Per-run state of one patched model: the window in steps, the accounting, the curve."""

    def __init__(self, settings: TruncationSettings):
        self.settings = settings
        self.report: guidance.Accounting | None = None
        self._schedule: list[float] = []
        self._first = self._stop = 0
        self._curve_steps: set[int] = set()
        self._pending: list = []  # (step, sigma, tensor of 3 stats) until the run ends: no sync per step
        self._sampled_src, self._sampled = None, []  # the sampler's sigmas (on the device) and their values
        self.on_finish = None  # optional callable(report_dict), e.g. to show it in the browser

    # -- run lifecycle --------------------------------------------------------------------
    def begin(self, sigmas) -> None:
        self._schedule = [float(s) for s in sigmas]
        n = max(1, len(self._schedule) - 1)
        s = self.settings
        self._first, self._stop = guidance.window_steps(n, s.start, 1.0 if s.mode == MODE_ADAPTIVE else s.end)
        self._curve_steps = set()
        self._pending = []
        self._sampled_src, self._sampled = None, []
        self.report = guidance.Accounting(steps=n)

    def finish(self) -> None:
        r = self.report
        if r is None:
            return
        self._flush_curve()
        LOGGER.info(
            "TruncatedCFG: %d steps, %d model evaluations, %d guided, %d conditional passes skipped, "
            "%.1f%% of plain CFG's UNet work saved%s", r.steps, r.evaluations, r.guided, r.skipped_passes,
            100 * r.saved_fraction, "" if r.stop_step is None else f", adaptive stop at step {r.stop_step}")
        if self.on_finish is not None:
            self.on_finish(r.as_dict())

    # -- wrappers -------------------------------------------------------------------------
    def sampler_sample_wrapper(self, executor, guider, sigmas, *args, **kwargs):
        self.begin(sigmas)
        try:
            return executor(guider, sigmas, *args, **kwargs)
        finally:
            self.finish()

    def calc_cond_batch_wrapper(self, executor, model, conds, x_in, timestep, model_options):
        report = self.report
        if report is None:  # sampled through a path that skipped SAMPLER_SAMPLE: act as plain CFG
            return executor(model, conds, x_in, timestep, model_options)
        rows = int(x_in.shape[0])
        report.evaluations += 1
        active = [c is not None for c in conds]
        if len(conds) != 2 or not all(active):
            # cfg == 1 (ComfyUI already runs one pass) or a guider with other branches: untouched
            report.rows_computed += rows * sum(active)
            report.rows_full_cfg += rows * sum(active)
            return executor(model, conds, x_in, timestep, model_options)
        report.rows_full_cfg += 2 * rows
        schedule = self._schedule_from(model_options)
        sigma = float(timestep.flatten()[0])
        step = guidance.step_of_sigma(sigma, schedule)
        guided = self._first <= step < self._stop
        if self.settings.mode == MODE_ADAPTIVE and report.stop_step is not None:
            guided = guided and step < report.stop_step
        if guided:
            report.guided += 1
            report.rows_computed += 2 * rows
            out = executor(model, conds, x_in, timestep, model_options)
            self._measure(step, sigma, out, x_in)
            return out
        keep = 1 if self.settings.tail == TAIL_UNCOND else 0
        only = [None, None]
        only[keep] = conds[keep]
        out = executor(model, only, x_in, timestep, model_options)
        report.skipped_passes += 1
        report.rows_computed += rows
        return [out[keep], out[keep]]

    # -- helpers ---------------------------------------------------------------------------
    def _schedule_from(self, model_options) -> list[float]:
        sigmas = model_options.get("transformer_options", {}).get("sample_sigmas")
        if sigmas is None or len(sigmas) < 2:
            return self._schedule
        if sigmas is not self._sampled_src:  # read once per sampling call: on a GPU each read is a sync
            self._sampled_src, self._sampled = sigmas, sigmas.tolist() if hasattr(sigmas, "tolist") else \
                [float(s) for s in sigmas]
        return self._sampled

    def _measure(self, step: int, sigma: float, out, x_in) -> None:
        report = self.report
        u, g, ratio = guidance.guidance_strength(out[0], out[1], x_in, self.settings.cfg)
        if step not in self._curve_steps:  # one point per step: its first evaluation
            self._curve_steps.add(step)
            # kept on the device and read once at the end: a read here would stall the GPU every step
            self._pending.append((step, sigma, torch.stack([u.mean(), g.mean(), ratio.mean()]).detach()))
        if self.settings.mode == MODE_ADAPTIVE and report.stop_step is None:
            if float(ratio.max()) < self.settings.threshold:  # every sample of the batch is below
                report.stop_step = step + 1

    def _flush_curve(self) -> None:
        """Read the curve's values off the device, once per run, into the report."""
        if not self._pending:
            return
        values = torch.stack([t for _, _, t in self._pending]).to("cpu", torch.float64).tolist()
        for (step, sigma, _), (u, g, ratio) in zip(self._pending, values):
            self.report.curve.append({"step": step, "sigma": sigma, "rms_uncond": u, "rms_guidance": g,
                                      "ratio": ratio})
        self._pending = []


def patch_model(model, settings: TruncationSettings):
    """A clone of ``model`` with truncated guidance attached, and its controller."""
    import comfy.patcher_extension as pe

    controller = TruncationController(settings)
    patched = model.clone()
    for kind, fn in ((pe.WrappersMP.SAMPLER_SAMPLE, controller.sampler_sample_wrapper),
                     (pe.WrappersMP.CALC_COND_BATCH, controller.calc_cond_batch_wrapper)):
        patched.remove_wrappers_with_key(kind, WRAPPER_KEY)  # applying twice replaces, never stacks
        patched.add_wrapper_with_key(kind, WRAPPER_KEY, fn)
    return patched, controller
