"""ShapeFirst's main job: run every shipped workflow inside a real, in-process ComfyUI.

Without ``--ckpt`` the SD1.5 workflows run on ShapeFirst World (devtools/world, docs/world.md), a
small SD1.5-format model trained on shapes and shipped in the repository: its checkpoint is assembled
on first use and the workflows' prompts are put in its words (``world.in_world_words``; the files
on disk stay as shipped). The other families' workflows run on their tiny random-weight models.
Quick by default (every sampler capped at 10 steps, small images); ``--full`` runs the
paper's step counts. Writes the outputs and ``summary.md`` (a table and the images, linked
relatively) under ``output/demo/``; ``--ui`` starts the ComfyUI web UI instead.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import signal
import sys
import time
from pathlib import Path

from .demo_highlights import highlights
from .demo_report import describe, guidance_reports, node_order, saved_share, summary, ui_message
from .entry import HelpFormatter
from .paths import DEMO_OUTPUT, UI_BASE, WORKFLOWS
from .runtime import Runtime

QUICK_STEPS = 10
SIZES = {  # (quick, full) image size: the World (trained at 64 px) / a real checkpoint (None = the workflow's)
    "world": (64, 64),
    "real": (256, None),
}



# The demo's progress lines: on stdout, one line each, whatever logging ComfyUI sets up in this process.
LOG = logging.getLogger("shapefirst.demo")
if not LOG.handlers:
    _handler = logging.StreamHandler(sys.stdout)
    _handler.setFormatter(logging.Formatter("%(message)s"))
    LOG.addHandler(_handler)
    LOG.setLevel(logging.INFO)
    LOG.propagate = False

def parse_args(argv):
    ap = argparse.ArgumentParser(prog="demo.py", description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--ckpt", type=Path, help="a real SD1.x checkpoint (.safetensors); default: ShapeFirst World, "
                                             "the small model trained on shapes that ships with the pack")
    ap.add_argument("--out", type=Path, default=DEMO_OUTPUT,
                    help="where outputs and summary.md go (a run of --only writes summary-<names>.md)")
    ap.add_argument("--full", action="store_true",
                    help="the paper's step counts (default: every sampler capped at %d steps)" % QUICK_STEPS)
    ap.add_argument("--size", type=int, default=None,
                    help="image size for every workflow (default: 64, the World's size; 256 quick / the "
                         "workflow's own --full with --ckpt)")
    ap.add_argument("--steps", type=int, default=None, help="cap every sampler's steps (overrides the mode's cap)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: 1 with the World and the tiny family models, whose operations "
                         "are too small "
                         "to share out and whose threads only wait for each other on a busy machine; torch's "
                         "default with --ckpt)")
    ap.add_argument("--only", metavar="NAME", action="append",
                    help="run only this workflow (file name, .json optional); repeat for several")
    ap.add_argument("--ui", action="store_true", help="start the ComfyUI web UI instead of running headlessly")
    ap.add_argument("--port", type=int, default=8188, help="port for --ui (listens on 127.0.0.1 only)")
    return ap.parse_args(argv)


def default_checkpoint(models: Path) -> Path:
    """The checkpoint the demo runs without --ckpt: ShapeFirst World's, assembled on first use in this
    host's models folder from the parameters in devtools/world/params and checked against its hash."""
    from . import world
    from .world.assemble import FILES, file_name

    if not (Path(models) / FILES["checkpoint"][0] / file_name("checkpoint")).exists():
        LOG.info("demo: assembling the ShapeFirst World checkpoint from devtools/world/params (once, a few seconds)...")
    return world.checkpoint(models)


def _checkpoint(args, rt: Runtime) -> tuple[Path, bool]:
    """(checkpoint, is it the World's)."""
    if args.ckpt:
        ckpt = args.ckpt.expanduser().resolve()
        if not ckpt.is_file():
            sys.exit(f"demo: --ckpt {args.ckpt} does not exist")
        return ckpt, False
    return default_checkpoint(rt.models), True


def _workflows(only: list[str] | None) -> list[Path]:
    files = sorted(WORKFLOWS.glob("*.json"))
    if not only:
        return files
    names = [n for item in only for n in item.split(",") if n]
    unknown = [n for n in names if not any(n in (p.name, p.stem) for p in files)]
    if unknown:
        sys.exit(f"demo: no workflow named {', '.join(map(repr, unknown))}; choose from: "
                 f"{', '.join(p.stem for p in files)}")
    return [p for p in files if p.name in names or p.stem in names]


def _summary_name(files: list[Path], only) -> str:
    """summary.md for the whole run; a run of --only never overwrites it."""
    if not only:
        return "summary.md"
    stems = "+".join(p.stem for p in files)
    return f"summary-{stems}.md" if len(stems) <= 120 else f"summary-{hashlib.sha256(stems.encode()).hexdigest()[:10]}.md"


def _peak_mb() -> float | None:
    """The process's peak resident memory so far (MB), where the platform reports it."""
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux
    except (ImportError, OSError):
        return None


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def run_headless(args, rt: Runtime) -> int:
    from . import boot
    from .harness import ComfyHarness
    from .workflows.convert import ui_to_api

    boot.quiet_logs()
    ckpt, is_world = _checkpoint(args, rt)
    quick_size, full_size = SIZES["world" if is_world else "real"]
    size = args.size or (full_size if args.full else quick_size)
    steps = args.steps or (None if args.full else QUICK_STEPS)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    h = ComfyHarness(out / ".work", checkpoints_dir=ckpt.parent, output_dir=out).boot()
    import comfy.utils
    import server
    import torch

    comfy.utils.set_progress_bar_enabled(False)  # one progress line per workflow instead
    if getattr(server.PromptServer, "instance", None) is None:
        # the guider and the model patch send their report as an event, as to a browser: keep it
        server.PromptServer.instance = h.server
    threads = args.threads or (1 if is_world else None)
    if threads:
        torch.set_num_threads(threads)
    info = h.object_info()
    files = _workflows(args.only)
    mode = "full (the paper's step counts)" if args.full else f"quick (at most {QUICK_STEPS} steps per sampler)"
    LOG.info(f"demo: {len(files)} workflow(s), {mode}, images {size or 'as in each workflow'} px, "
             f"{torch.get_num_threads()} torch thread(s)")
    rows, peaks, failures, shown = [], [], 0, {}
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for k, path in enumerate(files, 1):
        prompt = ui_to_api(json.loads(path.read_text()), info)
        t0, c0 = time.perf_counter(), time.process_time()
        status, saved, notes, shown[path.stem] = _run_one(h, rt, prompt, path.stem, (ckpt, is_world, size, steps), out)
        h.release()  # the next workflow starts without this one's models and outputs
        failures += status == "FAILED"
        rows.append((path.stem, status, time.perf_counter() - t0, time.process_time() - c0, saved, notes))
        peaks.append(_peak_mb())  # the process's peak so far: the workflow that raises it holds the most
        elapsed = time.perf_counter() - wall0
        left = elapsed / k * (len(files) - k)
        LOG.info(f"demo: [{k}/{len(files)}] {path.stem} {status} in {rows[-1][2]:.1f}s"
                 + ("" if saved is None else f", truncated guidance saved {100 * saved:.1f}% of the model work")
                 + f"; elapsed {_duration(elapsed)}, about {_duration(left)} left")
        if status != "ok":
            LOG.info(f"demo:   {notes[0]}")
    total = (time.perf_counter() - wall0, time.process_time() - cpu0)
    peak = _peak_mb()
    name = _summary_name(files, args.only)
    summary_path = out / name
    top = highlights(shown, out) if is_world else []
    summary_path.write_text(summary(rows, ckpt, is_world, mode, size, steps, total, peak, top))
    summary_path.with_suffix(".json").write_text(json.dumps(
        {"workflows": [{"name": r[0], "result": r[1], "seconds": r[2], "cpu_seconds": r[3], "saved": r[4],
                        "peak_rss_mb_so_far": p} for r, p in zip(rows, peaks)],
         "seconds": total[0], "cpu_seconds": total[1], "peak_rss_mb": peak}, indent=1))
    LOG.info(f"demo: {sum(r[1] == 'ok' for r in rows)} of {len(rows)} workflows ran in {_duration(total[0])} "
             f"(CPU time {_duration(total[1])})" + (f", peak memory {peak:.0f} MB" if peak else "")
             + f"; summary: {summary_path}")
    return 1 if failures else 0


def _run_one(h, rt: Runtime, prompt: dict, name: str, setup, out: Path):
    """Run one workflow: (result, share of model work truncated guidance saved or None, summary lines,
    (images of its first node with images, guidance reports in node order, prompt lines))."""
    from . import world
    from .harness import GraphError
    from .workflows import family_models
    from .workflows.convert import apply_overrides

    ckpt, is_world, size, steps = setup
    family = family_models.family_of(prompt)
    if family is not None and not is_world:
        return "skipped", None, [(f"needs a {family} model; your --ckpt is an SD1.x checkpoint: load the "
                                  "workflow in ComfyUI with that family's files")], ([], [], [])
    try:
        with family_models.text_encoder_node() if family else contextlib.nullcontext():
            if family:  # the tiny seeded model of that family (devtools/families.py)
                names = family_models.ensure_files(rt.models, [family])
                prompt = family_models.with_family_models(prompt, family, names)
            words = []
            if family is None and is_world:  # the prompts in the World's words; the shipped file is not touched
                worded = world.in_world_words(prompt)
                words = prompt_changes(prompt, worded)
                prompt = worded
            prompt = apply_overrides(prompt, ckpt=ckpt.name, size=size, max_steps=steps)
            result = h.run(prompt)
    except GraphError as exc:
        return "FAILED", None, [str(exc)], ([], [], [])
    reports = guidance_reports(result.ui, result.messages)
    lines = [f"prompt in the World's words: \"{a}\" -> **\"{b}\"**" for a, b in words]
    notes, images = describe(result.ui, result.messages, out, h.work_dir / "temp", name)
    in_order = [r for _, r in sorted(reports, key=lambda item: node_order(item[0]))]
    return "ok", saved_share(reports), lines + notes, (images, in_order, lines)


def prompt_changes(before: dict, after: dict) -> list[tuple[str, str]]:
    """(shipped text, World text) of every text input ``world.in_world_words`` replaced, each pair once."""
    pairs = []
    for nid, node in before.items():
        for key, value in node.get("inputs", {}).items():
            new = after[nid]["inputs"].get(key)
            if isinstance(value, str) and new != value and (value, new) not in pairs:
                pairs.append((value, new))
    return pairs


def _exit(signum, frame):
    raise SystemExit(128 + signum)


def _stop_on_signals(handler=_exit) -> None:
    """SIGTERM and SIGHUP end this process the way Ctrl-C does: through the ``finally`` that stops ComfyUI."""
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            signal.signal(sig, handler)


def run_ui(args, rt: Runtime) -> int:
    from .demo_world import UI_STEPS, sd15_workflows, write_ui_copies
    from .server import ComfyServer, prepare_base

    _stop_on_signals()
    ckpt, is_world = _checkpoint(args, rt)
    base = prepare_base(UI_BASE, [ckpt])
    srv = ComfyServer(rt.python, rt.comfyui, base, port=args.port)
    LOG.info(f"demo: starting ComfyUI (log: {srv.log_path}) ...")
    try:
        srv.start()
        copies = None
        if is_world:  # the copies' steps widgets are found from the node definitions the server serves
            info = srv.get_json("/object_info")
            copies = write_ui_copies(base / "user", sd15_workflows(WORKFLOWS), ckpt.name, info)
        LOG.info(f"demo: ComfyUI is running at {srv.url} with ShapeFirst and the checkpoint {ckpt.name}"
                 + (" (ShapeFirst World)." if is_world else "."))
        for line in ui_message(sorted(WORKFLOWS.glob("*.json")), base / "models", ckpt, copies, UI_STEPS):
            LOG.info(f"demo: {line}")
        LOG.info("demo: Ctrl-C stops ComfyUI.")
        while srv.proc.poll() is None:
            time.sleep(1)
        LOG.error(srv.log_tail())
        return srv.proc.returncode or 1
    except KeyboardInterrupt:
        return 0
    finally:
        _stop_on_signals(signal.SIG_IGN)  # a second signal must not cut the stop short
        srv.stop()  # also when a signal ends this process: never leave ComfyUI serving


def main(rt: Runtime, argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return run_ui(args, rt) if args.ui else run_headless(args, rt)
