"""Tier 1: the frequency split on seeded CPU tensors (no ComfyUI)."""

import math

import pytest
import torch

from shapefirst import frequency


def _seeded(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype)


@pytest.mark.parametrize("shape", [(2, 4, 64, 64), (1, 16, 32, 48), (1, 4, 3, 17, 23), (3, 3, 7, 5), (9, 11)])
def test_low_plus_high_reproduces_input(shape):
    x = _seeded(*shape) * 3.0
    low, high = frequency.split(x, 0.2)
    assert low.shape == x.shape and high.shape == x.shape
    assert (low + high - x).abs().max().item() <= 1e-5


def test_parts_are_genuinely_different_bands():
    x = _seeded(1, 4, 64, 64)
    low, high = frequency.split(x, 0.2)
    spec_low = torch.fft.fft2(low)
    spec_high = torch.fft.fft2(high)
    mask = frequency.low_frequency_mask(64, 64, 0.2)
    # the low part has no energy outside the mask, the high part none inside it
    assert spec_low[..., ~mask].abs().max() < 1e-3
    assert spec_high[..., mask].abs().max() < 1e-3
    assert low.abs().mean() > 0.05 and high.abs().mean() > 0.05


def test_parseval_energy_splits_between_the_bands():
    x = _seeded(2, 4, 40, 56, seed=3)
    low, high = frequency.split(x, 0.3)
    # orthogonal projections: energies add up (Parseval) and the cross term vanishes
    e_x, e_l, e_h = (t.pow(2).sum().item() for t in (x, low, high))
    assert math.isclose(e_l + e_h, e_x, rel_tol=1e-5)
    assert abs((low * high).sum().item()) < 1e-3 * e_x
    # and the spatial energy equals the spectral energy with the paper's normalisation
    ps = frequency.power_spectrum(x)
    assert math.isclose(ps.sum().item() * 40 * 56, e_x, rel_tol=1e-5)


def test_constant_image_is_all_low():
    x = torch.full((1, 3, 33, 20), 0.7)
    low, high = frequency.split(x, 0.2)
    assert torch.allclose(low, x, atol=1e-6)
    assert high.abs().max() < 1e-6


def test_pixel_checkerboard_is_all_high():
    i = torch.arange(32)
    board = ((i[:, None] + i[None, :]) % 2).float() * 2 - 1  # +1/-1 at Nyquist in both axes
    x = board.expand(1, 4, 32, 32).clone()
    low, high = frequency.split(x, 0.2)
    assert low.abs().max() < 1e-6
    assert torch.allclose(high, x, atol=1e-6)


@pytest.mark.parametrize("h,w,f", [(64, 64, 0.2), (17, 23, 0.2), (8, 8, 0.5), (128, 96, 0.05), (5, 1, 0.4)])
def test_mask_holds_the_requested_fraction_and_is_symmetric(h, w, f):
    mask = frequency.low_frequency_mask(h, w, f)
    want = round(f * h * w)
    assert want <= int(mask.sum()) <= want + 1
    mirrored = torch.roll(torch.flip(mask, dims=(0, 1)), shifts=(1, 1), dims=(0, 1))
    assert torch.equal(mask, mirrored)  # mask[-u, -v] == mask[u, v]
    assert mask[0, 0]  # DC is always low


def test_mask_is_radial_about_the_centre():
    mask = frequency.centred(frequency.low_frequency_mask(64, 64, 0.2))
    yy, xx = torch.meshgrid(torch.arange(64) - 32, torch.arange(64) - 32, indexing="ij")
    r = (yy**2 + xx**2).float().sqrt()
    # every low bin is at least as close to the centre as every high bin
    assert r[mask].max() <= r[~mask].min() + 1e-6


def test_proposition_1_white_noise_has_a_flat_spectrum():
    m, n = 32, 32
    x = _seeded(4000, m, n, seed=7)
    ps = frequency.power_spectrum(x).mean(dim=0)  # expectation per bin
    expected = 1.0 / (m * n)
    assert (ps / expected - 1).abs().max() < 0.12  # 4000 samples: ~2% std per bin
    assert math.isclose(ps.mean().item(), expected, rel_tol=0.01)


def test_white_noise_energy_is_spread_like_the_bins():
    # noise energy falls in each band in proportion to the band's bins: 20% low, 80% high
    x = _seeded(64, 4, 64, 64, seed=11)
    low, high = frequency.split(x, 0.2)
    share = low.pow(2).sum() / x.pow(2).sum()
    assert abs(share.item() - 0.2) < 0.01


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_in_half_precision_out(dtype):
    x = _seeded(1, 4, 16, 16, dtype=dtype)
    low, high = frequency.split(x, 0.2)
    assert low.dtype == dtype and high.dtype == dtype
    ref_low, _ = frequency.split(x.float(), 0.2)
    assert (low.float() - ref_low).abs().max() < 2e-2


def test_chunked_processing_matches_single_pass(monkeypatch):
    x = _seeded(6, 4, 16, 16, seed=5)
    whole = frequency.split(x, 0.25)
    monkeypatch.setattr(frequency, "_CHUNK_ELEMENTS", 16 * 16 * 3)  # 3 slices per FFT call
    chunked = frequency.split(x, 0.25)
    assert torch.equal(whole[0], chunked[0]) and torch.equal(whole[1], chunked[1])


def test_input_is_not_modified():
    x = _seeded(2, 4, 16, 16)
    before = x.clone()
    frequency.split(x, 0.2)
    assert torch.equal(x, before)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_bad_fraction_is_refused(bad):
    with pytest.raises(ValueError, match="low_fraction"):
        frequency.split(torch.zeros(1, 1, 4, 4), bad)


def test_bad_rank_and_dtype_are_refused():
    with pytest.raises(ValueError, match="at least 2 dims"):
        frequency.split(torch.zeros(5), 0.2)
    with pytest.raises(ValueError, match="floating-point"):
        frequency.split(torch.zeros(1, 4, 4, dtype=torch.int64), 0.2)
