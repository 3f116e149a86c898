"""The contents of the files the attention nodes save: metrics as CSV and JSON text, raw maps
as safetensors bytes. Writing them (where, under which name) is nodes/_files.py's job.
Plain Python and torch; no ComfyUI import."""

from __future__ import annotations

import csv
import io
import json

import torch

from .attention import BRANCH_NAMES, AttentionRun
from .tokens import ROLES


def to_json(data) -> str:
    """JSON text; NaN and infinities are refused (they are not JSON)."""
    return json.dumps(data, indent=1, allow_nan=False)


def _fmt(value) -> str:
    return "" if value is None else f"{value:.6g}"


def view_metrics_csv(steps, sigmas, shares: dict, f1_mean, f1_rel) -> str:
    """One row per recorded step: sigma, the share of each token class, the edge F1 (mean, relative)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    classes = [c for c in ROLES if c in shares]
    w.writerow(["step", "sigma"] + [f"share_{c}" for c in classes] + ["edge_f1_mean", "edge_f1_relative"])
    for k, s in enumerate(steps):
        w.writerow([s, _fmt(sigmas[k])] + [_fmt(shares[c][k]) for c in classes] + [_fmt(f1_mean[k]), _fmt(f1_rel[k])])
    return buf.getvalue()


def kl_csv(data: dict) -> str:
    """One row per common step: KL(A || B), KL(B || A)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["step", "kl_a_b", "kl_b_a"])
    for s, x, y in zip(data["steps"], data["kl_a_b"], data["kl_b_a"]):
        w.writerow([s, _fmt(x), _fmt(y)])
    return buf.getvalue()


def raw_maps_tensors(run: AttentionRun) -> dict[str, torch.Tensor]:
    """Every recorded branch of ``run``: steps, sigmas, maps, token means and (if kept) per-layer maps."""
    tensors = {}
    for branch in run.branches():
        name = BRANCH_NAMES.get(branch, str(branch))
        steps = run.steps(branch)
        tensors[f"{name}.steps"] = torch.tensor(steps, dtype=torch.int64)
        tensors[f"{name}.sigmas"] = torch.tensor([run.sigmas[s] for s in steps], dtype=torch.float32)
        tensors[f"{name}.maps"] = torch.stack([run.maps[branch][s] for s in steps]).contiguous()
        tensors[f"{name}.token_means"] = torch.stack([run.token_means[branch][s] for s in steps]).contiguous()
        for layer in run.layer_names:
            per_step = [run.layers.get(branch, {}).get(s, {}).get(layer) for s in steps]
            if all(t is not None for t in per_step):
                tensors[f"{name}.layer.{layer}"] = torch.stack(per_step).contiguous()
    return tensors


def raw_maps_file(run: AttentionRun, labels: list[str], roles: list[str]) -> bytes:
    """:func:`raw_maps_tensors` as safetensors bytes, with labels, roles and shapes in the metadata."""
    import safetensors.torch

    meta = {"shapefirst": json.dumps({
        "layout": "maps: (steps, images, tokens, grid_h, grid_w); token_means: (steps, images, tokens)",
        "labels": labels, "roles": roles, "grid": list(run.grid or ()), "latent": list(run.latent_hw),
        "layers": run.layer_names, "total_steps": run.total_steps,
        "frames": run.frames, "total_frames": run.total_frames, "videos": run.videos})}
    return safetensors.torch.save(raw_maps_tensors(run), metadata=meta)
