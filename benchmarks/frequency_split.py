#!/usr/bin/env python3
"""Frequency split: time and peak memory next to a bare FFT round trip of the same input.

    python3 benchmarks/frequency_split.py [--size 2048] [--channels 4] [--batch 2]

Runs inside the ComfyUI runtime of devtools/runtime.py (built on first use) for its torch.

Each memory figure is the peak resident memory of a fresh child process minus that of a child
that only allocated the input, so the numbers are side by side and comparable in one run.
Prints ratios: split / FFT round trip (rfft2 + irfft2, the least any exact split must do).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import _bootstrap  # noqa: F401

from devtools.entry import HelpFormatter, in_runtime

REPO = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, resource, sys, time, torch
sys.path.append({repo!r})
from shapefirst import frequency
mode, shape = sys.argv[1], tuple(int(v) for v in sys.argv[2].split(","))
x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
if mode == "fft":
    y = torch.fft.irfft2(torch.fft.rfft2(x), s=shape[-2:])
elif mode == "split":
    low, high = frequency.split(x, 0.2)
elapsed = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"extra_mb": (peak - base) / 1024, "seconds": elapsed}}))
"""


def measure(mode: str, shape: tuple[int, ...], repeats: int) -> dict:
    best = None
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", CHILD.format(repo=str(REPO)), mode, ",".join(map(str, shape))],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        best = r if best is None else {k: min(best[k], r[k]) for k in r}
    return best


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--size", type=int, default=2048, help="height and width of the input")
    ap.add_argument("--channels", type=int, default=4, help="channels of the input")
    ap.add_argument("--batch", type=int, default=2, help="batch size of the input")
    ap.add_argument("--repeats", type=int, default=3, help="fresh child processes per measure (the best counts)")
    return ap.parse_args(argv)


def main(args) -> int:
    shape = (args.batch, args.channels, args.size, args.size)
    input_mb = 4 * args.batch * args.channels * args.size * args.size / 2**20
    fft = measure("fft", shape, args.repeats)
    split = measure("split", shape, args.repeats)
    print(f"input {shape} float32 = {input_mb:.0f} MB (best of {args.repeats} runs each)")
    print(f"{'':24}{'extra peak MB':>14}{'x input':>9}{'seconds':>9}")
    for name, r in (("FFT round trip", fft), ("split (low + high)", split)):
        print(f"{name:24}{r['extra_mb']:14.0f}{r['extra_mb'] / input_mb:9.2f}{r['seconds']:9.3f}")
    print(f"ratio split / FFT round trip: memory {split['extra_mb'] / max(fft['extra_mb'], 1e-9):.2f}, "
          f"time {split['seconds'] / fft['seconds']:.2f}")
    print("(the split must hold its two outputs, 2x input, which a bare round trip does not)")
    return 0


if __name__ == "__main__":
    arguments = parse_args()  # before the runtime: --help answers at once
    in_runtime(__file__)
    sys.exit(main(arguments))
