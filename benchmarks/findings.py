#!/usr/bin/env python3
"""The paper's findings measured on ShapeFirst World (docs/world.md), with the pack's own nodes.

    python3 benchmarks/findings.py --quick            # a few prompts, about 2 minutes on 2 cores
    python3 benchmarks/findings.py [--peers DIR]      # the full run, about 20 minutes on 2 cores

Runs inside the ComfyUI runtime of devtools/runtime.py (built on first use), on the world's
checkpoint (assembled on first use). Over the fixed held-out prompts (devtools/world/eval_prompts.json)
and several noise samples each, with 95% bootstrap intervals over prompts (or A/B pairs):

* Table 1: EOS Swap Conditioning "[SOS] + A + [EOS]_B": Toy-CLIPScore (text) with A and with B, the
  classifier's shape and colour against A's and B's, for pairs that differ in shape or in colour;
* Table 4: the swap in the Keys only / Values only (EOS Swap K/V Patch);
* Table 3: semantic tokens or [EOS] replaced by zeros or noise;
* Table 2: a = 0 ... T for DDIM-50 and DPM-Solver-25 (DPM++ 2M) through scripts/sweep.py (local
  servers, Toy-CLIPScore metric): image score and L1 to the full-guidance image, saved time; with
  --peers DIR (a folder of packs holding ComfyUI_TGate), T-GATE at the same gate beside ours;
* Fig. 1b / 3 / 8b from Attention Map Capture / View and the truncated sampler's guidance curve,
  Fig. 2 from Frequency Trace / Curves.

Prints Markdown tables; writes report.md and results.json (and the sweeps' folders) to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import _bootstrap  # noqa: F401

from devtools.entry import HelpFormatter, in_runtime

SECTIONS = ("table1", "table3", "table2", "figures")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a few prompts and windows (the test suite runs this)")
    ap.add_argument("--peers", type=Path, metavar="DIR",
                    help="a folder of custom-node packs holding ComfyUI_TGate: T-GATE beside ours in Table 2")
    ap.add_argument("--out", type=Path, default=Path("output/findings"), help="where report.md, results.json and "
                                                                               "the sweeps' folders go")
    ap.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="sections to run")
    ap.add_argument("--servers", type=int, default=2, help="local ComfyUI servers of the Table 2 sweeps")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in this process (0: torch's default)")
    return ap.parse_args(argv)


def main(args) -> int:
    import torch

    from devtools import boot, world
    from devtools.harness import ComfyHarness
    from devtools.world import findings, findings_figures, findings_guidance

    if args.threads:
        torch.set_num_threads(args.threads)
    boot.quiet_logs()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    ckpt = world.checkpoint(Path(boot.runtime().models))
    harness = ComfyHarness(out / "comfy", ckpt.parent, out / "comfy" / "output").boot()
    t0 = time.perf_counter()
    results = findings.measure(harness, ckpt, out, args.quick, args.servers, args.only,
                               log=lambda s: print(s, flush=True))
    lines = findings.report(results)
    if args.peers and "table2" in args.only:
        import findings_peers

        m = findings.mode(args.quick)
        scheduler, steps, windows = m.sweep_windows["dpmpp_2m"]
        from devtools.world import evalset
        from devtools.world.findings_common import single_prompts

        prompts = [t["prompt"] for t in single_prompts(evalset.load(), m.peer_prompts)]
        t = time.perf_counter()
        with torch.inference_mode():  # as ComfyUI's executor runs every node
            lines += findings_peers.run(args.peers, ckpt.name, prompts, findings.SEED, "dpmpp_2m", scheduler, steps,
                                        windows)
        results["seconds"]["peers"] = time.perf_counter() - t
    lines = [f"# ShapeFirst World: the paper's findings ({results['mode']} mode)", "",
             f"Checkpoint {ckpt.name}; seconds per section: "
             + ", ".join(f"{k} {v:.0f}" for k, v in results["seconds"].items())] + lines
    lines += ["", f"Total {time.perf_counter() - t0:.0f} s."]
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    slim = {k: v for k, v in results.items() if k in ("mode", "seconds", "table1", "table3")}
    if "table2" in results:
        slim["table2"] = {sampler: {window: m for (window, _), m in findings_guidance.per_window(r["rows"]).items()}
                          for sampler, r in results["table2"].items()}
    if "figures" in results:
        slim["figures"] = findings_figures.series(results["figures"])
    (out / "results.json").write_text(json.dumps(slim, indent=1))
    sys.stdout.write(text)
    print(f"(written to {out / 'report.md'})")
    return 0


if __name__ == "__main__":
    arguments = parse_args()  # before the runtime: --help answers at once
    in_runtime(__file__)
    sys.exit(main(arguments))
