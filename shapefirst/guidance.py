"""Truncated classifier-free guidance (the paper's eq. 9) as a pure schedule object.

``GuidanceWindow`` holds the user's settings, validated once when it is built (like the guiders
of diffusers: a validated start/stop and ``is_enabled``). ``window.plan(sigmas)`` turns them
into a ``TruncationSchedule`` for one sampling run: which steps of the sampled sigmas are guided.

Two units for the window:

* ``steps``: ``[start, end)`` is a fraction of the steps actually sampled. With n steps, steps
  ``round(start*n) .. round(end*n) - 1`` run both passes (normal CFG) and the others a single
  prediction. The paper's "a" (final steps without text) is ``n - round(end*n)`` for a window
  starting at 0: ``end = 0.4`` gives a = 30 of 50 (DDIM) and 15 of 25 (DPM-Solver), as in Table 2.
* ``sigma``: ``[sigma_low, sigma_high]`` is a range of noise levels (Kynkaenniemi et al. 2024);
  step i is guided when its sigma ``sigmas[i]`` lies in it. The same range then means the same
  thing across chained samplers, denoise < 1 and any scheduler.

Samplers may evaluate the model several times per step, at noise levels between two schedule
entries (heun, dpm_2, dpmpp_2s_ancestral, dpmpp_sde...). Each evaluation belongs to the step
whose sigma interval ``(sigma[i+1], sigma[i]]`` contains its sigma, so a step is guided or not as
a whole. An evaluation exactly at the boundary sigma belongs to the later step (e.g. heun's
second evaluation of the last guided step is already outside a window that ends there).

Adaptive mode guides from the window's start until the first step whose relative guidance
strength (the paper's Fig. 8b) falls below a threshold; the window's end is then ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# Relative tolerance when comparing an evaluation's sigma with schedule entries: samplers pass
# sigmas through float32 arithmetic, so "equal" can differ in the last bits.
SIGMA_RTOL = 1e-5

UNITS_STEPS = "steps"
UNITS_SIGMA = "sigma"
TAIL_UNCOND = "uncond"
TAIL_COND = "cond"
MODE_FIXED = "fixed"
MODE_ADAPTIVE = "adaptive"


class WindowError(ValueError):
    """A bad window setting; ``field`` names the input at fault."""

    def __init__(self, field_name: str, message: str):
        super().__init__(message)
        self.field = field_name


def _finite(v) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class GuidanceWindow:
    """Where guidance runs. Validated on construction (raises WindowError). The field defaults are the
    nodes' defaults (``DEFAULT_WINDOW``): every default of the window lives here."""

    start: float = 0.0  # fractions of the sampled steps (units 'steps')
    end: float = 0.4
    tail: str = TAIL_UNCOND  # which branch is kept outside the window
    mode: str = MODE_FIXED
    threshold: float = 0.1  # adaptive mode: relative guidance strength that stops guidance
    cfg: float = 7.5  # the guidance scale w, for the strength curve (the guider's own cfg replaces it)
    units: str = UNITS_STEPS
    sigma_low: float = 2.4  # units 'sigma': guided noise levels, inclusive; 2.4 is about where the
    sigma_high: float = 1000.0  # paper's default window ends on SD1.x/SDXL; 1000: from the first step

    def __post_init__(self):
        if self.units not in (UNITS_STEPS, UNITS_SIGMA):
            raise WindowError("window_units", f"window_units must be '{UNITS_STEPS}' or '{UNITS_SIGMA}' "
                                              f"(got {self.units!r}).")
        if self.units == UNITS_STEPS:
            for name, v in (("guidance_start", self.start), ("guidance_end", self.end)):
                if not _finite(v) or not 0.0 <= float(v) <= 1.0:
                    raise WindowError(name, f"{name} must be a fraction between 0 and 1 (got {v}).")
            if self.start > self.end:
                raise WindowError("guidance_start", f"guidance_start ({self.start}) is after guidance_end "
                                                    f"({self.end}); swap them, or set start 0 / end 0.4 for the "
                                                    "paper's default window.")
        else:
            for name, v in (("sigma_low", self.sigma_low), ("sigma_high", self.sigma_high)):
                if v is None or math.isnan(float(v)) or float(v) < 0:
                    raise WindowError(name, f"{name} must be a noise level >= 0 (got {v}).")
            if self.sigma_low > self.sigma_high:
                raise WindowError("sigma_low", f"sigma_low ({self.sigma_low}) is above sigma_high "
                                               f"({self.sigma_high}); swap them: guidance runs for noise levels "
                                               "between sigma_low and sigma_high.")
        if self.tail not in (TAIL_UNCOND, TAIL_COND):
            raise WindowError("tail", f"tail must be '{TAIL_UNCOND}' or '{TAIL_COND}' (got {self.tail!r}).")
        if self.mode not in (MODE_FIXED, MODE_ADAPTIVE):
            raise WindowError("window", f"window must be '{MODE_FIXED}' or '{MODE_ADAPTIVE}' (got {self.mode!r}).")
        if self.mode == MODE_ADAPTIVE and not (_finite(self.threshold) and float(self.threshold) > 0):
            raise WindowError("adaptive_threshold", f"adaptive_threshold must be > 0 in adaptive mode (got "
                                                    f"{self.threshold}); try 0.1, or switch window to 'fixed'.")

    @property
    def keep(self) -> int:
        """Index of the branch computed outside the window in ComfyUI's [cond, uncond] order."""
        return 1 if self.tail == TAIL_UNCOND else 0

    def check_model_range(self, sigma_min: float, sigma_max: float) -> None:
        """Raise WindowError if a sigma window misses the model's noise range entirely."""
        if self.units != UNITS_SIGMA:
            return
        if self.sigma_low > sigma_max * (1 + SIGMA_RTOL) or self.sigma_high < sigma_min * (1 - SIGMA_RTOL):
            raise WindowError("sigma_low" if self.sigma_low > sigma_max else "sigma_high",
                              f"the window [{self.sigma_low:g}, {self.sigma_high:g}] lies outside this model's "
                              f"noise range [{sigma_min:.4g}, {sigma_max:.4g}]; choose sigma_low and sigma_high "
                              "inside it (the window guides the steps whose sigma lies between them).")

    def plan(self, sigmas: list[float]) -> "TruncationSchedule":
        """The schedule of one sampling run over ``sigmas`` (n+1 descending values for n steps)."""
        n = len(sigmas) - 1
        if n < 1:
            raise ValueError("a schedule needs at least two sigmas")
        if self.units == UNITS_STEPS:
            first, stop = window_steps(n, self.start, 1.0 if self.mode == MODE_ADAPTIVE else self.end)
        else:
            high = math.inf if not math.isfinite(self.sigma_high) else self.sigma_high * (1 + SIGMA_RTOL)
            low = -1.0 if self.mode == MODE_ADAPTIVE else self.sigma_low * (1 - SIGMA_RTOL)
            inside = [i for i in range(n) if low <= sigmas[i] <= high]
            first, stop = (inside[0], inside[-1] + 1) if inside else (n, n)
        return TruncationSchedule(self, list(sigmas), first, stop)


DEFAULT_WINDOW = GuidanceWindow()


def window_steps(n_steps: int, start: float, end: float) -> tuple[int, int]:
    """First guided step and one past the last, for fractions ``0 <= start <= end <= 1``."""
    if n_steps < 1:
        raise WindowError("steps", f"steps must be at least 1 (got {n_steps}).")
    GuidanceWindow(start=start, end=end)  # the one window check
    return int(round(start * n_steps)), int(round(end * n_steps))


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


@dataclass
class TruncationSchedule:
    """Which steps of one run are guided: ``first <= step < stop``, and before an adaptive stop."""

    window: GuidanceWindow
    sigmas: list[float]
    first: int
    stop: int
    adaptive_stop: int | None = None

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    @property
    def guided_steps(self) -> list[int]:
        return [i for i in range(self.steps) if self.is_enabled(i)]

    def step_of(self, sigma: float) -> int:
        return step_of_sigma(sigma, self.sigmas)

    def is_enabled(self, step: int) -> bool:
        """Whether guidance (both passes) runs at ``step``."""
        if self.adaptive_stop is not None and step >= self.adaptive_stop:
            return False
        return self.first <= step < self.stop

    def is_guided(self, sigma: float) -> bool:
        """Whether an evaluation at ``sigma`` belongs to a guided step."""
        return self.is_enabled(self.step_of(sigma))

    def observe(self, step: int, max_ratio: float) -> None:
        """Adaptive mode: stop after ``step`` once every image's strength ratio is below the threshold."""
        w = self.window
        if w.mode == MODE_ADAPTIVE and self.adaptive_stop is None and max_ratio < w.threshold:
            self.adaptive_stop = step + 1


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
class RunRecord:
    """What one sampling run (or several chained runs of one prompt) computed."""

    evaluations: int = 0  # calls to the model's conditional batch (one per evaluation)
    guided: int = 0  # evaluations that ran both passes
    skipped_passes: int = 0  # text-conditional (or unconditional, tail 'cond') passes not computed
    single_pass: int = 0  # evaluations with one pass only anyway (cfg 1, guidance-distilled models)
    other_guiders: int = 0  # evaluations of guiders whose branches truncation does not know (PerpNeg), left untouched
    rows_computed: int = 0  # model batch rows actually run
    rows_full_cfg: int = 0  # rows plain CFG would have run
    stop_step: int | None = None  # adaptive mode: first step without guidance
    steps: int = 0
    runs: int = 1
    curve: list[dict] = field(default_factory=list)  # per guided step: sigma, rms_uncond, rms_guidance, ratio

    @property
    def saved_fraction(self) -> float:
        """Share of plain CFG's model work not done (rows not computed / rows plain CFG runs)."""
        if self.rows_full_cfg == 0:
            return 0.0
        return max(0.0, 1.0 - self.rows_computed / self.rows_full_cfg)

    @property
    def note(self) -> str:
        """Why nothing (or less than expected) was skipped, in plain words; '' when nothing to say."""
        parts = []
        if self.single_pass:
            parts.append(f"{self.single_pass} of {self.evaluations} evaluations ran one pass only (cfg = 1 or a "
                         "guidance-distilled model): there was no second pass to skip")
        if self.other_guiders:
            parts.append(f"{self.other_guiders} evaluations came from a guider with more than two conditionings "
                         "other than DualCFGGuider (PerpNegGuider...): left exact, nothing skipped")
        if self.evaluations and not self.skipped_passes and not parts:
            parts.append("every step was inside the guidance window: nothing to skip")
        return "; ".join(parts)

    def extend(self, other: "RunRecord") -> None:
        """Append a later run of the same prompt (chained samplers): counts add, steps continue."""
        for name in ("evaluations", "guided", "skipped_passes", "single_pass", "other_guiders", "rows_computed",
                     "rows_full_cfg"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        if self.stop_step is None and other.stop_step is not None:
            self.stop_step = other.stop_step + self.steps
        self.curve.extend(dict(p, step=p["step"] + self.steps) for p in other.curve)
        self.steps += other.steps
        self.runs += other.runs

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
            "runs": self.runs,
            "note": self.note,
        }
