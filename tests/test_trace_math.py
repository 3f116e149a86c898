"""Tier 1: frequency curves over a run, charts and file names (no ComfyUI)."""

import json
import math

import numpy as np
import pytest
import torch

from shapefirst import chart, frequency, trace


def _smooth_latent(seed=0, shape=(2, 4, 32, 32)):
    """Mostly low-frequency content, like a real latent: blurred noise plus a little detail."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(shape[0], shape[1], 4, 4, generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=shape[-2:], mode="bicubic", align_corners=False)
    return smooth + 0.05 * torch.randn(shape, generator=g)


def _eps_schedule(n=10):
    sigmas = torch.linspace(14.6, 0.03, n)
    c_in = 1 / torch.sqrt(sigmas**2 + 1)
    return sigmas.tolist(), c_in.tolist(), (sigmas * c_in).tolist()


def test_forward_curves_match_a_direct_computation():
    x0 = _smooth_latent()
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    sigmas, a, b = _eps_schedule()
    xt = [a[i] * x0 + b[i] * eps for i in range(len(sigmas))]
    c = trace.compute_curves(xt, xt, x0, eps, a, b, sigmas, 0.2)
    x0_low, x0_high = frequency.split(x0, 0.2)
    for i in (0, 4, 9):
        t_low, t_high = frequency.split(a[i] * x0 + b[i] * eps, 0.2)
        want_high = ((t_high - x0_high).flatten(1).norm(dim=1) / x0_high.flatten(1).norm(dim=1)).mean().item()
        want_low = ((t_low - x0_low).flatten(1).norm(dim=1) / x0_low.flatten(1).norm(dim=1)).mean().item()
        assert math.isclose(c.curves["ratio_forward_high"][i], want_high, rel_tol=1e-4)
        assert math.isclose(c.curves["ratio_forward_low"][i], want_low, rel_tol=1e-4)
        # x_t here IS the forward process, so the denoising ratios equal the forward ones
        assert math.isclose(c.curves["ratio_denoise_high"][i], want_high, rel_tol=1e-4)
        rms_noise_high = (b[i] * frequency.split(eps, 0.2)[1]).pow(2).flatten(1).mean(1).sqrt().mean().item()
        assert math.isclose(c.curves["forward_noise_high"][i], rms_noise_high, rel_tol=1e-4)


def test_noise_drowns_high_frequencies_first():
    # Finding 1: at the same noise level the high band is far more perturbed than the low band
    x0 = _smooth_latent(seed=2)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    sigmas, a, b = _eps_schedule(20)
    c = trace.compute_curves([x0] * 20, [x0] * 20, x0, eps, a, b, sigmas, 0.2)
    for lo, hi in zip(c.curves["ratio_forward_low"], c.curves["ratio_forward_high"]):
        assert hi > 2 * lo
    # the ratio falls as noise falls
    r = c.curves["ratio_forward_high"]
    assert all(r[i] > r[i + 1] for i in range(len(r) - 1))


def test_a_run_that_already_sits_at_x0_has_zero_denoising_ratio():
    x0 = _smooth_latent(seed=4)
    sigmas, a, b = _eps_schedule(5)
    c = trace.compute_curves([x0] * 5, [x0] * 5, x0, torch.zeros_like(x0), a, b, sigmas, 0.2)
    assert max(c.curves["ratio_denoise_low"] + c.curves["ratio_denoise_high"]) < 1e-6
    assert c.curves["denoise_x0pred_low"][0] > c.curves["denoise_x0pred_high"][0]


def test_exports_are_complete_and_consistent():
    x0 = _smooth_latent(seed=5, shape=(1, 4, 8, 8))
    sigmas, a, b = _eps_schedule(3)
    c = trace.compute_curves([x0] * 3, [x0] * 3, x0, x0, a, b, sigmas, 0.3)
    data = json.loads(json.dumps(c.as_dict()))
    assert data["steps"] == 3 and data["low_fraction"] == 0.3
    assert set(data["curves"]) == set(trace.CURVE_LABELS)
    assert all(len(v) == 3 for v in data["curves"].values())
    lines = c.as_csv().strip().split("\n")
    assert len(lines) == 4 and lines[0].split(",")[:2] == ["step", "sigma"]
    assert len(lines[1].split(",")) == 2 + len(trace.CURVE_LABELS)


def test_mismatched_lengths_are_refused():
    x0 = torch.zeros(1, 4, 8, 8)
    with pytest.raises(ValueError, match="one value per step"):
        trace.compute_curves([x0], [x0, x0], x0, x0, [1.0], [0.0], [1.0])
    with pytest.raises(ValueError, match="no sampling step"):
        trace.compute_curves([], [], x0, x0, [], [], [])


def test_chart_renders_lines_where_the_data_is():
    img = chart.render_panels([chart.Panel("t", [chart.Series("up", [0.0, 1.0, 2.0, 3.0])])], 300, 240)
    assert img.shape == (240, 300, 3) and img.dtype == np.float32
    assert 0.0 <= img.min() and img.max() <= 1.0
    # the default first colour is drawn somewhere in the plot
    blue = (np.abs(img - np.array([31, 119, 180]) / 255).sum(-1) < 0.05)
    assert blue.sum() > 50
    ys, xs = np.nonzero(blue[:150])  # above the legend
    # a rising series: left pixels are lower on the image (larger y) than right ones
    left, right = ys[xs < xs.min() + 20].mean(), ys[xs > xs.max() - 20].mean()
    assert left > right


def test_nice_ticks_cover_the_range():
    for lo, hi in [(0, 1), (0.013, 0.9), (-3, 250), (5, 5)]:
        t = chart.nice_ticks(lo, hi)
        assert t[0] <= lo and t[-1] >= hi and len(t) >= 2
