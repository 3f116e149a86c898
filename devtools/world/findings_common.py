"""What the findings benchmark (benchmarks/findings.py) shares: its settings per mode, the graphs it
runs through ComfyUI's executor, the world's scores of their images, and bootstrap intervals.

Every number is a mean over units (prompts or A/B pairs; each unit's value the mean over its
noise samples) with a 95% percentile-bootstrap interval from resampling the units (seeded).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# Sampler of the swap tables and the figures (the sweep's Table 2 uses the paper's two samplers).
SAMPLER = {"sampler_name": "dpmpp_2m", "scheduler": "karras", "cfg": 7.5}


@dataclass(frozen=True)
class Mode:
    name: str
    pairs_per_kind: int  # A/B pairs of each kind (shape, colour) for Tables 1 and 4
    prompts: int  # one-object prompts for Table 3, Table 2 and the figures' averages
    samples: int  # noise samples per prompt (one latent batch)
    steps: int  # steps of the swap tables (DPM++ 2M, Karras)
    sweep_prompts: int  # prompts of Table 2
    sweep_windows: dict  # sampler -> (scheduler, steps, [a ...])
    figure_prompts: int
    peer_prompts: int


QUICK = Mode("quick", pairs_per_kind=2, prompts=2, samples=2, steps=10, sweep_prompts=1,
             sweep_windows={"dpmpp_2m": ("karras", 25, [10, 25])}, figure_prompts=1, peer_prompts=1)
FULL = Mode("full", pairs_per_kind=8, prompts=8, samples=2, steps=12, sweep_prompts=3,
            sweep_windows={"ddim": ("ddim_uniform", 50, [10, 20, 30, 40, 50]),
                           "dpmpp_2m": ("karras", 25, [5, 10, 15, 20, 25])},
            figure_prompts=4, peer_prompts=2)


def pick(items: list, n: int) -> list:
    """``n`` items spread evenly over ``items`` (deterministic)."""
    if n >= len(items):
        return list(items)
    return [items[(i * len(items)) // n] for i in range(n)]


def single_prompts(ev: dict, n: int) -> list[dict]:
    """``n`` one-object prompts covering shapes and colours: prompt k is shape k % 8 with colour (k + k // 8) % 8."""
    single = ev["single"]  # shape-major, 8 colours a shape
    return [single[(k % 8) * 8 + (k + k // 8) % 8] for k in range(min(n, 64))]


def pairs(ev: dict, per_kind: int) -> list[dict]:
    out = []
    for kind in ("shape", "colour"):
        out += pick([p for p in ev["pairs"] if p["differs"] == kind], per_kind)
    return out


def bootstrap(values: list[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean of ``values`` and its 95% percentile-bootstrap interval."""
    values = [float(v) for v in values]
    if not values:
        return float("nan"), float("nan"), float("nan")
    mean = sum(values) / len(values)
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(values, k=len(values))) / len(values) for _ in range(resamples))
    return mean, means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]


def fmt(stat: tuple[float, float, float], digits: int = 3) -> str:
    mean, lo, hi = stat
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def per_unit(values, samples: int) -> list[float]:
    """Mean over each unit's ``samples`` consecutive values."""
    values = [float(v) for v in values]
    return [sum(values[i:i + samples]) / samples for i in range(0, len(values), samples)]


class Images:
    """Builds one API graph of many KSampler + VAEDecode chains on the world's checkpoint, runs it
    through the harness (ComfyUI's validator and executor), and returns each chain's IMAGE batch."""

    def __init__(self, ckpt_name: str, samples: int, steps: int, seed: int, kv_patch: bool = False):
        from ..graph import Graph

        self.g = Graph()
        self.loader = self.g.node("CheckpointLoaderSimple", ckpt_name=ckpt_name)
        self.model = self.loader.out(0)
        self.kv_model = self.g.node("EOSSwapKVPatch", model=self.model).out(0) if kv_patch else None
        self.clip = self.loader.out(1)
        self.negative = self.g.node("CLIPTextEncode", text="", clip=self.clip).out(0)
        self.latent = self.g.node("EmptyLatentImage", width=64, height=64, batch_size=samples).out(0)
        self.steps, self.seed = steps, seed
        self.decodes: list[str] = []

    def text(self, prompt: str):
        return self.g.node("CLIPTextEncode", text=prompt, clip=self.clip).out(0)

    def swap(self, a: str, b: str, eos_from="B", sem_from="A", apply_to="keys and values"):
        return self.g.node("EOSSwapConditioning", clip=self.clip, prompt_a=a, prompt_b=b, eos_from=eos_from,
                           sem_from=sem_from, sos_from="A", padding_is_eos=True, layout="prompt A", sem_repeats=1,
                           apply_to=apply_to, start_percent=0.0, end_percent=1.0, pooled_from="B", noise_seed=0,
                           swap_encoders="all").out(0)

    def sample(self, positive, kv: bool = False) -> int:
        """Adds a chain; returns its index in :meth:`run`'s list."""
        model = self.kv_model if kv else self.model
        ks = self.g.node("KSampler", model=model, seed=self.seed, steps=self.steps, positive=positive,
                         negative=self.negative, latent_image=self.latent, denoise=1.0, **SAMPLER)
        self.decodes.append(self.g.node("VAEDecode", samples=ks.out(0), vae=self.loader.out(2)).id)
        return len(self.decodes) - 1

    def run(self, harness) -> list:
        result = harness.run(self.g.prompt(), outputs=self.decodes)
        return [result.output_value(d) for d in self.decodes]
