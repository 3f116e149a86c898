"""Copies to the host without waiting for the device: what a patch reads back during sampling is copied
asynchronously, and the run settles the copies once, when it ends (one wait per run, never one per call).
"""

from __future__ import annotations

import torch


def host_copy(t: torch.Tensor) -> torch.Tensor:
    """``t`` on the CPU; from an accelerator, an asynchronous copy (valid after ``settle``)."""
    return t.detach().to("cpu", non_blocking=True)


def settle(devices) -> None:
    """Wait for the asynchronous copies queued on ``devices`` (torch devices; the CPU needs none)."""
    for device in {torch.device(d) for d in devices if d is not None}:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elif device.type != "cpu" and hasattr(torch, "accelerator"):
            torch.accelerator.synchronize(device)
