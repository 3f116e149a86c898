"""The sweep's command line (scripts/sweep.py): options, local servers, interrupts, the summary.

``parse_args`` needs the standard library only, so ``scripts/sweep.py --help`` (and any argument
error) answers before the runtime is built or torch is imported.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from . import sweep_metrics as metrics

LOG = logging.getLogger("shapefirst.sweep")
INTERRUPTED = "interrupted: rerun the same command to resume"

DESCRIPTION = """Table 2 for your own model: sweep truncated-guidance windows over a prompt set on ComfyUI
servers. For each window: saved sampling latency (each image timed against its a=0 twin on the
same server), the UNet work saved and skipped passes (the node's own accounting), L1 to the a=0
image, and Image-CLIPScore, Text-CLIPScore and FID where their models are given. Writes
summary.md, summary.csv, summary.png, per_image.csv and images/ to --out; rerunning the same
command resumes an interrupted sweep."""

EPILOG = """windows:
  a=N     the last N steps without the text pass (the paper's a)
  a=P%    the last P% of the steps: P/100 x steps rounded to the nearest whole step, halves up
          (a=40% of 25 steps = 10 steps; a=30% of 25 = 7.5 -> 8)
  end=F   guidance_end = F: round(F x steps) guided steps, as the sampler rounds (halves to even)
  adaptive=T  guidance until the relative guidance strength falls below T
  a=0 (plain CFG) is always run: the reference every other window is compared with.

servers:
  no --server: one local ComfyUI is started (the runtime's, CPU) and stopped at the end.
  --start-servers N: N local ComfyUI servers with this pack and the checkpoint, stopped at the end
  whatever happens; with --gpu, server i computes on GPU i (a ComfyUI whose torch has CUDA:
  COMFYUI_PATH / COMFYUI_PYTHON). --server URL: a running ComfyUI with the pack and the checkpoint.

examples:
  python3 scripts/sweep.py --prompts prompts.txt --checkpoint ~/models/v1-5-pruned-emaonly.safetensors
  python3 scripts/sweep.py --prompts prompts.txt --checkpoint model.safetensors --start-servers 2 --gpu \\
      --windows a=20% a=40% a=60% end=0.4 adaptive=0.1
"""


class _Help(argparse.RawDescriptionHelpFormatter):
    """Raw description and epilog; every option's default shown where it has one."""

    def _get_help_string(self, action):
        text, default = action.help or "", action.default
        if default is None or default is False or default == "" or default is argparse.SUPPRESS or "%(default)" in text:
            return text
        shown = " ".join(map(str, default)) if isinstance(default, list) else "%(default)s"
        return f"{text} (default: {shown})"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="sweep.py", description=DESCRIPTION, epilog=EPILOG, formatter_class=_Help)
    ap.add_argument("--prompts", required=True, type=Path, help="prompt file: .txt (one per line, # comments), .csv "
                                                                  "or .jsonl with 'prompt' and optional 'seed'")
    ap.add_argument("--checkpoint", required=True, help="a checkpoint file (local servers), or its name as the "
                                                         "--server servers list it")
    ap.add_argument("--windows", nargs="+", default=["a=5", "a=10", "a=15", "a=20"], metavar="WINDOW",
                    help="windows to compare with a=0: a=N, a=P%%, end=F or adaptive=T (see below)")
    sampling = ap.add_argument_group("sampling")
    sampling.add_argument("--sampler", default="dpmpp_2m", help="ComfyUI sampler name")
    sampling.add_argument("--scheduler", default="karras", help="ComfyUI scheduler name")
    sampling.add_argument("--steps", type=int, default=25, help="sampling steps")
    sampling.add_argument("--cfg", type=float, default=7.5, help="guidance scale inside the window")
    sampling.add_argument("--width", type=int, default=512, help="image width in pixels")
    sampling.add_argument("--height", type=int, default=512, help="image height in pixels")
    sampling.add_argument("--tail", default="uncond", choices=["uncond", "cond"],
                          help="what replaces guidance after the window (uncond = the paper)")
    sampling.add_argument("--negative", default="", help="negative prompt (the paper's tail uses the empty one)")
    sampling.add_argument("--seed", type=int, default=0, help="seed of prompts whose file gives none")
    servers = ap.add_argument_group("servers")
    servers.add_argument("--server", action="append", metavar="URL",
                         help="a running ComfyUI with this pack and the checkpoint (repeat for several)")
    servers.add_argument("--start-servers", type=int, metavar="N",
                         help="start N local ComfyUI servers with this pack and the checkpoint, stop them at the end "
                              "(default without --server: 1)")
    servers.add_argument("--gpu", action="store_true",
                         help="started servers compute on GPU 0..N-1 (one each) instead of the CPU")
    servers.add_argument("--depth", type=int, default=2, help="jobs kept queued per server")
    ap.add_argument("--out", type=Path, default=Path("output/sweep"), help="results folder (resumes if it holds one)")
    group = ap.add_argument_group("metrics (each left out, with the reason, when its model is not given)")
    for metric in metrics.METRICS:
        for opt in metric.options:
            group.add_argument(opt.flag, metavar=opt.metavar, help=opt.help)
    args = ap.parse_args(argv)
    if args.start_servers is not None and args.start_servers < 1:
        ap.error("--start-servers needs a number of servers, 1 or more")
    if args.depth < 1:
        ap.error("--depth must be 1 or more")
    if args.gpu and not args.start_servers:
        ap.error("--gpu applies to servers started with --start-servers N")
    return args


def start_servers(n: int, checkpoint: str, out: Path, gpu: bool = False) -> tuple[list, str]:
    """``n`` local ComfyUI servers with this pack and the checkpoint; returns (servers, checkpoint
    name). CPU servers split this machine's cores between them (OMP_NUM_THREADS)."""
    from . import boot
    from . import server as comfy_server
    from .sweep_server import SweepError

    rt = boot.runtime()
    ckpt = Path(checkpoint).expanduser()
    if not ckpt.is_file():
        ckpt = Path(rt.models) / "checkpoints" / checkpoint
    if not ckpt.is_file():
        raise SweepError(f"checkpoint {checkpoint!r} not found: pass its file path with --checkpoint (local servers "
                         "link it into their models folder), or --server with a running ComfyUI that has it")
    threads = max(1, (os.cpu_count() or 1) // n)
    servers = []
    try:
        for i in range(n):
            base = comfy_server.prepare_base(out / "servers" / f"server{i}", [ckpt])
            env = {"CUDA_VISIBLE_DEVICES": str(i)} if gpu else {"OMP_NUM_THREADS": str(threads)}
            servers.append(comfy_server.ComfyServer(rt.python, rt.comfyui, base, cpu=not gpu, env=env,
                                                    new_session=True).launch())
        for srv in servers:
            try:
                srv.wait_ready()
            except RuntimeError as exc:
                raise SweepError(f"a local ComfyUI did not start: {exc}") from None
            where = f"GPU {servers.index(srv)}" if gpu else f"CPU, {threads} thread(s)"
            LOG.info("sweep: started ComfyUI at %s (%s, pid %d, log %s)", srv.url, where, srv.proc.pid, srv.log_path)
    except BaseException:
        stop_servers(servers)
        raise
    return servers, ckpt.name


def stop_servers(servers) -> None:
    for srv in servers:
        srv.stop()
        LOG.info("sweep: stopped ComfyUI at %s", srv.url)


def _harness(out: Path):
    from .harness import ComfyHarness

    return ComfyHarness(out / "metrics-comfy").boot()


class _Terminated(KeyboardInterrupt):
    """SIGTERM: the same way out as Ctrl-C (jobs cancelled, local servers stopped), exit 143."""


def _on_sigterm(signum, frame):
    raise _Terminated


def main(argv=None) -> int:
    from shapefirst import sweep as pure
    from shapefirst import sweep_table

    from .sweep_summary import write_summary
    from .sweep import Settings, Sweep, SweepError

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main_thread = _in_main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    started: list = []
    try:
        try:
            prompts = pure.read_prompt_file(args.prompts, args.seed)
            windows = pure.parse_windows(args.windows, args.steps)
            for w in windows:
                LOG.info("sweep: window %s", w.describe())
            ctx = metrics.Context(args.out, boot_harness=lambda: _harness(args.out))
            active, left_out = metrics.prepare(args, ctx)
            urls, name = list(args.server or []), args.checkpoint
            n_local = args.start_servers if args.start_servers is not None else (0 if urls else 1)
            if n_local:
                started, name = start_servers(n_local, args.checkpoint, args.out, gpu=args.gpu)
                urls += [srv.url for srv in started]
            s = Settings(name, args.sampler, args.scheduler, args.steps, args.cfg, args.width, args.height,
                         args.tail, args.negative)
            sweep = Sweep(s, prompts, windows, urls, args.out, depth=args.depth)
            records = sweep.run()
        finally:
            stop_servers(started)
        rows, per_window = metrics.score(records, args.out, active)
        heading = (f"{name}, {args.sampler} / {args.scheduler}, {args.steps} steps, cfg {args.cfg:g}, "
                   f"{args.width}x{args.height} px, tail {args.tail}; {len(prompts)} prompt(s), {len(windows)} "
                   f"window(s), {len(urls)} server(s)")
        table, notes = write_summary(rows, windows, args.out, active, per_window, left_out, sweep.notes, heading)
    except (pure.SweepInputError, SweepError, FileNotFoundError) as exc:
        LOG.error("sweep: %s", exc)
        return 2
    except KeyboardInterrupt as exc:
        LOG.error(INTERRUPTED)
        return 143 if isinstance(exc, _Terminated) else 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    sys.stdout.write(sweep_table.table_markdown(table, [m.column for m, _ in active]))
    for metric, why in left_out:
        LOG.info("sweep: left out %s: %s", metric.column.header, why)
    for note in notes:
        LOG.warning("sweep: timings: %s", note)
    LOG.info("sweep: summary in %s (chart summary.png, per image per_image.csv)", (args.out / "summary.md").resolve())
    for f in sweep.failed:
        LOG.error("sweep: %s failed: %s (rerun the same command to retry it)", f["key"], f["error"])
    return 1 if sweep.failed else 0


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
