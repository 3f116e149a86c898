#!/usr/bin/env python3
"""Peak memory of the main job (scripts/demo.py), beside the peak of its heaviest workflow run alone.

    python3 benchmarks/demo_memory.py                 # the quick main job, every workflow
    python3 benchmarks/demo_memory.py --only fig2_frequency_over_sampling --only sd35_truncated_cfg

Runs the main job in a fresh process, reads from its summary (``summary*.json``) the peak resident
memory after each workflow, takes the workflow that raised the peak last (the heaviest), and runs
that one alone in another fresh process. Prints both peaks and their ratio: about 1.0 means nothing
an earlier workflow loaded is still held when a later one runs (the demo frees each workflow's
models and outputs before the next). Both runs use the same runtime, checkpoint and settings, and
the models are built (and cached) before either is measured.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import _bootstrap  # noqa: F401

from devtools.entry import HelpFormatter, in_runtime

REPO = Path(__file__).resolve().parent.parent


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--only", metavar="NAME", action="append",
                    help="workflows of the job (default: all, as the main job runs them)")
    ap.add_argument("--full", action="store_true", help="the paper's step counts instead of the quick run")
    return ap.parse_args(argv)


def demo(names: list[str] | None, full: bool, out: Path) -> dict:
    """Run scripts/demo.py in a fresh process; its summary data (per-workflow peaks)."""
    args = [sys.executable, str(REPO / "scripts" / "demo.py"), "--out", str(out)]
    args += [a for name in names or [] for a in ("--only", name)] + (["--full"] if full else [])
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"demo_memory: the main job failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(next(out.glob("summary*.json")).read_text())


def main(args) -> int:
    with tempfile.TemporaryDirectory(prefix="shapefirst-demo-memory-") as tmp:
        first = demo(args.only, args.full, Path(tmp) / "first")  # builds and caches any missing model
        job = demo(args.only, args.full, Path(tmp) / "job")
        rows = job["workflows"]
        heaviest = next(r["name"] for r in rows if r["peak_rss_mb_so_far"] >= rows[-1]["peak_rss_mb_so_far"])
        alone = demo([heaviest], args.full, Path(tmp) / "alone")
    ratio = job["peak_rss_mb"] / alone["peak_rss_mb"]
    print(f"main job ({'full' if args.full else 'quick'}, {len(rows)} workflows): peak resident memory "
          f"{job['peak_rss_mb']:.0f} MB in {job['seconds']:.0f} s (the run before it, which built any missing "
          f"model: {first['peak_rss_mb']:.0f} MB)")
    print(f"its heaviest workflow alone ({heaviest}): peak {alone['peak_rss_mb']:.0f} MB")
    print(f"ratio job / heaviest alone: {ratio:.2f} (1.00: nothing of earlier workflows is held)")
    raised = {}
    for r in rows:  # the workflows that raised the peak by more than 50 MB, in order
        if r["peak_rss_mb_so_far"] > max(raised.values(), default=0) + 50:
            raised[r["name"]] = r["peak_rss_mb_so_far"]
    print("peak after the workflows that raised it: " + ", ".join(f"{n} {mb:.0f} MB" for n, mb in raised.items()))
    return 0


if __name__ == "__main__":
    arguments = parse_args()  # before the runtime: --help answers at once
    in_runtime(__file__)
    sys.exit(main(arguments))
