"""Inputs and helpers shared by the attention-capture tests of the DiT families (tests/test_attention_families.py,
tests/test_attention_real_width.py)."""

from __future__ import annotations

import torch

CAPTURE = {"record_uncond": True, "step_stride": 1, "max_tokens": 77, "max_grid": 64, "keep_layers": True,
           "memory_limit_mb": 1024.0}
VIEW = {"branch": "cond", "tokens": "auto", "steps": "auto", "batch_index": 0, "cell_size": 32, "edge_size": 64,
        "canny_low": 0.1, "canny_high": 0.2, "edge_tolerance": 1, "filename_prefix": "tests/attention_dit"}


def branch_rows(contexts, positive, negative):
    """{branch: batch row} of one model call, told apart by the text context each row carries."""
    rows = {}
    for row in range(contexts.shape[0]):
        for branch, cond in ((0, positive), (1, negative)):
            if torch.equal(contexts[row].float(), cond[0].float()):
                rows[branch] = row
    return rows
