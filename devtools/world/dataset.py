"""The training set on disk: rendered images, captions and labels of scenes ``0..n-1`` of a seed.

Built once into ``<dir>/`` (git-ignored, under .runtime/world-train/) and memory-mapped:
``images.u8`` (n, 64, 64, 3), ``labels.i8`` (n, 2, 4: shape, colour, size, position per object,
-1 where absent), ``captions.json``. Rendering runs in worker processes, in chunks.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np

from .render import SIZE, render
from .scenes import scene
from .vocab import COLOURS, POSITIONS, SHAPES, SIZES

ATTRIBUTES = {"shape": list(SHAPES), "colour": list(COLOURS), "size": list(SIZES), "position": list(POSITIONS)}
_CHUNK = 500


def labels_of(s: dict) -> np.ndarray:
    out = np.full((2, 4), -1, dtype=np.int8)
    for j, o in enumerate(s["objects"]):
        for k, (name, values) in enumerate(ATTRIBUTES.items()):
            if o.get(name) is not None:
                out[j, k] = values.index(o[name])
    return out


def _chunk(args):
    seed, start, stop = args
    imgs = np.empty((stop - start, SIZE, SIZE, 3), dtype=np.uint8)
    labels = np.empty((stop - start, 2, 4), dtype=np.int8)
    caps = []
    for i in range(start, stop):
        s = scene(seed, i)
        imgs[i - start] = render(s)
        labels[i - start] = labels_of(s)
        caps.append(s["caption"])
    return start, imgs, labels, caps


class Dataset:
    def __init__(self, root: Path):
        self.root = Path(root)
        meta = json.loads((self.root / "meta.json").read_text())
        self.n, self.seed = meta["n"], meta["seed"]
        self.images = np.memmap(self.root / "images.u8", dtype=np.uint8, mode="r", shape=(self.n, SIZE, SIZE, 3))
        self.labels = np.fromfile(self.root / "labels.i8", dtype=np.int8).reshape(self.n, 2, 4)
        self.captions = json.loads((self.root / "captions.json").read_text())

    def image_batch(self, idx):
        """float32 tensor (B, 3, 64, 64) in [0, 1]."""
        import torch

        return torch.from_numpy(np.ascontiguousarray(self.images[idx])).permute(0, 3, 1, 2).float() / 255.0


def build(root: Path, seed: int, n: int, workers: int = 2) -> Dataset:
    """Render scenes 0..n-1 of ``seed`` into ``root`` (skipped when already complete)."""
    root = Path(root)
    if (root / "meta.json").exists():
        return Dataset(root)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    images = np.memmap(root / "images.u8", dtype=np.uint8, mode="w+", shape=(n, SIZE, SIZE, 3))
    labels = np.empty((n, 2, 4), dtype=np.int8)
    captions = [""] * n
    jobs = [(seed, a, min(n, a + _CHUNK)) for a in range(0, n, _CHUNK)]
    with mp.get_context("fork").Pool(workers) as pool:
        for done, (start, imgs, labs, caps) in enumerate(pool.imap_unordered(_chunk, jobs), 1):
            images[start:start + len(imgs)] = imgs
            labels[start:start + len(imgs)] = labs
            captions[start:start + len(imgs)] = caps
            if done % 20 == 0 or done == len(jobs):
                print(f"[data] {done * _CHUNK}/{n} images, {time.time() - t0:.0f} s", flush=True)
    images.flush()
    labels.tofile(root / "labels.i8")
    (root / "captions.json").write_text(json.dumps(captions))
    (root / "meta.json").write_text(json.dumps({"n": n, "seed": seed}))  # last: marks the set complete
    return Dataset(root)
