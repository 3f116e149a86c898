"""ShapeFirst's main job: run every shipped workflow inside a real, in-process ComfyUI.

Quick by default (every sampler capped at 10 steps, small images); ``--full`` runs the
paper's step counts. Writes the outputs and ``summary.md`` (a table and the images, linked
relatively) under ``output/demo/``; ``--ui`` starts the ComfyUI web UI instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

from .paths import DEMO_OUTPUT, UI_BASE, WORKFLOWS
from .runtime import Runtime

QUICK_STEPS = 10
SIZES = {  # (quick, full) image size: the random demo checkpoint / a real checkpoint (None = the workflow's)
    "demo": (64, 128),
    "real": (256, None),
}
RANDOM_WEIGHTS_NOTE = (
    "The demo checkpoint has RANDOM weights (real SD1.5 architecture, no training): every number, "
    "curve and timing is real, but the images are noise. For real pictures pass --ckpt with a real "
    "Stable Diffusion 1.x checkpoint, e.g. v1-5-pruned-emaonly.safetensors."
)


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="demo.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", type=Path, help="a real SD1.x checkpoint (.safetensors); default: the random demo one")
    ap.add_argument("--out", type=Path, default=DEMO_OUTPUT, help="where outputs and summary.md go")
    ap.add_argument("--full", action="store_true",
                    help="the paper's step counts (default: every sampler capped at %d steps)" % QUICK_STEPS)
    ap.add_argument("--size", type=int, default=None,
                    help="image size for every workflow (default: 64 quick / 128 --full with the demo "
                         "checkpoint; 256 quick / the workflow's own with --ckpt)")
    ap.add_argument("--steps", type=int, default=None, help="cap every sampler's steps (overrides the mode's cap)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: 1 with the tiny demo checkpoint, whose operations are too small "
                         "to share out and whose threads only wait for each other on a busy machine; torch's "
                         "default with --ckpt)")
    ap.add_argument("--only", metavar="NAME", default=None, help="run only this workflow (file name, .json optional)")
    ap.add_argument("--ui", action="store_true", help="start the ComfyUI web UI instead of running headlessly")
    ap.add_argument("--port", type=int, default=8188, help="port for --ui (listens on 127.0.0.1 only)")
    return ap.parse_args(argv)


def _checkpoint(args, rt: Runtime) -> tuple[Path, bool]:
    if args.ckpt:
        ckpt = args.ckpt.expanduser().resolve()
        if not ckpt.is_file():
            sys.exit(f"demo: --ckpt {args.ckpt} does not exist")
        return ckpt, False
    from . import checkpoints

    folder = Path(rt.models) / "checkpoints"
    if not (folder / checkpoints.checkpoint_name("sd15")).exists():
        print("demo: building the random-weight demo checkpoint (once, about 10 s)...", flush=True)
    return checkpoints.ensure_checkpoint("sd15", folder), True


def _workflows(only: str | None) -> list[Path]:
    files = sorted(WORKFLOWS.glob("*.json"))
    if only is None:
        return files
    chosen = [p for p in files if only in (p.name, p.stem)]
    if not chosen:
        sys.exit(f"demo: no workflow named {only!r}; choose one of: {', '.join(p.stem for p in files)}")
    return chosen


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def run_headless(args, rt: Runtime) -> int:
    from . import boot
    from .harness import ComfyHarness, GraphError
    from .workflows import family_models
    from .workflows.convert import apply_overrides, ui_to_api

    boot.quiet_logs()
    ckpt, is_demo = _checkpoint(args, rt)
    quick_size, full_size = SIZES["demo" if is_demo else "real"]
    size = args.size or (full_size if args.full else quick_size)
    steps = args.steps or (None if args.full else QUICK_STEPS)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    h = ComfyHarness(out / ".work", checkpoints_dir=ckpt.parent, output_dir=out).boot()
    import comfy.utils
    import torch

    comfy.utils.set_progress_bar_enabled(False)  # one progress line per workflow instead
    threads = args.threads or (1 if is_demo else None)
    if threads:
        torch.set_num_threads(threads)
    info = h.object_info()
    files = _workflows(args.only)
    mode = "full (the paper's step counts)" if args.full else f"quick (at most {QUICK_STEPS} steps per sampler)"
    print(f"demo: {len(files)} workflow(s), {mode}, images {size or 'as in each workflow'} px, "
          f"{torch.get_num_threads()} torch thread(s)", flush=True)
    rows, failures = [], 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for k, path in enumerate(files, 1):
        prompt = ui_to_api(json.loads(path.read_text()), info)
        family = family_models.family_of(prompt)
        t0, c0 = time.perf_counter(), time.process_time()
        if family is not None and not is_demo:
            status, notes = "skipped", [f"needs a {family} model; your --ckpt is an SD1.x checkpoint: load the "
                                        "workflow in ComfyUI with that family's files"]
        else:
            try:
                with family_models.text_encoder_node() if family else contextlib.nullcontext():
                    if family:  # the tiny seeded model of that family (devtools/families.py)
                        names = family_models.ensure_files(rt.models, [family])
                        prompt = family_models.with_family_models(prompt, family, names)
                    prompt = apply_overrides(prompt, ckpt=ckpt.name, size=size, max_steps=steps)
                    result = h.run(prompt)
                status, notes = "ok", _describe(result.ui, out)
            except GraphError as exc:
                failures += 1
                status, notes = "FAILED", [str(exc)]
        rows.append((path.stem, status, time.perf_counter() - t0, time.process_time() - c0, notes))
        elapsed = time.perf_counter() - wall0
        left = elapsed / k * (len(files) - k)
        print(f"demo: [{k}/{len(files)}] {path.stem} {status} in {rows[-1][2]:.1f}s; elapsed "
              f"{_duration(elapsed)}, about {_duration(left)} left", flush=True)
        if status not in ("ok",):
            print(f"demo:   {notes[0]}", flush=True)
    total = (time.perf_counter() - wall0, time.process_time() - cpu0)
    summary = out / "summary.md"
    summary.write_text(_summary(rows, ckpt, is_demo, mode, size, steps, total))
    print(f"demo: {sum(r[1] == 'ok' for r in rows)} of {len(rows)} workflows ran in {_duration(total[0])} "
          f"(CPU time {_duration(total[1])}); summary: {summary}", flush=True)
    return 1 if failures else 0


def _describe(ui: dict, out: Path) -> list[str]:
    """Markdown lines for a workflow's results: its images (relative links) and the pack's reports."""
    notes = []
    for node_id, payload in ui.items():
        for image in payload.get("images", []):
            folder = out if image.get("type") == "output" else out / ".work" / image.get("type", "temp")
            rel = os.path.relpath(folder / image.get("subfolder", "") / image["filename"], out)
            notes.append(f"node {node_id}: ![{image['filename']}]({Path(rel).as_posix()})")
        for curves in payload.get("shapefirst_curves", []):
            c = curves["curves"]
            notes.append(
                f"node {node_id}: {curves['steps']} steps; |x_t - x_0|/|x_0| at the first step: "
                f"low {c['ratio_denoise_low'][0]:.3f}, high {c['ratio_denoise_high'][0]:.3f}; files "
                + ", ".join(f"{f['subfolder']}/{f['filename']}" for f in curves.get("files", [])))
        for table in payload.get("shapefirst_tokens", []):
            rows = sum(len(e.get("rows", [])) for e in table.get("encoders", []))
            notes.append(f"node {node_id}: EOS swap, {rows} token rows; {table.get('title', '')}")
    return notes


def _summary(rows, ckpt: Path, is_demo: bool, mode: str, size, steps, total) -> str:
    lines = ["# ShapeFirst demo run", "",
             f"- checkpoint: {ckpt.name}" + (" (random weights)" if is_demo else ""),
             "- workflows of other model families (SD3.5, Wan, Qwen-Image): "
             + ("the tiny seeded models of devtools/families.py (random weights)" if is_demo
                else "skipped (they need that family's files)"),
             f"- mode: {mode}; image size: {size or 'as in each workflow'}; step cap: {steps or 'none'}"
             + ("" if steps is None else "; `--full` runs the paper's step counts"),
             f"- total: {total[0]:.0f} s wall, {total[1]:.0f} s CPU time of the process", ""]
    if is_demo:
        lines += [f"> {RANDOM_WEIGHTS_NOTE}", ""]
    lines += ["| workflow | result | seconds | CPU seconds |", "|---|---|---|---|"]
    lines += [f"| {name} | {status} | {secs:.1f} | {cpu:.1f} |" for name, status, secs, cpu, _ in rows]
    for name, _, _, _, notes in rows:
        lines += ["", f"## {name}", "", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def run_ui(args, rt: Runtime) -> int:
    from .server import ComfyServer, prepare_base

    ckpt, is_demo = _checkpoint(args, rt)
    srv = ComfyServer(rt.python, rt.comfyui, prepare_base(UI_BASE, [ckpt]), port=args.port)
    print(f"demo: starting ComfyUI (log: {srv.log_path}) ...", flush=True)
    srv.start()
    print(f"demo: ComfyUI is running at {srv.url} with ShapeFirst and checkpoint {ckpt.name}.")
    print("demo: open the workflow browser (Workflow > Browse Templates > comfyui-shapefirst). Ctrl-C stops.")
    if is_demo:
        print(f"demo: {RANDOM_WEIGHTS_NOTE}")
    try:
        while srv.proc.poll() is None:
            time.sleep(1)
        print(srv.log_tail(), file=sys.stderr)
        return srv.proc.returncode or 1
    except KeyboardInterrupt:
        return 0
    finally:
        srv.stop()


def main(rt: Runtime, argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return run_ui(args, rt) if args.ui else run_headless(args, rt)
