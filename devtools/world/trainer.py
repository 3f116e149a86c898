"""A small resumable training loop: state in safetensors + JSON (no pickle), a progress line
(step, loss, ETA), a loss log (``loss.csv``) and a ``done.json`` marker when finished.

Everything random is a function of (seed, step), so a resumed run continues exactly as an
uninterrupted one would: batches come from a per-epoch seeded permutation, noise from a
generator seeded per step.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

SAVE_EVERY_S = 120.0


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


def batch_indices(seed: int, n: int, batch: int, step: int) -> np.ndarray:
    per_epoch = n // batch
    epoch, k = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return np.sort(perm[k * batch:(k + 1) * batch])


def generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def _save(path: Path, model, opt, meta: dict, extra: dict):
    import safetensors.torch

    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    for name, module in extra.items():
        tensors.update({f"{name}.{k}": v.detach().contiguous() for k, v in module.state_dict().items()})
    sd = opt.state_dict()
    for i, st in sd["state"].items():
        for name, v in st.items():
            tensors[f"opt.{i}.{name}"] = (v if torch.is_tensor(v) else torch.tensor(v)).detach().contiguous()
    tmp = path.with_suffix(".tmp")
    safetensors.torch.save_file(tensors, str(tmp))
    os.replace(tmp, path)
    meta = {**meta, "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in sd["param_groups"]]}
    tmpj = path.with_suffix(".json.tmp")
    tmpj.write_text(json.dumps(meta))
    os.replace(tmpj, path.with_suffix(".json"))


def _load(path: Path, model, opt, extra: dict) -> dict:
    import safetensors.torch

    tensors = safetensors.torch.load_file(str(path))
    meta = json.loads(path.with_suffix(".json").read_text())
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    for name, module in extra.items():
        module.load_state_dict({k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")})
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, i, name = k.split(".", 2)
            state.setdefault(int(i), {})[name] = v
    groups = opt.state_dict()["param_groups"]
    for g, saved in zip(groups, meta["param_groups"]):
        g.update(saved)
    opt.load_state_dict({"state": state, "param_groups": groups})
    return meta


class Run:
    """One stage's training: ``for step in run: ...; run.log(step, loss)``."""

    def __init__(self, directory: Path, name: str, model, opt, total: int, peak_lr: float, warmup: int = 100,
                 extra: dict | None = None, writer: bool = True):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name, self.model, self.opt, self.extra = name, model, opt, extra or {}
        self.writer = writer  # False: another process of a data-parallel run saves and logs
        self.total, self.peak_lr, self.warmup = total, peak_lr, warmup
        self.state = self.dir / "state.safetensors"
        self.start, self.elapsed = 0, 0.0
        if self.state.exists():
            meta = _load(self.state, model, opt, self.extra)
            self.start, self.elapsed = meta["step"], meta["elapsed"]
            log = self.dir / "loss.csv"
            if writer and self.start < total:
                print(f"[{name}] resuming at step {self.start}/{total}", flush=True)
            if writer and log.exists():  # drop what was logged after the saved state
                rows = [r for r in log.read_text().splitlines() if int(r.split(",")[0]) < self.start]
                log.write_text("".join(r + "\n" for r in rows))
        self._t = time.time()
        self._last_save = self._t
        self._ema = None

    @property
    def done(self) -> bool:
        return (self.dir / "done.json").exists()

    def __iter__(self):
        for step in range(self.start, self.total):
            lr = lr_at(step, self.total, self.peak_lr, self.warmup)
            for g in self.opt.param_groups:
                g["lr"] = lr
            yield step
            if time.time() - self._last_save > SAVE_EVERY_S:
                self.save(step + 1)
        self.save(self.total)

    def now(self) -> float:
        return self.elapsed + time.time() - self._t

    def save(self, next_step: int):
        if not self.writer:
            return
        _save(self.state, self.model, self.opt, {"step": next_step, "elapsed": self.now()}, self.extra)
        self._last_save = time.time()

    def log(self, step: int, loss: float, every: int = 25, **extra):
        if not self.writer:
            return
        self._ema = loss if self._ema is None else 0.98 * self._ema + 0.02 * loss
        with open(self.dir / "loss.csv", "a") as f:
            f.write(f"{step},{loss:.6f},{self.now():.1f}\n")
        if step % every == 0 or step == self.total - 1:
            done = step + 1 - self.start
            spent = time.time() - self._t
            eta = spent / max(1, done) * (self.total - step - 1)
            more = "".join(f" {k} {v:.4g}" for k, v in extra.items())
            print(f"[{self.name}] step {step + 1}/{self.total} loss {loss:.4f} (avg {self._ema:.4f}){more} "
                  f"{spent / max(1, done):.2f} s/step ETA {eta / 60:.1f} min", flush=True)

    def finish(self, **summary):
        if not self.writer:
            return None
        info = {"steps": self.total, "seconds": round(self.now(), 1), "final_loss_avg": self._ema, **summary}
        (self.dir / "done.json").write_text(json.dumps(info, indent=1))
        print(f"[{self.name}] done: {info}", flush=True)
        return info


def load_module(path: Path, module, prefix: str = "model.") -> None:
    """Load ``module``'s weights from a stage state file (``prefix``: ``model.`` or ``ema.``)."""
    import safetensors.torch

    tensors = safetensors.torch.load_file(str(path))
    module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
