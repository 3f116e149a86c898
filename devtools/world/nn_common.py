"""Layers the compact networks share (pure torch)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class PaddedLayerNorm(nn.Module):
    """LayerNorm of a ``full``-wide vector whose last ``full - n`` entries are zeros, computed on
    the first ``n`` entries only (weight and bias of the missing entries are zero, so their output
    is zero too): exactly what a LayerNorm over the zero-padded full width gives."""

    def __init__(self, n: int, full: int, eps: float = 1e-5):
        super().__init__()
        self.n, self.full, self.eps = n, full, eps
        self.weight = nn.Parameter(torch.ones(n))
        self.bias = nn.Parameter(torch.zeros(n))

    def forward(self, x):
        if self.n == self.full:
            return F.layer_norm(x, (self.n,), self.weight, self.bias, self.eps)
        mean = x.sum(-1, keepdim=True) / self.full
        d = x - mean
        var = ((d * d).sum(-1, keepdim=True) + (self.full - self.n) * mean * mean) / self.full
        return d * torch.rsqrt(var + self.eps) * self.weight + self.bias


def attention(q, k, v, heads: int, causal: bool = False):
    """Multi-head scaled dot-product attention on (B, N, heads * d) tensors."""
    b, n, _ = q.shape
    q, k, v = (t.view(b, -1, heads, t.shape[-1] // heads).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return out.transpose(1, 2).reshape(b, n, -1)


def timestep_embedding(t, dim: int = 320, max_period: float = 10000.0):
    """Sinusoidal timestep features, as ComfyUI's UNet computes them (cos first, then sin)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)
