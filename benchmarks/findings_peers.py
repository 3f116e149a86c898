"""Table 2's peer column of benchmarks/findings.py: ComfyUI_TGate's "TGate Apply" next to the pack's
truncated guidance at the same gate, on ShapeFirst World, side by side in one process.

For each prompt, core KSampler (plain CFG, a = 0) is the reference; at each a, the gate is the
guided share (T - a) / T, T-GATE's ``start_at``; T-GATE guides the steps whose sigma lies above
``percent_to_sigma(gate)``, and ours gets the same number k of guided steps (``patch_model`` with
guidance_end = k / T, what TruncatedCFGSampler does), so both stop guidance at the same step.
T-GATE replaces its model's transformer blocks' forward in place, so it gets its own loaded copy.
Times are process CPU time of the sampling call (each variant run once before the timed runs);
saved time is the median over prompts of 1 - t / t(a = 0, same prompt); fidelity is Toy-CLIPScore
(image) and L1 to the a = 0 image.
"""

from __future__ import annotations

import gc
import importlib
import statistics
import time

from truncated_cfg_peers import load_peers

CFG = 7.5


def _timed(fn):
    gc.collect()
    gc.disable()
    try:
        t = time.process_time()
        out = fn()
        return out, time.process_time() - t
    finally:
        gc.enable()


def run(peers_dir, ckpt_name: str, prompts: list[str], seed: int, sampler: str, scheduler: str, steps: int,
        windows: list[int]) -> list[str]:
    import comfy.samplers
    import nodes
    import torch

    from devtools.world import evaluate
    from devtools.world.findings_common import bootstrap, fmt

    loaded = load_peers(peers_dir)
    tgate_cls = nodes.NODE_CLASS_MAPPINGS.get("TGateApplySimple")
    if tgate_cls is None:
        return ["", f"(peer column left out: no TGateApplySimple node in {peers_dir}; loaded: "
                    f"{', '.join(loaded) or 'nothing'})"]
    base = nodes.NODE_CLASS_MAPPINGS["TruncatedCFGSampler"].__module__.rsplit(".", 1)[0]
    patch = importlib.import_module(base + ".truncated_cfg_patch")
    loader = nodes.CheckpointLoaderSimple()
    model, clip, vae = loader.load_checkpoint(ckpt_name)[:3]
    own_copy = loader.load_checkpoint(ckpt_name)[0]
    ms = model.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(ms, scheduler, steps).tolist()
    latent = nodes.EmptyLatentImage().generate(64, 64, 1)[0]
    empty = nodes.CLIPTextEncode().encode(clip, "")[0]
    ksampler = nodes.KSampler()

    def sample(m, pos):
        return ksampler.sample(m, seed, steps, CFG, sampler, scheduler, pos, empty, latent)[0]

    def decode(lat):
        return vae.decode(lat["samples"]).clamp(0, 1)

    gates = {}
    for a in windows:
        gate = (steps - a) / steps
        k = sum(1 for s in sigmas[:-1] if s > ms.percent_to_sigma(gate))
        gates[a] = (gate, k)
    variants = {"ours (eq. 9)": lambda a, pos: sample(patch.patch_model(model, patch.GuidanceWindow(
        end=gates[a][1] / steps, cfg=CFG))[0], pos),
        "T-GATE": lambda a, pos: sample(tgate_cls().apply_tgate(own_copy, start_at=gates[a][0])[0], pos)}
    conds = [nodes.CLIPTextEncode().encode(clip, p)[0] for p in prompts]
    for name, fn in variants.items():  # warm-up: first use of each path
        fn(windows[0], conds[0])
    sample(model, conds[0])
    rows = {(name, a): {"saved": [], "image": [], "l1": []} for a in windows for name in variants}
    for pos in conds:
        ref, t_ref = _timed(lambda: sample(model, pos))
        ref_img = decode(ref)
        for a in windows:
            for name, fn in variants.items():
                out, t = _timed(lambda: fn(a, pos))
                img = decode(out)
                r = rows[(name, a)]
                r["saved"].append(1 - t / t_ref)
                r["image"].append(float(evaluate.image_score(img, ref_img)[0]))
                r["l1"].append(float((img - ref_img).abs().mean()))
    lines = ["", f"### Table 2, peer column: ComfyUI_TGate at the same gate, in one process ({sampler} ({scheduler}), "
                 f"{steps} steps, cfg {CFG}; {len(prompts)} prompts; CPU time with torch threads "
                 f"{torch.get_num_threads()})",
             "| a (guided steps k) | method | saved sampling time (median) | Toy-CLIPScore (image) to a=0 | L1 to a=0 |",
             "|---|---|---|---|---|"]
    for a in windows:
        for name in variants:
            r = rows[(name, a)]
            lines.append(f"| a={steps - gates[a][1]} (k={gates[a][1]}) | {name} | "
                         f"{100 * statistics.median(r['saved']):.1f}% | {fmt(bootstrap(r['image']))} | "
                         f"{fmt(bootstrap(r['l1']))} |")
    lines.append("T-GATE keeps the text branch after the gate (cached cross-attention, cond only); ours keeps the "
                 "empty-prompt branch (eq. 9).")
    return lines
