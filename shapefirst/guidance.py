"""Truncated classifier-free guidance (the paper's eq. 9) as plain schedule arithmetic.

A guidance window ``[start, end)`` is a fraction of the sampled steps: with n steps, steps
``round(start*n) .. round(end*n) - 1`` run the text-conditional pass (normal CFG) and the others
use a single prediction (the unconditional one in the paper). The paper's "a" (the number of
final steps without text) is ``n - round(end*n)`` for a window starting at 0: the default
``end = 0.4`` gives a = 30 of 50 (DDIM) and a = 15 of 25 (DPM-Solver), as in Table 2.

Samplers may evaluate the model several times per step, at noise levels between two schedule
entries (heun, dpm_2, dpmpp_2s_ancestral, dpmpp_sde...). Each evaluation belongs to the step
whose sigma interval ``(sigma[i+1], sigma[i]]`` contains its sigma, so a window means the same
noise range for every sampler. At the window's edges that interval rule decides: an evaluation
exactly at the boundary sigma belongs to the later step (e.g. heun's second evaluation of the
last guided step is already outside a window that ends there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# Relative tolerance when comparing an evaluation's sigma with schedule entries: samplers pass
# sigmas through float32 arithmetic, so "equal" can differ in the last bits.
SIGMA_RTOL = 1e-5


def window_steps(n_steps: int, start: float, end: float) -> tuple[int, int]:
    """First guided step and one past the last, for fractions ``0 <= start <= end <= 1``."""
    check_window(start, end)
    if n_steps < 1:
        raise ValueError(f"steps must be at least 1, got {n_steps}")
    return int(round(start * n_steps)), int(round(end * n_steps))


def check_window(start: float, end: float) -> None:
    for name, v in (("start", start), ("end", end)):
        if v is None or not (0.0 <= float(v) <= 1.0) or math.isnan(float(v)):
            raise ValueError(f"window {name} must be a fraction between 0 and 1, got {v}")
    if start > end:
        raise ValueError(f"window start ({start}) is after its end ({end})")


def step_of_sigma(sigma: float, schedule: list[float]) -> int:
    """Index i of the step whose interval (schedule[i+1], schedule[i]] contains ``sigma``.

    ``schedule`` holds n+1 descending sigmas for n steps. A sigma above schedule[0] (a sampler
    that adds noise first, s_churn) belongs to step 0; one at or below the last entry to step n-1.
    """
    n = len(schedule) - 1
    if n < 1:
        raise ValueError("a schedule needs at least two sigmas")
    # count the step starts at or above sigma: step i starts at schedule[i]
    count = sum(1 for s in schedule[:-1] if s * (1 + SIGMA_RTOL) >= sigma)
    return min(max(count - 1, 0), n - 1)


def in_window(sigma: float, schedule: list[float], first: int, stop: int) -> bool:
    """Whether an evaluation at ``sigma`` belongs to a guided step (first <= step < stop)."""
    return first <= step_of_sigma(sigma, schedule) < stop


def guidance_strength(cond, uncond, x, cfg: float):
    """Per-sample RMS of eps_u and of w*(eps_c - eps_u), and their ratio (the paper's Fig. 8b).

    ``cond`` and ``uncond`` are x0 predictions (ComfyUI applies CFG to denoised outputs), ``x``
    the model input; with eps = (x - x0)/sigma the sigma cancels in the ratio, and the RMS
    values below are in units of sigma (multiply by 1/sigma for eps units).
    Returns three tensors of shape (batch,).
    """
    diff = (uncond - cond).float().flatten(1)  # = sigma * (eps_c - eps_u)
    eps_u = (x - uncond).float().flatten(1)  # = sigma * eps_u
    g = abs(cfg) * diff.pow(2).mean(1).sqrt()
    u = eps_u.pow(2).mean(1).sqrt()
    return u, g, g / u.clamp_min(1e-12)


@dataclass
class Accounting:
    """What a run computed: model evaluations and the conditional passes skipped."""

    evaluations: int = 0  # calls to the model's conditional batch (one per evaluation)
    guided: int = 0  # evaluations that ran both passes
    skipped_passes: int = 0  # text-conditional (or unconditional, tail 'cond') passes not computed
    rows_computed: int = 0  # UNet batch rows actually run
    rows_full_cfg: int = 0  # rows plain CFG would have run
    stop_step: int | None = None  # adaptive mode: first step without guidance
    steps: int = 0
    curve: list[dict] = field(default_factory=list)  # per guided step: sigma, rms_uncond, rms_guidance, ratio

    @property
    def saved_fraction(self) -> float:
        """Share of plain CFG's UNet work not done (rows not computed / rows plain CFG runs)."""
        if self.rows_full_cfg == 0:
            return 0.0
        return 1.0 - self.rows_computed / self.rows_full_cfg

    def as_dict(self) -> dict:
        return {
            "steps": self.steps,
            "evaluations": self.evaluations,
            "guided_evaluations": self.guided,
            "skipped_passes": self.skipped_passes,
            "rows_computed": self.rows_computed,
            "rows_full_cfg": self.rows_full_cfg,
            "saved_fraction": self.saved_fraction,
            "stop_step": self.stop_step,
            "curve": self.curve,
        }
