"""The "against other packs" section of benchmarks/truncated_cfg.py (one process, one run).

At one gate (the guided share of a DPM++ 2M schedule) it times, interleaved in a rotating order
per round, each run divided by the same round's core KSampler run:
- core KSampler at cfg 1.0 (one pass per step), for the ideal saving of eq. 9;
- ours exact: truncated guidance (eq. 9, uncond tail) attached with the pack's ``patch_model``
  to a clone of the MODEL, sampled by core KSampler (what TruncatedCFGSampler does);
- ours + text cache: the same clone with ``nodes.text_cache.attach`` applied on top, ``is_tail``
  taken from the truncation controller when it has one, else from the run's sigmas;
- the chained workaround: two core KSamplerAdvanced (CFG until the gate, then cfg 1.0);
- core EasyCache (defaults) on core KSampler, and EasyCache applied first with ours on top;
- with ``--peers DIR``: ComfyUI_TGate's "TGate Apply" at the same gate. T-GATE replaces the
  forward of the model's transformer blocks in place (the underlying torch modules, shared by
  every clone, never restored), so it gets its own freshly loaded copy of the checkpoint.
Times are process CPU time on the CPU (wall time with ``--gpu``). Each saving is the median over
the rounds of 1 - t / t_core, with a 95% bootstrap interval; the drift columns are the mean
absolute difference of the final latents from core KSampler's and from ours exact.
"""

from __future__ import annotations

import asyncio
import importlib
import statistics
import time
from pathlib import Path

SAMPLER, SCHEDULER, CFG = "dpmpp_2m", "normal", 7.5


def load_peers(folder) -> list[str]:
    """Load every pack folder in ``folder`` into the running ComfyUI; names of those that loaded."""
    import nodes

    loaded = []
    for p in sorted(Path(folder).iterdir()):
        if p.is_dir() and (p / "__init__.py").exists():
            if asyncio.run(nodes.load_custom_node(str(p), module_parent="custom_nodes")):
                loaded.append(p.name)
    return loaded


def run(args, model, pos, empty, latent, ckpt_name, sync, median_interval) -> None:
    import comfy.samplers
    import nodes

    base = nodes.NODE_CLASS_MAPPINGS["TruncatedCFGSampler"].__module__.rsplit(".", 1)[0]
    patch = importlib.import_module(base + ".truncated_cfg_patch")
    text_cache = importlib.import_module(base + ".text_cache")
    steps, gate = args.peer_steps, args.gate
    ksampler, advanced = nodes.KSampler(), nodes.KSamplerAdvanced()
    model_sampling = model.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(model_sampling, SCHEDULER, steps).tolist()
    # T-GATE's gate is a sigma (percent_to_sigma(start_at)); it guides the steps whose sigma is above it
    sigma_gate = model_sampling.percent_to_sigma(gate)
    k = sum(1 for s in sigmas[:-1] if s > sigma_gate)

    def sample(m, cfg=CFG, positive=pos):
        return ksampler.sample(m, 1, steps, cfg, SAMPLER, SCHEDULER, positive, empty, latent)[0]["samples"]

    def ours(text=False, source=None):
        m, controller = patch.patch_model(source or model, patch.GuidanceWindow(end=k / steps, cfg=CFG))
        if text:
            text_cache.attach(m, controller.is_tail)
        return sample(m)

    def chained():
        lat = advanced.sample(model, "enable", 1, steps, CFG, SAMPLER, SCHEDULER, pos, empty, latent, 0, k,
                              "enable")[0]
        return advanced.sample(model, "disable", 1, steps, 1.0, SAMPLER, SCHEDULER, empty, empty, lat, k, steps,
                               "disable")[0]["samples"]

    easycache = nodes.NODE_CLASS_MAPPINGS["EasyCache"]

    def with_easycache():
        return easycache.execute(model, 0.2, 0.15, 0.95, False).result[0]

    variants = {
        "core KSampler": lambda: sample(model),
        "core KSampler, cfg 1 (one pass)": lambda: sample(model, 1.0),
        "ours exact (eq. 9)": ours,
        "ours + text cache": lambda: ours(text=True),
        "chained KSamplerAdvanced": chained,
        "core EasyCache": lambda: sample(with_easycache()),
        "ours + EasyCache": lambda: ours(source=with_easycache()),
    }
    peers = load_peers(args.peers) if args.peers else []
    tgate = nodes.NODE_CLASS_MAPPINGS.get("TGateApplySimple")
    if tgate is not None:
        own_copy = nodes.CheckpointLoaderSimple().load_checkpoint(ckpt_name)[0]
        variants["T-GATE (ComfyUI_TGate)"] = lambda: sample(tgate().apply_tgate(own_copy, start_at=gate)[0])
    elif args.peers:
        print(f"(no TGateApplySimple node in {args.peers}; loaded: {', '.join(peers) or 'nothing'})")

    device = "GPU" if args.gpu else "CPU"
    clock = time.perf_counter if args.gpu else time.process_time
    names = list(variants)
    variants["core KSampler"]()  # warm-up: model load, kernels
    outputs = {}  # the latents for the drift (every variant is deterministic: the last round's)
    times = {name: [] for name in names}
    for r in range(args.rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            sync()
            t = clock()
            outputs[name] = variants[name]()
            sync()
            times[name].append(clock() - t)
    ratios = {n: [t / c for t, c in zip(times[n], times["core KSampler"])] for n in names}
    saved = {n: 1 - statistics.median(ratios[n]) for n in names}
    single = saved["core KSampler, cfg 1 (one pass)"]
    ideal = (steps - k) / steps * single
    core, exact = outputs["core KSampler"].float(), outputs["ours exact (eq. 9)"].float()
    t_core = statistics.median(times["core KSampler"])
    print(f"\n## against other packs: {SAMPLER} ({SCHEDULER}), {steps} steps, gate {gate:.0%} (sigma "
          f"{sigma_gate:.3f}: {k} guided steps, {steps - k} in the tail), {device} "
          f"{'wall' if args.gpu else 'process CPU'} time, {args.rounds} rounds in rotating order; core KSampler "
          f"{t_core:.3f}s; ideal saving of eq. 9 = {steps - k}/{steps} x {single:.1%} = {ideal:.1%}")
    print("| variant | saved vs core KSampler (median) | 95% bootstrap interval | L1 vs core KSampler | "
          "L1 vs ours exact |")
    print("|---|---|---|---|---|")
    for n in names[1:]:
        lo, hi = median_interval([1 - x for x in ratios[n]])
        out = outputs[n].float()
        print(f"| {n} | {saved[n]:.1%} | {lo:.1%} to {hi:.1%} | {(out - core).abs().mean().item():.4f} | "
              f"{(out - exact).abs().mean().item():.4f} |")
    def paired(a, b):  # median over the rounds of the time of a over the time of b in the same round
        return statistics.median(x / y for x, y in zip(times[a], times[b]))

    line = (f"targets: ours exact = {saved['ours exact (eq. 9)'] / ideal:.1%} of ideal (>= 95%); time over the "
            f"chained workaround's: ours exact {paired('ours exact (eq. 9)', 'chained KSamplerAdvanced'):.3f}, "
            f"ours + text cache {paired('ours + text cache', 'chained KSamplerAdvanced'):.3f} (<= 1)")
    if "T-GATE (ComfyUI_TGate)" in saved:
        line += (f"; ours + text cache saves {saved['ours + text cache']:.1%} vs T-GATE "
                 f"{saved['T-GATE (ComfyUI_TGate)']:.1%} (>=; time ratio "
                 f"{paired('ours + text cache', 'T-GATE (ComfyUI_TGate)'):.3f})")
    print(line)
