#!/usr/bin/env python3
"""ShapeFirst's main job: run every workflow under workflows/ inside a real ComfyUI.

    python3 scripts/demo.py                 # headless: runs every workflow, writes outputs + summary
    python3 scripts/demo.py --ckpt PATH     # the same with your own SD1.5 checkpoint
    python3 scripts/demo.py --ui            # starts ComfyUI at http://127.0.0.1:8188 with the pack

Builds the ComfyUI runtime on first use (scripts/runtime.py). Without --ckpt it builds a
demo checkpoint of the real SD1.5 architecture with RANDOM weights: the mechanics (timings,
curves, outputs) are real, the pictures are noise. Real pictures need a real SD checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import runtime  # noqa: E402  (standard library only)

RANDOM_WEIGHTS_NOTE = (
    "The demo checkpoint has RANDOM weights (real SD1.5 architecture, no training): every number, "
    "curve and timing is real, but the images are noise. For real pictures pass --ckpt with a real "
    "Stable Diffusion 1.x checkpoint, e.g. v1-5-pruned-emaonly.safetensors."
)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", type=Path, help="a real SD1.x checkpoint (.safetensors); default: the random demo one")
    ap.add_argument("--out", type=Path, default=REPO / "output" / "demo", help="where outputs and summary.md go")
    ap.add_argument("--size", type=int, default=None,
                    help="override every workflow's image size (default: 128 with the demo checkpoint, "
                         "the workflow's own size with --ckpt)")
    ap.add_argument("--steps", type=int, default=None, help="cap every sampler's steps (default: as in the workflow)")
    ap.add_argument("--only", default=None, help="run only workflows whose file name contains this text")
    ap.add_argument("--ui", action="store_true", help="start the ComfyUI web UI instead of running headlessly")
    ap.add_argument("--port", type=int, default=8188, help="port for --ui (listens on 127.0.0.1 only)")
    return ap.parse_args(argv)


def _checkpoint(args, models_dir: Path) -> tuple[Path, bool]:
    if args.ckpt:
        ckpt = args.ckpt.expanduser().resolve()
        if not ckpt.is_file():
            sys.exit(f"demo: --ckpt {args.ckpt} does not exist")
        return ckpt, False
    import checkpoints

    print("demo: building the random-weight demo checkpoint (once, about 10 s)...", flush=True)
    return checkpoints.ensure_checkpoint("sd15", models_dir / "checkpoints"), True


def run_headless(args, rt) -> int:
    import harness
    import workflow_tools

    harness.quiet_logs()
    ckpt, is_demo = _checkpoint(args, Path(rt.models))
    size = args.size or (128 if is_demo else None)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    h = harness.ComfyHarness(rt.comfyui, Path(rt.custom_nodes) / runtime.PACK_DIR_NAME, out / ".work",
                             checkpoints_dir=ckpt.parent, output_dir=out).boot()
    info = h.object_info()
    rows, failures = [], 0
    for path in sorted((REPO / "workflows").glob("*.json")):
        if args.only and args.only not in path.name:
            continue
        prompt = workflow_tools.ui_to_api(json.loads(path.read_text()), info)
        prompt = workflow_tools.apply_overrides(prompt, ckpt=ckpt.name, size=size, max_steps=args.steps)
        print(f"demo: running {path.name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            result = h.run(prompt)
        except harness.GraphError as exc:
            failures += 1
            rows.append((path.name, "FAILED", time.perf_counter() - t0, [str(exc)]))
            print(f"demo: {path.name} FAILED: {exc}", flush=True)
            continue
        seconds = time.perf_counter() - t0
        notes = _describe(result.ui)
        rows.append((path.name, "ok", seconds, notes))
        print(f"demo: {path.name} ok in {seconds:.1f}s", flush=True)
    summary = _summary(rows, ckpt, is_demo, size, args.steps, out)
    (out / "summary.md").write_text(summary)
    print(summary)
    if not rows:
        print("demo: no workflow matched", file=sys.stderr)
        return 1
    return 1 if failures else 0


def _describe(ui: dict) -> list[str]:
    notes = []
    for node_id, payload in ui.items():
        for image in payload.get("images", []):
            folder = f"{image['subfolder']}/" if image.get("subfolder") else ""
            notes.append(f"node {node_id}: {image['type']} image {folder}{image['filename']}")
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


def _summary(rows, ckpt: Path, is_demo: bool, size, steps, out: Path) -> str:
    lines = ["# ShapeFirst demo run", "",
             f"- checkpoint: {ckpt.name}" + (" (random weights)" if is_demo else ""),
             f"- image size override: {size or 'none'}; step cap: {steps or 'none'}",
             f"- outputs: {out}", ""]
    if is_demo:
        lines += [f"> {RANDOM_WEIGHTS_NOTE}", ""]
    lines += ["| workflow | result | seconds |", "|---|---|---|"]
    lines += [f"| {name} | {status} | {secs:.1f} |" for name, status, secs, _ in rows]
    for name, _, _, notes in rows:
        lines += ["", f"## {name}", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def run_ui(args, rt) -> int:
    import comfy_server

    ckpt, is_demo = _checkpoint(args, Path(rt.models))
    base = comfy_server.prepare_base(Path(rt.models).parent / "ui", [ckpt])
    srv = comfy_server.ComfyServer(rt.python, rt.comfyui, base, port=args.port)
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


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        rt = runtime.ensure_runtime()
    except runtime.RuntimeError_ as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    if Path(sys.executable).resolve() != Path(rt.python).resolve() and not os.environ.get("SHAPEFIRST_DEMO_INNER"):
        env = dict(os.environ, SHAPEFIRST_DEMO_INNER="1")
        os.execve(str(rt.python), [str(rt.python), str(Path(__file__).resolve()), *argv], env)
    return run_ui(args, rt) if args.ui else run_headless(args, rt)


if __name__ == "__main__":
    sys.exit(main())
