"""The paper's findings measured on ShapeFirst World (benchmarks/findings.py prints them; the tests
assert their direction): Tables 1, 3, 4 (findings_swap), Table 2 (findings_guidance, through the
sweep tool) and Fig. 1b / 3 / 8b / 2 (findings_figures)."""

from __future__ import annotations

import time
from pathlib import Path

from . import evalset
from .findings_common import FULL, QUICK
from .findings_figures import figure_runs, print_figures
from .findings_guidance import print_table2, run_sweeps
from .findings_swap import print_swap_tables, print_table3, swap_tables, table3

SEED = 20240515
SECTIONS = ("table1", "table3", "table2", "figures")
FIGURE_STEPS = {"quick": 12, "full": 25}


def mode(quick: bool):
    return QUICK if quick else FULL


def measure(harness, ckpt: Path, out: Path, quick: bool, servers: int = 1, sections=SECTIONS, log=print) -> dict:
    """Every section's raw results and the seconds each took: {section: result, "seconds": {...}}."""
    m = mode(quick)
    ev = evalset.load()
    results: dict = {"mode": m.name, "seconds": {}}
    for section in sections:
        t = time.perf_counter()
        if section == "table1":  # Tables 1 and 4 share their images
            results["table1"] = swap_tables(harness, ckpt.name, ev, m, SEED)
        elif section == "table3":
            results["table3"] = table3(harness, ckpt.name, ev, m, SEED)
        elif section == "table2":
            results["table2"] = run_sweeps(ev, m, ckpt, out, servers, log)
        elif section == "figures":
            results["figures"] = figure_runs(harness, ckpt.name, ev, m, SEED, FIGURE_STEPS[m.name])
        else:
            raise ValueError(f"unknown section {section!r}; one of {', '.join(SECTIONS)}")
        results["seconds"][section] = time.perf_counter() - t
        log(f"findings: {section} took {results['seconds'][section]:.0f} s")
    return results


def report(results: dict) -> list[str]:
    m = mode(results["mode"] == "quick")
    lines = []
    if "table1" in results:
        lines += print_swap_tables(results["table1"], m)
    if "table3" in results:
        lines += print_table3(results["table3"], m)
    if "table2" in results:
        lines += print_table2(results["table2"])
    if "figures" in results:
        lines += print_figures(results["figures"], FIGURE_STEPS[m.name])
    return lines
