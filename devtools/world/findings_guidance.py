"""Table 2 of the paper on ShapeFirst World through the sweep tool (scripts/sweep.py): a = 0 ... T
for DDIM-50 and DPM-Solver-25 (DPM++ 2M), Toy-CLIPScore (image) and L1 to the full-guidance image,
and the saved sampling time, each image timed against its a = 0 twin on the same server.

The sweep writes per_image.jsonl; the intervals here resample prompts (each prompt's value the
mean over its seeds).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from .assemble import PARAMS
from .findings_common import bootstrap, fmt, single_prompts

REPO = Path(__file__).resolve().parents[2]
SEEDS_PER_PROMPT = 2


def write_prompts(ev: dict, n: int, path: Path) -> int:
    """The sweep's prompt file: ``n`` one-object prompts x SEEDS_PER_PROMPT seeds (jsonl)."""
    rows = [{"prompt": t["prompt"], "seed": s} for t in single_prompts(ev, n)
            for s in ev["sample_seeds"][:SEEDS_PER_PROMPT]]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return len(rows)


def sweep_command(prompts: Path, ckpt: Path, sampler: str, scheduler: str, steps: int, windows: list[int],
                  out: Path, servers: int) -> list[str]:
    return [sys.executable, str(REPO / "scripts" / "sweep.py"), "--prompts", str(prompts), "--checkpoint", str(ckpt),
            "--sampler", sampler, "--scheduler", scheduler, "--steps", str(steps), "--cfg", "7.5",
            "--width", "64", "--height", "64", "--windows", *[f"a={a}" for a in windows],
            "--toy-clip", str(PARAMS), "--start-servers", str(servers), "--out", str(out)]


def run_sweeps(ev: dict, mode, ckpt: Path, out: Path, servers: int, log) -> dict:
    """{sampler: {"steps": T, "rows": per-image records}} for every sampler of the mode."""
    prompts = out / "table2_prompts.jsonl"
    write_prompts(ev, mode.sweep_prompts, prompts)
    result = {}
    for sampler, (scheduler, steps, windows) in mode.sweep_windows.items():
        folder = out / f"table2-{sampler}-{steps}"
        cmd = sweep_command(prompts, ckpt, sampler, scheduler, steps, windows, folder, servers)
        log(f"$ {' '.join(cmd[1:])}")
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"the sweep failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
        rows = [json.loads(line) for line in (folder / "per_image.jsonl").read_text().splitlines() if line]
        result[sampler] = {"scheduler": scheduler, "steps": steps, "rows": rows, "folder": str(folder)}
    return result


def per_window(rows: list[dict]) -> dict[str, dict[str, list[float]]]:
    """{window: {metric: [per-prompt values]}}: Toy-CLIPScore (image) and L1 to a=0, and
    1 - seconds / (the a = 0 twin's seconds); each prompt's value the mean over its seeds."""
    ref = {r["prompt_index"]: r for r in rows if r["window"] == "a=0"}
    acc: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in rows:
        base = ref.get(r["prompt_index"])
        key = (r["window"], r["a"])
        if r.get("toy_image") is not None:
            acc[key]["image"][r["prompt"]].append(r["toy_image"])
        if r.get("l1") is not None:
            acc[key]["l1"][r["prompt"]].append(r["l1"])
        if r.get("toy_text") is not None:
            acc[key]["text"][r["prompt"]].append(r["toy_text"])
        if base and r.get("seconds") and base.get("seconds") and r.get("server") == base.get("server"):
            acc[key]["saved"][r["prompt"]].append(1 - r["seconds"] / base["seconds"])
        if r.get("saved_fraction") is not None:
            acc[key]["work"][r["prompt"]].append(r["saved_fraction"])
    return {key: {m: [sum(v) / len(v) for v in by_prompt.values()] for m, by_prompt in metrics.items()}
            for key, metrics in sorted(acc.items(), key=lambda kv: kv[0][1] or 0)}


def print_table2(result: dict) -> list[str]:
    lines = []
    paper = {("ddim", 10): ".998 / .011 / 7.8%", ("ddim", 20): ".996 / .022 / 18.1%",
             ("ddim", 30): ".971 / .043 / 27.2%", ("ddim", 40): ".838 / .087 / 35.2%",
             ("ddim", 50): ".539 / .195 / 48.5%", ("dpmpp_2m", 5): ".999 / .015 / 8.4%",
             ("dpmpp_2m", 10): ".994 / .027 / 18.0%", ("dpmpp_2m", 15): ".956 / .050 / 26.1%",
             ("dpmpp_2m", 20): ".798 / .100 / 34.9%", ("dpmpp_2m", 25): ".533 / .188 / 47.6%"}
    for sampler, res in result.items():
        table = per_window(res["rows"])
        n = len(next(iter(table.values()))["image"]) if table else 0
        lines += ["", f"### Table 2: {sampler} ({res['scheduler']}), {res['steps']} steps, cfg 7.5, through "
                      f"scripts/sweep.py ({n} prompts x {SEEDS_PER_PROMPT} seeds; sweep folder {res['folder']})",
                  "| window | a | Toy-CLIPScore (image) to a=0 | L1 to a=0 | Toy-CLIPScore (text) | saved sampling time | "
                  "UNet work saved | paper (SD1.5): image / L1 / saved |", "|---|---|---|---|---|---|---|---|"]
        for (window, a), m in table.items():
            cells = [fmt(bootstrap(m.get(k, []))) if m.get(k) else "-" for k in ("image", "l1", "text")]
            saved = fmt(bootstrap([100 * v for v in m["saved"]]), 1) + "%" if m.get("saved") else "-"
            work = f"{100 * sum(m['work']) / len(m['work']):.1f}%" if m.get("work") else "-"
            lines.append(f"| {window} | {a} | {' | '.join(cells)} | {saved} | {work} | "
                         f"{paper.get((sampler, a), '1.000 / 0.000 / 0%' if not a else '-')} |")
    return lines
