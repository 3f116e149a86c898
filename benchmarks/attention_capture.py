#!/usr/bin/env python3
"""AttentionMapCapture: sampling time and peak memory with and without the capture, side by side.

    python3 benchmarks/attention_capture.py [--arch tiny|full] [--size 64] [--steps 8] [--rounds 5]
                                            [--device cpu|cuda]

Runs inside the ComfyUI runtime of devtools/runtime.py (built on first use).

Builds an SD1.5 UNet from ComfyUI's own classes with seeded random weights (tiny: the test
checkpoint's reduced depth, 4 cross-attention layers; full: the real SD1.5 layout, 16 layers,
860 M parameters) and random 77-token conditionings (the capture never looks at CLIP), then
samples (euler, cfg 7.5, batch 1) alternately with the plain model and with AttentionMapCapture
recording both branches at every step, same seed, ``--rounds`` times each, in one process.

Prints the median time of each, the ratio and the overhead, and the peak extra memory of each
run (CUDA: torch.cuda.max_memory_allocated above the memory in use before the run; CPU: resident
memory polled every 2 ms above the value before the run) with the capture's store size.
Times: CUDA wall time; on a CPU the CPU time of this process, by default with one torch thread
(steadier than wall time when other work shares the machine), with the wall time alongside.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import _bootstrap  # noqa: F401

from devtools import boot
from devtools.entry import HelpFormatter, in_runtime


def start(device: str, work: Path):
    """ComfyUI in this process with the pack loaded (CPU forced unless --device cuda)."""
    return boot.boot(work, cpu=device == "cpu")


def build_unet(arch: str, device):
    import torch

    import comfy.model_management as mm
    import comfy.model_patcher as mp
    import comfy.supported_models as sm
    from devtools import checkpoints

    # tiny: the test checkpoint's reduced depth; full: the real SD1.5 layout
    unet = checkpoints.SPECS["sd15" if arch == "tiny" else "sd15_full"].unet
    config = sm.SD15(dict(unet))
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    config.set_inference_dtype(dtype, None)
    model = config.get_model({})
    checkpoints.init_default(model.diffusion_model, 0)
    model.diffusion_model.to(dtype)
    return mp.ModelPatcher(model, load_device=device, offload_device=mm.unet_offload_device())


class PeakMemory:
    """Peak extra memory during a block: CUDA allocator peak, or RSS polled in a thread."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        import psutil
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            return self
        self.proc = psutil.Process()
        self.base = self.peak = self.proc.memory_info().rss
        self.stop = threading.Event()

        def poll():
            while not self.stop.is_set():
                self.peak = max(self.peak, self.proc.memory_info().rss)
                time.sleep(0.002)

        self.thread = threading.Thread(target=poll, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.extra = torch.cuda.max_memory_allocated() - self.base
        else:
            self.stop.set()
            self.thread.join()
            self.extra = max(self.peak, self.proc.memory_info().rss) - self.base
        return False


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--arch", choices=["tiny", "full"], default="tiny",
                    help="tiny: the test checkpoint's reduced depth; full: the real SD1.5 layout")
    ap.add_argument("--size", type=int, default=64, help="image size in px (latent = size / 8)")
    ap.add_argument("--steps", type=int, default=8, help="euler steps per run")
    ap.add_argument("--rounds", type=int, default=5, help="timed runs of each variant, interleaved")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to sample")
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads for torch (default 1: on a shared CPU, waiting OpenMP threads spin and "
                         "make both wall and CPU time swing several-fold)")
    return ap.parse_args(argv)


def main(args) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        nodes = start(args.device, Path(tmp))
        import torch

        import comfy.sample

        device = torch.device(args.device)
        if device.type == "cpu":
            torch.set_num_threads(args.threads)
        model = build_unet(args.arch, device)
        capture_node = nodes.NODE_CLASS_MAPPINGS["AttentionMapCapture"]
        variants = {"plain": (model, None)}
        for name, uncond in (("cond", False), ("cond+uncond", True)):
            variants[name] = tuple(capture_node.execute(
                model, record_uncond=uncond, step_stride=1, max_tokens=77, max_grid=64, keep_layers=False,
                memory_limit_mb=4096.0).args)
        g = torch.Generator().manual_seed(0)
        pos = [[torch.randn(1, 77, 768, generator=g), {}]]
        neg = [[torch.randn(1, 77, 768, generator=g), {}]]
        latent = torch.zeros(1, 4, args.size // 8, args.size // 8)
        noise = comfy.sample.prepare_noise(latent, 1)

        def sample(m):
            return comfy.sample.sample(m, noise, args.steps, 7.5, "euler", "normal", pos, neg, latent, seed=1,
                                       disable_pbar=True)

        for m, _ in variants.values():
            sample(m)  # warm up: load weights, allocate
        times = {name: [] for name in variants}
        cpu = {name: [] for name in variants}
        memory = {name: [] for name in variants}
        for _ in range(args.rounds):  # interleaved, so a busy spell on the machine hits every variant
            for name, (m, _) in variants.items():
                with PeakMemory(device) as mem:
                    t, c = time.perf_counter(), time.process_time()
                    out = sample(m)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    times[name].append(time.perf_counter() - t)
                    cpu[name].append(time.process_time() - c)
                memory[name].append(mem.extra)
                del out
        # On a CPU shared with other work, wall time swings with their load; the CPU time this
        # process used is the steadier measure there. On CUDA, wall time is the measure.
        measure = times if device.type == "cuda" else cpu
        label = "wall time" if device.type == "cuda" else "process CPU time"
        plain, mem_plain = statistics.median(measure["plain"]), max(memory["plain"])
        recorder = variants["cond+uncond"][1]
        device_name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
        print(f"AttentionMapCapture benchmark: SD1.5 {args.arch} UNet ({len(recorder.run.layer_names)} cross-attention "
              f"layers), {args.size}x{args.size} px, euler {args.steps} steps, cfg 7.5, every step recorded, "
              f"{args.rounds} rounds, {device_name}")
        print(f"  plain sampling: median {label} {plain:.3f} s (wall {statistics.median(times['plain']):.3f} s), "
              f"peak extra memory {mem_plain / 2**20:.1f} MB")
        for name in ("cond", "cond+uncond"):
            t, mem = statistics.median(measure[name]), max(memory[name])
            store = variants[name][1].run.nbytes()
            print(f"  capture {name:<11}: median {t:.3f} s, time ratio {t / plain:.3f} (overhead "
                  f"{100 * (t / plain - 1):+.1f}%), peak extra memory {mem / 2**20:.1f} MB "
                  f"(ratio {mem / max(1, mem_plain):.3f}), store {store / 2**20:.3f} MB")
        print(f"  grid {recorder.run.grid}, 77 tokens, float16 maps")
    return 0


if __name__ == "__main__":
    arguments = parse_args()  # before the runtime: --help answers at once
    in_runtime(__file__)
    sys.exit(main(arguments))
