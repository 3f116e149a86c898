#!/usr/bin/env python3
"""Truncated guidance vs core KSampler, measured side by side in one process (Table 2's shape).

    python3 benchmarks/truncated_cfg.py                 # tiny SD1.5, CPU, 128 px
    python3 benchmarks/truncated_cfg.py --full --size 512 --gpu   # full SD1.5 arch
    python3 benchmarks/truncated_cfg.py --quick --size 64 --rounds 20   # ours vs ideal only
    python3 benchmarks/truncated_cfg.py --peers-only --model sdxl --peers DIR   # SDXL against T-GATE

Runs inside the ComfyUI runtime of devtools/runtime.py (built on first use).

For the paper's settings (DDIM 50 steps, a = 0..50 by 10; DPM-Solver++ 25 steps, a = 0..25 by 5,
a = final steps without the text pass) it times, in rounds of groups that each include their own
core KSampler run (a seeded random order inside each group and round; every run once as a warm-up
first; process CPU time on a CPU, wall time on a GPU; a garbage collection before each timed run):
- core KSampler (plain CFG), the reference;
- TruncatedCFGSampler with guidance_end = (T - a) / T;
- the best a user can do without this pack: two chained core KSamplerAdvanced nodes, CFG for the
  first T - a steps, then the tail at cfg 1.0 with the empty prompt as positive (ComfyUI then runs
  one pass: the same UNet work as eq. 9);
- the ideal saving (a/T) x (1 - t_single / t_cfg) from runs that do every step with two passes
  (cfg 7.5) and with one pass (cfg 1.0).
Sampling only (prompts are encoded once, outside the timings); each figure is the median over the
rounds of a time divided by its group's core KSampler time. The L1
column is the mean |image - image(a=0)| of the decoded images; with random weights it measures
the mechanics only, not image quality.

The overhead with the window over all steps (target <= 1%) is smaller than the noise of a table
round, so it is measured twice more: ``--pairs`` back-to-back pairs core KSampler / ours (a = 0),
in alternating order, giving the median of the per-pair ratios (wall clock and process CPU time);
and the patch's own work (its per-evaluation bookkeeping and the guidance-strength curve), timed
from inside one run as a share of that run's sampling time.

``--quick`` prints just ours exact against the ideal saving at one gate, with intervals, after
counting the work of one tail step and one guided step against core's (aten operators and Python
calls; deterministic). ``--peers-only`` (also part of the default run) compares, at one gate, ours exact, ours + the tail's
text cache, the chained workaround, core EasyCache, ours on top of EasyCache and, with
``--peers DIR`` (a folder of other node packs, e.g. ComfyUI_TGate), T-GATE; see
benchmarks/truncated_cfg_peers.py.
"""

from __future__ import annotations

import argparse
import importlib
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import _bootstrap  # noqa: F401
import truncated_cfg_peers

from devtools import boot, checkpoints
from devtools.entry import HelpFormatter, in_runtime
from devtools.harness import ComfyHarness

PAPER = {("ddim", 0): 0.0, ("ddim", 10): 7.84, ("ddim", 20): 18.10, ("ddim", 30): 27.18, ("ddim", 40): 35.24,
         ("ddim", 50): 48.47, ("dpmpp_2m", 5): 8.36, ("dpmpp_2m", 10): 17.95, ("dpmpp_2m", 15): 26.11,
         ("dpmpp_2m", 20): 34.86, ("dpmpp_2m", 25): 47.60, ("dpmpp_2m", 0): 0.0}
SETTINGS = [("ddim", "ddim_uniform", 50, 10), ("dpmpp_2m", "normal", 25, 5)]
# the UNet families every section runs on (T-GATE patches their transformer blocks; the DiT families' exact
# mode is checked by the row counts and step references of tests/test_families*.py)
MODELS = {"sd15": "SD1.5", "sd2x": "SD2.x", "sdxl": "SDXL"}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--size", type=int, default=128, help="image size in pixels (latent = size / 8)")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds of every group")
    ap.add_argument("--model", choices=sorted(MODELS), default="sd15",
                    help="architecture of the random-weight checkpoint (reduced depth, as the tests build it): "
                         + "; ".join(f"{k} = {v}" for k, v in sorted(MODELS.items())))
    ap.add_argument("--full", action="store_true", help="full SD1.5 architecture (random weights, 2 GB)")
    ap.add_argument("--gpu", action="store_true", help="run on the GPU (default: CPU)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: on a small shared machine, threads that wait for each other "
                         "make single runs vary by tens of percent)")
    ap.add_argument("--only", choices=["ddim", "dpmpp_2m", "overhead", "peers"], help="one section only")
    ap.add_argument("--peers-only", action="store_true", help="the 'against other packs' section only")
    ap.add_argument("--quick", action="store_true",
                    help="ours exact vs the ideal saving only (core, core at cfg 1, ours), with the per-step work counts")
    ap.add_argument("--peers", metavar="DIR", help="folder of other node packs (e.g. ComfyUI_TGate) to load into "
                                                  "this ComfyUI and compare at the same gate")
    ap.add_argument("--gate", type=float, default=0.4, help="peers section: guided share of the schedule")
    ap.add_argument("--peer-steps", type=int, default=25, help="peers section: DPM++ 2M steps")
    ap.add_argument("--pairs", type=int, default=8, help="paired runs for the overhead section (0: skip it)")
    args = ap.parse_args(argv)
    if args.full and args.model != "sd15":
        ap.error("--full is the full SD1.5 architecture: leave --model out (or --model sd15) with it")
    return args


def main(args) -> int:
    if args.peers_only or args.quick:
        args.only = "peers"

    boot.quiet_logs()
    kind = "sd15_full" if args.full else args.model
    work = Path(tempfile.mkdtemp(prefix="shapefirst-bench-"))
    checkpoints_dir = Path(boot.runtime().models) / "checkpoints"
    ComfyHarness(work, checkpoints_dir, cpu=not args.gpu).boot()
    ckpt = checkpoints.ensure_checkpoint(kind, checkpoints_dir)
    import torch

    import comfy.utils
    import nodes

    comfy.utils.set_progress_bar_enabled(False)
    if not args.gpu:
        torch.set_num_threads(args.threads)

    model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint(ckpt.name)[:3]
    pos = nodes.CLIPTextEncode().encode(clip, "A dog standing on a bench during the day.")[0]
    empty = nodes.CLIPTextEncode().encode(clip, "")[0]
    latent = {"samples": torch.zeros(1, 4, args.size // 8, args.size // 8)}
    truncated = nodes.NODE_CLASS_MAPPINGS["TruncatedCFGSampler"]
    ksampler, advanced = nodes.KSampler(), nodes.KSamplerAdvanced()

    def core(sampler, scheduler, steps, cfg=7.5):
        return ksampler.sample(model, 1, steps, cfg, sampler, scheduler, pos, empty, latent)[0]

    def ours(sampler, scheduler, steps, a):
        return truncated.execute(model=model, seed=1, steps=steps, cfg=7.5, sampler_name=sampler,
                                 scheduler=scheduler, positive=pos, negative=empty, latent_image=latent,
                                 guidance_end=(steps - a) / steps).result[0]

    def chained(sampler, scheduler, steps, a):
        k = steps - a
        if a == 0:
            return core(sampler, scheduler, steps)
        lat = latent
        if k > 0:
            lat = advanced.sample(model, "enable", 1, steps, 7.5, sampler, scheduler, pos, empty, lat, 0, k,
                                  "enable")[0]
        return advanced.sample(model, "enable" if k == 0 else "disable", 1, steps, 1.0, sampler, scheduler, empty,
                               empty, lat, k, steps, "disable")[0]

    device = "GPU" if args.gpu else "CPU"
    sync = torch.cuda.synchronize if args.gpu else (lambda: None)
    clock = time.perf_counter if args.gpu else time.process_time
    print(f"# truncated guidance benchmark: {kind} ({'full' if args.full else 'reduced depth'} {MODELS[args.model]} "
          f"architecture, random weights), {args.size}x{args.size} px, {device}"
          f"{'' if args.gpu else f' ({torch.get_num_threads()} torch threads, process CPU time)'}, {args.rounds} rounds, "
          "medians")
    for sampler, scheduler, steps, stride in SETTINGS:
        if args.only and args.only != sampler:
            continue
        a_values = list(range(0, steps + 1, stride))
        run_core = lambda s=sampler, c=scheduler, n=steps: core(s, c, n)  # noqa: E731
        # Each measurement is a group that includes its own core KSampler run; the order inside a group is
        # drawn anew each round (seeded), so drift and position effects cancel instead of biasing a column.
        groups = {"single": {"core": run_core, "single": lambda s=sampler, c=scheduler, n=steps: core(s, c, n, 1.0)}}
        for a in a_values:
            groups[a] = {"core": run_core,
                         "ours": lambda a=a, s=sampler, c=scheduler, n=steps: ours(s, c, n, a),
                         "chained": lambda a=a, s=sampler, c=scheduler, n=steps: chained(s, c, n, a)}
        outputs = {(g, name): fn() for g, members in groups.items() for name, fn in members.items()}  # warm-up
        times = {(g, name): [] for g, members in groups.items() for name in members}
        order_rng = random.Random(0)
        for r in range(args.rounds):
            for g, members in groups.items():
                names = list(members)
                order_rng.shuffle(names)
                for name in names:
                    outputs[(g, name)], t = truncated_cfg_peers.timed(members[name], clock, sync)
                    times[(g, name)].append(t)

        def ratio(g, name, ref="core"):  # median over the rounds of a time over its own group's reference
            return statistics.median(x / y for x, y in zip(times[(g, name)], times[(g, ref)]))

        images = {k: vae.decode(v["samples"]).float() for k, v in outputs.items() if k[1] in ("ours", "chained")}
        base = images[(0, "ours")]
        t_core = statistics.median(t for (g, name), v in times.items() if name == "core" for t in v)
        pass_share = 1 - ratio("single", "single")
        print(f"\n## {sampler} ({scheduler}), {steps} steps; core KSampler {t_core:.3f}s (median of "
              f"{sum(len(v) for (g, n), v in times.items() if n == 'core')} runs); a single pass is "
              f"{1 - pass_share:.1%} of a CFG step")
        print("| a | saved (ours) | ideal | saved (chained KSamplerAdvanced) | paper | ours / chained time | "
              "L1 ours | L1 chained |")
        print("|---|---|---|---|---|---|---|---|")
        for a in a_values:
            ideal = a / steps * pass_share
            l1o = (images[(a, "ours")] - base).abs().mean().item()
            l1c = (images[(a, "chained")] - base).abs().mean().item()
            paper = PAPER.get((sampler, a))
            print(f"| {a} | {1 - ratio(a, 'ours'):.1%} | {ideal:.1%} | {1 - ratio(a, 'chained'):.1%} | "
                  f"{'' if paper is None else f'{paper:.2f}%'} | {ratio(a, 'ours', 'chained'):.3f} | "
                  f"{l1o:.4f} | {l1c:.4f} |")
        default_a = int(round(steps * 0.6))
        s_def = 1 - ratio(default_a, "ours")
        print(f"targets: overhead at a = 0 (window = all steps) {ratio(0, 'ours') - 1:+.2%} here (<= 1%; the chained "
              f"a = 0 column is core KSampler itself, i.e. the noise; see the overhead section); "
              f"saved at the default window (a = {default_a}) = {s_def / (default_a / steps * pass_share):.1%} "
              f"of ideal (>= 95%); slowest ours/chained ratio "
              f"{max(ratio(a, 'ours', 'chained') for a in a_values):.3f} (<= 1 + noise)")
    if args.only in (None, "peers"):
        truncated_cfg_peers.run(args, model, pos, empty, latent, ckpt.name, sync, _median_interval)
    if args.pairs > 0 and args.only in (None, "overhead"):
        patch = importlib.import_module(truncated.__module__.rsplit(".", 1)[0] + ".truncated_cfg_patch")
        overhead(lambda: core("ddim", "ddim_uniform", 50), lambda: ours("ddim", "ddim_uniform", 50, 0),
                 args.pairs, sync, patch.TruncationController)
    return 0


def overhead(core, ours, pairs: int, sync, controller_cls) -> None:
    """Paired timings of core vs ours with the window over all steps, and the patch's own work."""
    core()  # warm-up (model load) when this section runs alone
    walls, cpus = [], []
    for i in range(pairs):
        t = {}
        for name in (("core", "ours") if i % 2 == 0 else ("ours", "core")):
            fn = core if name == "core" else ours
            sync()
            w, c = time.perf_counter(), time.process_time()
            fn()
            sync()
            t[name] = (time.perf_counter() - w, time.process_time() - c)
        walls.append(t["ours"][0] / t["core"][0])
        cpus.append(t["ours"][1] / t["core"][1])

    # the patch's own work inside one run: each wrapper's time minus the time of what it wraps
    own = [0.0]
    originals = {name: getattr(controller_cls, name) for name in ("calc_cond_batch_wrapper", "begin", "finish")}

    def timed_wrapper(self, executor, *args, **kwargs):
        inner = [0.0]

        def timed_executor(*a, **k):
            sync()
            t0 = time.perf_counter()
            out = executor(*a, **k)
            sync()
            inner[0] += time.perf_counter() - t0
            return out

        sync()
        t0 = time.perf_counter()
        out = originals["calc_cond_batch_wrapper"](self, timed_executor, *args, **kwargs)
        sync()
        own[0] += time.perf_counter() - t0 - inner[0]
        return out

    def timed(name):
        def run(self, *args, **kwargs):
            sync()
            t0 = time.perf_counter()
            out = originals[name](self, *args, **kwargs)
            sync()
            own[0] += time.perf_counter() - t0
            return out
        return run

    try:
        controller_cls.calc_cond_batch_wrapper = timed_wrapper
        controller_cls.begin, controller_cls.finish = timed("begin"), timed("finish")
        sync()
        t0 = time.perf_counter()
        ours()
        sync()
        total = time.perf_counter() - t0
    finally:
        for name, fn in originals.items():
            setattr(controller_cls, name, fn)
    print(f"\n## overhead with the window over all steps (ddim, 50 steps), {pairs} back-to-back pairs in "
          f"alternating order")
    for what, ratios in (("wall clock", walls), ("process CPU time", cpus)):
        lo, hi = _median_interval(ratios)
        print(f"ours / core KSampler {what}, median of the pairs {statistics.median(ratios):.4f} "
              f"(95% bootstrap interval {lo:.4f}-{hi:.4f}; single pairs {min(ratios):.4f}-{max(ratios):.4f})")
    print(f"the patch's own work (per-evaluation bookkeeping + guidance-strength curve), timed inside one run: "
          f"{own[0] * 1e3:.1f} ms of {total:.2f} s = {own[0] / total:.3%} (target: overhead <= 1%)")


def _median_interval(values, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the median (seeded, so a rerun prints the same)."""
    import random

    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return meds[int(0.025 * resamples)], meds[int(0.975 * resamples) - 1]


if __name__ == "__main__":
    arguments = parse_args()  # before the runtime: --help answers at once
    in_runtime(__file__)
    sys.exit(main(arguments))
