"""Frequency curves over a sampling run (the paper's Fig. 2b and 2c).

Inputs are plain tensors recorded during sampling, in the paper's variance-preserving form
``x_t = a_t * x_0 + b_t * eps`` (for SD's eps/v models ``a_t = 1/sqrt(1+sigma^2)`` and
``b_t = sigma/sqrt(1+sigma^2)``; for flow models ``a_t = 1-sigma``, ``b_t = sigma``). The
ComfyUI glue converts its sampler state into this form; nothing here knows about ComfyUI.

Norms are per sample and averaged over the batch. Displayed norms are RMS (L2 / sqrt(numel))
so they do not depend on the latent size; ratios are plain L2 ratios.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .frequency import rms, split

CURVE_LABELS = {
    "denoise_xt_low": "denoising: RMS of x_t low",
    "denoise_xt_high": "denoising: RMS of x_t high",
    "denoise_x0pred_low": "denoising: RMS of predicted x_0 low",
    "denoise_x0pred_high": "denoising: RMS of predicted x_0 high",
    "forward_signal_low": "forward: RMS of a_t * x_0 low",
    "forward_signal_high": "forward: RMS of a_t * x_0 high",
    "forward_noise_low": "forward: RMS of b_t * eps low",
    "forward_noise_high": "forward: RMS of b_t * eps high",
    "ratio_denoise_low": "denoising: |x_t low - x_0 low| / |x_0 low|",
    "ratio_denoise_high": "denoising: |x_t high - x_0 high| / |x_0 high|",
    "ratio_forward_low": "forward: |x_t low - x_0 low| / |x_0 low|",
    "ratio_forward_high": "forward: |x_t high - x_0 high| / |x_0 high|",
}


def _l2(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float32).flatten(1).norm(dim=1)


def _ratio(diff: torch.Tensor, ref_norm: torch.Tensor) -> float:
    # per-sample ratio, averaged over the batch; a zero reference gives 0/eps -> large, not NaN
    return float((_l2(diff) / ref_norm.clamp_min(1e-12)).mean())


@dataclass
class FrequencyCurves:
    """Curves over sampling steps, each a list with one value per step."""

    sigmas: list[float]
    low_fraction: float
    curves: dict[str, list[float]] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return len(self.sigmas)

    def as_dict(self) -> dict:
        return {
            "steps": self.steps,
            "sigmas": self.sigmas,
            "low_fraction": self.low_fraction,
            "labels": {k: CURVE_LABELS[k] for k in self.curves},
            "curves": self.curves,
        }

    def as_csv(self) -> str:
        keys = list(self.curves)
        rows = ["step,sigma," + ",".join(keys)]
        for i in range(self.steps):
            vals = [f"{self.curves[k][i]:.8g}" for k in keys]
            rows.append(f"{i},{self.sigmas[i]:.8g}," + ",".join(vals))
        return "\n".join(rows) + "\n"


def compute_curves(
    xt: list[torch.Tensor],
    x0_pred: list[torch.Tensor],
    x0_final: torch.Tensor,
    noise: torch.Tensor,
    signal_coef: list[float],
    noise_coef: list[float],
    sigmas: list[float],
    low_fraction: float = 0.2,
    on_step: Callable[[int], None] | None = None,
) -> FrequencyCurves:
    """Build every curve of Fig. 2b/2c for one run.

    xt[i]: the sampler state at step i in variance-preserving form (a_i x_0 + b_i eps scale).
    x0_pred[i]: the model's prediction of x_0 at step i. x0_final: the sampled result.
    noise: the run's initial noise eps, used for the forward noising of ``x0_final`` with the
    same coefficients ``signal_coef[i]`` (a_i) and ``noise_coef[i]`` (b_i).
    ``on_step(i)`` is called after each step's curves (for progress bars).
    """
    n = len(sigmas)
    if not (len(xt) == len(x0_pred) == len(signal_coef) == len(noise_coef) == n):
        raise ValueError(
            f"one value per step expected: {len(xt)} x_t, {len(x0_pred)} x0 predictions, "
            f"{len(signal_coef)}/{len(noise_coef)} coefficients, {n} sigmas"
        )
    if n == 0:
        raise ValueError("no sampling step was recorded")
    x0_low, x0_high = split(x0_final.to(torch.float32), low_fraction)
    eps_low, eps_high = split(noise.to(torch.float32), low_fraction)
    ref_low, ref_high = _l2(x0_low), _l2(x0_high)

    out: dict[str, list[float]] = {k: [] for k in CURVE_LABELS}
    for i in range(n):
        xt_low, xt_high = split(xt[i].to(torch.float32), low_fraction)
        p_low, p_high = split(x0_pred[i].to(torch.float32), low_fraction)
        out["denoise_xt_low"].append(float(rms(xt_low).mean()))
        out["denoise_xt_high"].append(float(rms(xt_high).mean()))
        out["denoise_x0pred_low"].append(float(rms(p_low).mean()))
        out["denoise_x0pred_high"].append(float(rms(p_high).mean()))
        out["ratio_denoise_low"].append(_ratio(xt_low - x0_low, ref_low))
        out["ratio_denoise_high"].append(_ratio(xt_high - x0_high, ref_high))

        a, b = float(signal_coef[i]), float(noise_coef[i])
        out["forward_signal_low"].append(float(rms(a * x0_low).mean()))
        out["forward_signal_high"].append(float(rms(a * x0_high).mean()))
        out["forward_noise_low"].append(float(rms(b * eps_low).mean()))
        out["forward_noise_high"].append(float(rms(b * eps_high).mean()))
        out["ratio_forward_low"].append(_ratio((a - 1.0) * x0_low + b * eps_low, ref_low))
        out["ratio_forward_high"].append(_ratio((a - 1.0) * x0_high + b * eps_high, ref_high))
        if on_step is not None:
            on_step(i)
    return FrequencyCurves([float(s) for s in sigmas], float(low_fraction), out)
