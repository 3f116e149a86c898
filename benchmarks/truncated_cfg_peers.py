"""The "against other packs" section of benchmarks/truncated_cfg.py (one process, one run).

At one gate (the guided share of a DPM++ 2M schedule) it times, interleaved in a seeded random
order per round, each run divided by the same round's core KSampler run:
- core KSampler at cfg 1.0 (one pass per step), for the ideal saving of eq. 9;
- ours exact: truncated guidance (eq. 9, uncond tail) attached with the pack's ``patch_model``
  to a clone of the MODEL, sampled by core KSampler (what TruncatedCFGSampler does);
- ours + text cache: the same clone with ``nodes.text_cache.attach`` (``tail_output``) applied on top, the
  tail read from the truncation patch's decision for each evaluation;
- the chained workaround: two core KSamplerAdvanced (CFG until the gate, then cfg 1.0);
- core EasyCache (defaults) on core KSampler, and EasyCache applied first with ours on top;
- with ``--peers DIR``: ComfyUI_TGate's "TGate Apply" at the same gate. T-GATE replaces the
  forward of the model's transformer blocks in place (the underlying torch modules, shared by
  every clone, never restored), so it gets its own freshly loaded copy of the checkpoint.
Times are process CPU time on the CPU (wall time with ``--gpu``). Every variant runs once before
the timed rounds (first use of batch shapes, imports, T-GATE's own checkpoint), each round runs
the variants in a seeded random order (no variant always follows the same one), and each timed
run starts after a garbage collection, with the collector off until it ends (no run pays for
another's garbage). Each saving is the median over the rounds of 1 - t / t_core, with a 95%
bootstrap interval; the drift columns are the mean absolute difference of the final latents from
core KSampler's and from ours exact.

The ideal saving of eq. 9 is (tail steps / steps) x (1 - t_cfg1 / t_core): core KSampler at cfg
1.0 runs the same sampler, scheduler, steps, latent and the same two conditionings through the
same guider; ComfyUI then drops the second branch (its cfg-1 shortcut), so each of its steps is
the one-pass step of eq. 9's tail with nothing else taken away. Fixed per-run work cancels in the
formula (it is in both times). "ours exact = X% of ideal" is the median saving of ours over the
median ideal saving, its interval from resampling whole rounds; "ours / ideal time" compares
each round's ours with the time eq. 9 would take in that round, (k t_core + (n - k) t_cfg1) / n.

``--quick`` keeps only core KSampler, cfg 1 and ours exact, and first counts, deterministically,
the work of one step: the aten operators (torch profiler) and Python calls of a tail step of ours
against a step of core KSampler at cfg 1, and of a guided step of ours against a step of core
KSampler, listing every operator or call whose count differs.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import importlib
import random
import statistics
import sys
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


ONE_PASS = "core KSampler, cfg 1 (one pass)"
EXACT = "ours exact (eq. 9)"


def run(args, model, pos, empty, latent, ckpt_name, sync, median_interval) -> None:
    import comfy.samplers
    import nodes

    base = nodes.NODE_CLASS_MAPPINGS["TruncatedCFGSampler"].__module__.rsplit(".", 1)[0]
    patch = importlib.import_module(base + ".truncated_cfg_patch")
    text_cache = importlib.import_module(base + ".text_cache")
    quick = getattr(args, "quick", False)
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
        m, _ = patch.patch_model(source or model, patch.GuidanceWindow(end=k / steps, cfg=CFG))
        if text:
            text_cache.attach(m, text_cache.MODE_TAIL, "benchmark")
        return sample(m)

    def chained():
        lat = advanced.sample(model, "enable", 1, steps, CFG, SAMPLER, SCHEDULER, pos, empty, latent, 0, k,
                              "enable")[0]
        return advanced.sample(model, "disable", 1, steps, 1.0, SAMPLER, SCHEDULER, empty, empty, lat, k, steps,
                               "disable")[0]["samples"]

    easycache = nodes.NODE_CLASS_MAPPINGS["EasyCache"]

    def with_easycache():
        return easycache.execute(model, 0.2, 0.15, 0.95, False).result[0]

    variants = {"core KSampler": lambda: sample(model), ONE_PASS: lambda: sample(model, 1.0), EXACT: ours}
    if quick:
        step_work(lambda: sample(model), lambda: sample(model, 1.0), ours, first_tail=k)
    else:
        variants.update({
            "ours + text cache": lambda: ours(text=True),
            "chained KSamplerAdvanced": chained,
            "core EasyCache": lambda: sample(with_easycache()),
            "ours + EasyCache": lambda: ours(source=with_easycache()),
        })
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
    outputs = {}  # the latents for the drift (every variant is deterministic: the last round's)
    for name in names:  # warm-up: every variant once (first use of its batch shapes, imports, T-GATE's patching)
        outputs[name] = variants[name]()
    times = {name: [] for name in names}
    order_rng = random.Random(0)
    for r in range(args.rounds):
        order = names[:]
        order_rng.shuffle(order)
        for name in order:
            outputs[name], t = timed(variants[name], clock, sync)
            times[name].append(t)
    ratios = {n: [t / c for t, c in zip(times[n], times["core KSampler"])] for n in names}
    saved = {n: 1 - statistics.median(ratios[n]) for n in names}
    tail = (steps - k) / steps
    ideal = tail * saved[ONE_PASS]
    core, exact = outputs["core KSampler"].float(), outputs[EXACT].float()
    t_core = statistics.median(times["core KSampler"])
    print(f"\n## {'quick: ours exact vs the ideal' if quick else 'against other packs'}: {SAMPLER} ({SCHEDULER}), "
          f"{steps} steps, gate {gate:.0%} (sigma {sigma_gate:.3f}: {k} guided steps, {steps - k} in the tail), "
          f"{device} {'wall' if args.gpu else 'process CPU'} time, {args.rounds} rounds in seeded random order; "
          f"core KSampler {t_core:.3f}s; ideal saving of eq. 9 = {steps - k}/{steps} x {saved[ONE_PASS]:.1%} = "
          f"{ideal:.1%}")
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

    def share_of_ideal(rounds):  # median saving of ours over the median ideal saving, on these rounds
        one = 1 - statistics.median(ratios[ONE_PASS][i] for i in rounds)
        return (1 - statistics.median(ratios[EXACT][i] for i in rounds)) / (tail * one)

    lo, hi = _round_interval(share_of_ideal, args.rounds)
    vs_ideal = [t / ((k * c + (steps - k) * o) / steps)
                for t, c, o in zip(times[EXACT], times["core KSampler"], times[ONE_PASS])]
    ilo, ihi = median_interval(vs_ideal)
    line = (f"targets: ours exact = {share_of_ideal(range(args.rounds)):.1%} of ideal (95% interval over the rounds "
            f"{lo:.1%} to {hi:.1%}; >= 95%); ours / ideal time {statistics.median(vs_ideal):.4f} (interval "
            f"{ilo:.4f} to {ihi:.4f})")
    if not quick:
        line += (f"; time over the chained workaround's: ours exact {paired(EXACT, 'chained KSamplerAdvanced'):.3f}, "
                 f"ours + text cache {paired('ours + text cache', 'chained KSamplerAdvanced'):.3f} (<= 1)")
    if "T-GATE (ComfyUI_TGate)" in saved:
        line += (f"; ours + text cache saves {saved['ours + text cache']:.1%} vs T-GATE "
                 f"{saved['T-GATE (ComfyUI_TGate)']:.1%} (>=; time ratio "
                 f"{paired('ours + text cache', 'T-GATE (ComfyUI_TGate)'):.3f})")
    print(line)


def timed(fn, clock, sync):
    """(fn(), its time): collected garbage first and the collector off while it runs."""
    gc.collect()
    gc.disable()
    try:
        sync()
        t = clock()
        out = fn()
        sync()
        return out, clock() - t
    finally:
        gc.enable()


def _round_interval(stat, rounds: int, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of ``stat(round indices)``, resampling whole rounds (seeded)."""
    rng = random.Random(seed)
    values = sorted(stat(rng.choices(range(rounds), k=rounds)) for _ in range(resamples))
    return values[int(0.025 * resamples)], values[int(0.975 * resamples) - 1]


def step_work(core, one_pass, ours, first_tail: int) -> None:
    """Count the aten operators and Python calls of single steps: ours vs core, deterministically.

    Step ``first_tail + 2`` of ours (a tail step) against the same step of core KSampler at cfg 1,
    and step 1 of ours (guided) against step 1 of core KSampler: same sigma, same shapes.
    """
    import comfy.samplers
    from torch.profiler import ProfilerActivity, profile

    tail_step, guided_step = first_tail + 2, 1
    original = comfy.samplers.sampling_function
    counts = {}

    def counted(run, want):
        state = {"step": 0}

        def sampling_function(*a, **kw):  # one call per model evaluation (dpmpp_2m: one per step)
            i = state["step"]
            state["step"] += 1
            if i != want:
                return original(*a, **kw)
            calls = collections.Counter()

            def on_call(frame, event, arg):
                if event == "call":  # counted per source file; built-ins together
                    calls[Path(frame.f_code.co_filename).name] += 1
                elif event == "c_call":
                    calls["built-ins"] += 1

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                sys.setprofile(on_call)
                try:
                    out = original(*a, **kw)
                finally:
                    sys.setprofile(None)
            counts[want] = (collections.Counter(e.name for e in prof.events()), calls)
            return out

        comfy.samplers.sampling_function = sampling_function
        try:
            run()
        finally:
            comfy.samplers.sampling_function = original
        return counts.pop(want)

    pairs = (("tail step", tail_step, ours, one_pass, "core KSampler at cfg 1"),
             ("guided step", guided_step, ours, core, "core KSampler"))
    print(f"\n## work of one step (deterministic counts; step {guided_step} guided, step {tail_step} in the tail)")
    print("| step | reference | aten ops: ours / reference | Python calls: ours / reference | what differs "
          "(ours - reference: aten operators, then Python calls by file) |")
    print("|---|---|---|---|---|")
    for label, step, mine, theirs, ref in pairs:
        a, b = counted(mine, step), counted(theirs, step)
        differs = [f"{key} {x[key] - y[key]:+d}" for x, y in ((a[0], b[0]), (a[1], b[1]))
                   for key in sorted(set(x) | set(y)) if x[key] != y[key]]
        print(f"| {label} | {ref} | {sum(a[0].values())} / {sum(b[0].values())} | {sum(a[1].values())} / "
              f"{sum(b[1].values())} | {'; '.join(differs)} |")
