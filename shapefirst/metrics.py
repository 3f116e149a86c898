"""The paper's attention metrics on plain tensors.

* ``class_shares``: per token class, the attention weight averaged over pixels, per step (Fig. 3);
* ``canny_edges`` + ``edge_f1``: how well the edges of an attention map match the edges of the
  final image (Fig. 1b uses F1_t relative to the last step);
* ``kl_per_step``: KL divergence between two captures' per-pixel token distributions (Fig. 16).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .tokens import ROLES


def class_shares(token_means: torch.Tensor, roles: list[str]) -> dict[str, list[float]]:
    """Sum of the pixel-averaged weights of each class's tokens, per step.

    ``token_means``: (S, T), each token's weight averaged over pixels; ``roles``: T roles.
    The classes' shares add up to the total weight (1 when all positions were recorded).
    Classes without tokens are left out."""
    if token_means.ndim != 2 or token_means.shape[1] != len(roles):
        raise ValueError(f"token_means {tuple(token_means.shape)} does not match {len(roles)} roles")
    out = {}
    for cls in ROLES:
        idx = [i for i, r in enumerate(roles) if r == cls]
        if idx:
            out[cls] = token_means[:, idx].sum(dim=1).tolist()
    return out


def normalize01(x: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each (H, W) map of (..., H, W) to [0, 1]; flat maps become 0."""
    lo = x.amin(dim=(-2, -1), keepdim=True)
    hi = x.amax(dim=(-2, -1), keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (x - lo) / span.clamp_min(1e-12), torch.zeros_like(x))


def canny_edges(images: torch.Tensor, low: float = 0.1, high: float = 0.2, sigma: float = 1.0) -> torch.Tensor:
    """Boolean edge maps (B, H, W) of (B, H, W) grey images in [0, 1] with kornia's Canny.

    kornia finds the weak and strong edge pixels (Gaussian blur, Sobel gradients, non-maximum
    suppression, the two thresholds); hysteresis then keeps every 8-connected group of edge
    pixels that holds a strong one, with scipy's labelling (kornia's iterative hysteresis
    takes seconds per 256 px image on a CPU). Each image goes through kornia alone: its
    non-maximum suppression breaks ties by the last bits of the blurred values, which differ
    between batch sizes, so a batched call would shift some edges by a pixel."""
    import kornia
    import numpy as np
    from scipy import ndimage

    if images.ndim != 3:
        raise ValueError(f"expected (B, H, W), got {tuple(images.shape)}")
    if not 0 <= low <= high:
        raise ValueError(f"need 0 <= low ({low}) <= high ({high})")
    out = torch.zeros(images.shape, dtype=torch.bool)
    eight = np.ones((3, 3), dtype=bool)
    for i in range(images.shape[0]):
        x = images[i:i + 1, None].to(torch.float32)
        _, levels = kornia.filters.canny(x, low_threshold=low, high_threshold=high, sigma=(sigma, sigma),
                                         hysteresis=False)
        levels = levels[0, 0].cpu().numpy()
        labels, n = ndimage.label(levels > 0, structure=eight)
        if n:
            keep = np.zeros(n + 1, dtype=bool)
            keep[np.unique(labels[levels > 0.75])] = True
            keep[0] = False
            out[i] = torch.from_numpy(keep[labels])
    return out


def _dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    if radius <= 0:
        return mask
    k = 2 * radius + 1
    return F.max_pool2d(mask[None, None].to(torch.float32), k, stride=1, padding=radius)[0, 0] > 0


def edge_f1(pred: torch.Tensor, target: torch.Tensor, tolerance: int = 0) -> float:
    """F1 of two (H, W) boolean edge maps; an edge pixel matches within ``tolerance`` pixels.

    Precision: share of ``pred`` edges near a ``target`` edge; recall: the reverse. Two empty
    maps agree (1.0); one empty map against edges scores 0."""
    if pred.shape != target.shape or pred.ndim != 2:
        raise ValueError(f"edge maps must be two (H, W) of one shape, got {tuple(pred.shape)}, {tuple(target.shape)}")
    pred, target = pred.bool(), target.bool()
    np_, nt = int(pred.sum()), int(target.sum())
    if np_ == 0 and nt == 0:
        return 1.0
    if np_ == 0 or nt == 0:
        return 0.0
    precision = int((pred & _dilate(target, tolerance)).sum()) / np_
    recall = int((target & _dilate(pred, tolerance)).sum()) / nt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def relative(values: list[float]) -> list[float | None]:
    """values / values[-1] (the paper's F1_t / F1 at the last step); None where undefined."""
    last = values[-1] if values else 0.0
    return [(v / last) if last else None for v in values]


def kl_per_step(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-8) -> list[float]:
    """Mean over pixels of KL(p || q) over the token axis, per step.

    ``p``, ``q``: (S, T, H, W) per-pixel distributions over T tokens (renormalised after
    adding ``eps``, so stored zeros and float16 rounding are harmless)."""
    if p.shape != q.shape or p.ndim != 4:
        raise ValueError(f"need two (S, T, H, W) tensors of one shape, got {tuple(p.shape)} and {tuple(q.shape)}")
    p = p.to(torch.float64).clamp_min(0) + eps
    q = q.to(torch.float64).clamp_min(0) + eps
    p = p / p.sum(dim=1, keepdim=True)
    q = q / q.sum(dim=1, keepdim=True)
    kl = (p * (p.log() - q.log())).sum(dim=1)  # (S, H, W)
    return kl.mean(dim=(-2, -1)).tolist()


def to_grey(image: torch.Tensor) -> torch.Tensor:
    """(H, W, 3) RGB in [0, 1] -> (H, W) luma."""
    w = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float32, device=image.device)
    return (image.to(torch.float32) * w).sum(dim=-1)


def working_size(h: int, w: int, longest: int) -> tuple[int, int]:
    """(h, w) scaled down so the longer side is at most ``longest``."""
    s = min(1.0, longest / max(h, w))
    return max(8, round(h * s)), max(8, round(w * s))


def shape_convergence(image: torch.Tensor, maps: torch.Tensor, longest: int = 128, low: float = 0.1,
                      high: float = 0.2, tolerance: int = 1, on_map=None) -> torch.Tensor:
    """Fig. 1b: F1 of the Canny edges of each attention map against those of the final image.

    ``image``: (H, W, 3) in [0, 1]; ``maps``: (S, K, h, w) for S steps and K tokens. Both are
    brought to one working size (the image's, at most ``longest`` px on the long side; maps
    bilinear-upsampled and min-max normalised). Returns (K, S) F1 values."""
    s, k = maps.shape[:2]
    size = working_size(image.shape[0], image.shape[1], longest)
    grey = F.interpolate(to_grey(image)[None, None], size=size, mode="area" if size[0] <= image.shape[0] else "bilinear")
    target = canny_edges(grey[:, 0], low, high)[0]
    flat = maps.reshape(s * k, 1, *maps.shape[-2:]).to(torch.float32)
    out = torch.empty(s * k, dtype=torch.float64)
    for i in range(s * k):
        up = F.interpolate(flat[i:i + 1], size=size, mode="bilinear", align_corners=False)[:, 0]
        out[i] = edge_f1(canny_edges(normalize01(up), low, high)[0], target, tolerance)
        if on_map is not None:
            on_map(1)
    return out.reshape(s, k).T.contiguous()
