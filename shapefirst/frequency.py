"""Low/high frequency split of images and latents (the paper's Section 4.2).

"Low frequency" is the ``low_fraction`` of the centred 2-D spectrum closest to its centre
(radial, in normalised frequency units, per channel), as in the paper (20% by default); the
rest is "high". The split is exact: ``low + high == x`` up to float rounding.

Every function works on any tensor whose last two dims are (height, width): 4-D SD latents
(B, C, H, W), 16-channel latents, 5-D video latents (B, C, T, H, W) and odd sizes. Work is
done in float32 and returned in the input dtype.
"""

from __future__ import annotations

import functools

import torch

# Spatial slices processed per FFT call: bounds peak memory on very large inputs to about the
# size of one chunk's spectrum on top of the input and the two outputs.
_CHUNK_ELEMENTS = 1 << 24


def _check_fraction(low_fraction: float) -> None:
    if not (0.0 < float(low_fraction) < 1.0):
        raise ValueError(f"low_fraction must be strictly between 0 and 1, got {low_fraction}")


@functools.lru_cache(maxsize=64)
def _full_mask_cpu(height: int, width: int, low_fraction: float) -> torch.Tensor:
    """Boolean (H, W) mask, in unshifted FFT order, of the ``low_fraction`` lowest bins.

    Bins are ranked by radial normalised frequency ``(ku/H)^2 + (kv/W)^2`` computed exactly in
    integers, so rings of equal radius tie exactly. Ties are broken by keeping each bin next to
    its mirror bin (-ku, -kv), and the cut never separates a bin from its mirror: the mask is
    Hermitian-symmetric, so the low part of a real signal is real. It holds
    ``round(low_fraction * H * W)`` bins, or one more when a mirror pair straddles the cut.
    """
    ku = torch.fft.fftfreq(height, d=1.0 / height).round().to(torch.int64)  # 0, 1, ..., -1
    kv = torch.fft.fftfreq(width, d=1.0 / width).round().to(torch.int64)
    r2 = (ku[:, None] ** 2) * (width**2) + (kv[None, :] ** 2) * (height**2)
    r2 = r2.flatten()
    idx = torch.arange(height * width, dtype=torch.int64)
    row, col = idx // width, idx % width
    mirror = ((-row) % height) * width + ((-col) % width)
    pair = torch.minimum(idx, mirror)
    # lexicographic sort by (radius, pair id, index): stable sorts from the last key up
    order = torch.argsort(pair, stable=True)
    order = order[torch.argsort(r2[order], stable=True)]
    k = int(round(low_fraction * height * width))
    k = min(max(k, 1), height * width)
    chosen = order[:k]
    if k < height * width:
        last = chosen[-1]
        if mirror[last] != last and not bool((chosen == mirror[last]).any()):
            chosen = order[: k + 1]
    mask = torch.zeros(height * width, dtype=torch.bool)
    mask[chosen] = True
    return mask.view(height, width)


def low_frequency_mask(height: int, width: int, low_fraction: float = 0.2, device=None) -> torch.Tensor:
    """Boolean (H, W) mask of the low-frequency bins in unshifted FFT order."""
    _check_fraction(low_fraction)
    if height < 1 or width < 1:
        raise ValueError(f"spatial size must be positive, got {height}x{width}")
    mask = _full_mask_cpu(int(height), int(width), float(low_fraction))
    return mask.to(device) if device is not None else mask


def centred(mask_or_spectrum: torch.Tensor) -> torch.Tensor:
    """fftshift over the last two dims, for display (DC in the middle)."""
    return torch.fft.fftshift(mask_or_spectrum, dim=(-2, -1))


def _chunks(flat: torch.Tensor):
    per = max(1, _CHUNK_ELEMENTS // max(1, flat.shape[-1] * flat.shape[-2]))
    for start in range(0, flat.shape[0], per):
        yield start, flat[start : start + per]


def split(x: torch.Tensor, low_fraction: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``x`` into (low, high) over its last two dims; ``low + high`` reproduces ``x``.

    ``high`` is computed as ``x - low`` in float32, so the reconstruction error is float32
    rounding of one subtraction. Returns tensors in ``x``'s dtype and device.
    """
    _check_fraction(low_fraction)
    if x.ndim < 2:
        raise ValueError(f"expected a tensor with at least 2 dims (..., H, W), got shape {tuple(x.shape)}")
    if not (x.is_floating_point()):
        raise ValueError(f"expected a floating-point tensor, got {x.dtype}")
    height, width = x.shape[-2], x.shape[-1]
    mask = low_frequency_mask(height, width, low_fraction, device=x.device)
    half_mask = mask[:, : width // 2 + 1].to(torch.float32)
    flat = x.reshape(-1, height, width)
    low = torch.empty(flat.shape, dtype=x.dtype, device=x.device)
    high = torch.empty(flat.shape, dtype=x.dtype, device=x.device)
    for start, chunk in _chunks(flat):
        c32 = chunk.to(torch.float32)
        spec = torch.fft.rfft2(c32)
        spec.mul_(half_mask)
        lo = torch.fft.irfft2(spec, s=(height, width))
        del spec
        low[start : start + chunk.shape[0]] = lo.to(x.dtype)
        high[start : start + chunk.shape[0]] = (c32 - lo).to(x.dtype)
    return low.view(x.shape), high.view(x.shape)


def power_spectrum(x: torch.Tensor) -> torch.Tensor:
    """|F(u, v)|^2 over the last two dims with the paper's normalisation F = (1/MN) sum x e^{...}.

    For unit white Gaussian noise every bin has expectation 1/(MN) (Proposition 1).
    """
    spec = torch.fft.fft2(x.to(torch.float32), norm="forward")
    return spec.real**2 + spec.imag**2


def rms(x: torch.Tensor, dims: tuple[int, ...] | None = None) -> torch.Tensor:
    """Root mean square over ``dims`` (all dims but the first when None): a size-free norm."""
    x = x.to(torch.float32)
    if dims is None:
        dims = tuple(range(1, x.ndim))
    return x.pow(2).mean(dim=dims).sqrt()
