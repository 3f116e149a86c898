"""Train the world, stage by stage, skipping finished stages; resumable at any point.

    python -m devtools.world.train              # data, clip, vae, classifier, encode, unet
    python -m devtools.world.train --export     # write the shipped parameters (devtools/world/params/)
    python -m devtools.world.train --status     # what is done

Run it with the runtime's python (torch). State: .runtime/world-train/ (git-ignored); every stage
saves itself every two minutes and resumes where it stopped. ``--steps-scale`` shortens every
stage (for a trial of the pipeline).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from ..paths import RUNTIME_DIR

STATE = Path(os.environ.get("SHAPEFIRST_WORLD_TRAIN", RUNTIME_DIR / "world-train"))
DATA_SEED, DATA_N = 1, 60000
STEPS = {"clip": 1200, "vae": 2500, "classifier": 1000, "unet": 4000}


def _stages(args):
    import torch

    from . import stage_unet, stages
    from .dataset import build
    from .layout import Widths
    from .tokens import encode, token_ids

    torch.set_num_threads(args.threads)
    w = Widths()
    steps = {k: max(10, int(v * args.steps_scale)) for k, v in STEPS.items()}
    ds = build(STATE / "data", DATA_SEED, int(DATA_N * min(1.0, args.steps_scale * 4)))
    tokens = _tokens(ds, encode)
    only = set(args.only or [])

    def wanted(name):
        return not only or name in only

    clip = stages.train_clip(ds, STATE / "clip", w, token_ids(), tokens, steps["clip"]) if wanted("clip") else None
    if wanted("vae") and args.procs > 1 and not (STATE / "vae" / "done.json").exists():
        _spawn(args, "vae", steps["vae"])
    vae = stages.train_vae(ds, STATE / "vae", w, steps["vae"]) if wanted("vae") else None
    if wanted("classifier"):
        stages.train_classifier(ds, STATE / "classifier", steps["classifier"])
    if wanted("unet"):
        clip = clip or stages.train_clip(ds, STATE / "clip", w, token_ids(), tokens, steps["clip"])
        vae = vae or stages.train_vae(ds, STATE / "vae", w, steps["vae"])
        stage_unet.encode_all(ds, STATE / "encoded", clip.text, vae, tokens)
        if args.procs > 1 and not (STATE / "unet" / "done.json").exists():
            _spawn(args, "unet", steps["unet"])
        stage_unet.train_unet(stage_unet.Encoded(STATE / "encoded"), STATE / "unet", w, steps["unet"])


def _spawn(args, stage: str, steps: int) -> None:
    """Run ``stage`` data-parallel in ``args.procs`` processes (then it is done; the caller loads it)."""
    import torch.multiprocessing

    torch.multiprocessing.spawn(_worker, (args.procs, _free_port(), stage, steps, args.threads), nprocs=args.procs)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, stage: str, steps: int, threads: int) -> None:
    """One process of a data-parallel stage (torch.distributed over gloo, on this machine)."""
    import torch
    import torch.distributed

    from . import stage_unet, stages
    from .dataset import Dataset
    from .layout import Widths

    torch.set_num_threads(threads)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        if stage == "vae":
            stages.train_vae(Dataset(STATE / "data"), STATE / "vae", Widths(), steps, rank=rank, world=world)
        else:
            stage_unet.train_unet(stage_unet.Encoded(STATE / "encoded"), STATE / "unet", Widths(), steps, rank=rank,
                                  world=world)
    finally:
        torch.distributed.destroy_process_group()


def _tokens(ds, encode):
    """Token ids of every caption (cached next to the data: tokenizing 60000 captions takes a while)."""
    import numpy as np
    import torch

    path = STATE / "data" / "tokens.npy"
    if not path.exists():
        np.save(path, encode(ds.captions).numpy().astype(np.int32))
    return torch.from_numpy(np.load(path).astype(np.int64))


def status() -> dict:
    out = {}
    for name in ("clip", "vae", "classifier", "unet"):
        d = STATE / name
        if (d / "done.json").exists():
            out[name] = json.loads((d / "done.json").read_text())
        elif (d / "state.json").exists():
            out[name] = {"step": json.loads((d / "state.json").read_text())["step"], "of": STEPS[name]}
        else:
            out[name] = "not started"
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--export", action="store_true", help="write the shipped parameter files from finished stages")
    p.add_argument("--status", action="store_true", help="print what is done and exit")
    p.add_argument("--only", nargs="*", choices=["clip", "vae", "classifier", "unet"], help="train only these stages")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: on a busy 2-core machine two threads run several times slower)")
    p.add_argument("--procs", type=int, default=2,
                   help="processes of the data-parallel UNet stage (default 2, one per core; resume with the same)")
    p.add_argument("--steps-scale", type=float, default=1.0, help="multiply every stage's steps (trial runs)")
    args = p.parse_args(argv)
    from ..boot import importable

    importable()  # the tokenizer files are ComfyUI's
    if args.status:
        print(json.dumps(status(), indent=1))
        return 0
    if args.export:
        from .export import export

        export(STATE)
        return 0
    t0 = time.time()
    _stages(args)
    print(f"[world] all stages done in {(time.time() - t0) / 60:.1f} min this session", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
