"""Assemble the shipped compact parameters into ComfyUI SD1.5 files, deterministically.

    python -m devtools.world.assemble MODELS_DIR     # build (or check) every world file there

Files, under a ComfyUI models folder:

* ``checkpoints/shapefirst-world-v1.safetensors``: the single-file SD1.5 checkpoint
  (CheckpointLoaderSimple);
* ``diffusion_models/...-unet-...``, ``text_encoders/...-clip-l-...``, ``vae/...-vae-...``: the same
  model for UNETLoader, CLIPLoader (type stable_diffusion) and VAELoader.

Each full tensor is zeros with the compact tensor written into its active indices
(``devtools.world.layout``); the UNet's inactive attention heads get copies of the active heads'
query and key weights (their value weights stay zero), so their attention maps equal the active
heads' and an average over heads (what the pack's attention capture reports) is the active
heads' average. Files are written byte-deterministically (``stfile``), checked against the
sha256 recorded in ``params/world.json`` and renamed into place atomically. numpy only: no
ComfyUI import is needed to build them.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from . import stfile
from .layout import (UNET_HEAD_DIM, Widths, text_active, text_layer_trained, unet_active, unet_layer_trained,
                     vae_active, vae_block_trained)

PARAMS = Path(__file__).resolve().parent / "params"
REBUILD = "python -m devtools.world.assemble {models}"
PREFIXES = {"unet": "model.diffusion_model.", "text": "cond_stage_model.transformer.", "vae": "first_stage_model."}
FILES = {  # kind -> (models subfolder, file name pattern)
    "checkpoint": ("checkpoints", "shapefirst-world-v{v}.safetensors"),
    "unet": ("diffusion_models", "shapefirst-world-unet-v{v}.safetensors"),
    "clip": ("text_encoders", "shapefirst-world-clip-l-v{v}.safetensors"),
    "vae": ("vae", "shapefirst-world-vae-v{v}.safetensors"),
}
_VERIFIED: dict = {}


class WorldFileError(RuntimeError):
    """A world file (shipped parameters or an assembled model file) is missing, corrupt or unknown."""


def info(folder=None) -> dict:
    """The recorded metadata (``world.json``) of the shipped parameters, or of another ``folder``."""
    path = Path(folder or PARAMS) / "world.json"
    if not path.exists():
        raise WorldFileError(f"{path} is missing: the world's parameters are not in this checkout "
                             "(restore devtools/world/params/ with git checkout)")
    return json.loads(path.read_text())


def file_name(kind: str) -> str:
    return FILES[kind][1].format(v=info()["version"])


def load_params(part: str, folder=None) -> dict[str, np.ndarray]:
    """The compact tensors of ``part`` (unet, text, vae, toyclip, classifier), hash-checked; from the
    shipped parameters, or from another ``folder`` with its own world.json."""
    path = Path(folder or PARAMS) / f"{part}.safetensors"
    want = info(folder)["params"].get(part)
    if not path.exists() or want is None:
        raise WorldFileError(f"{path} is missing (restore devtools/world/params/ with git checkout)")
    got = stfile.sha256(path)
    if got != want:
        raise WorldFileError(f"{path} is corrupt: sha256 {got[:12]}... is not the recorded {want[:12]}... "
                             "(restore it with `git checkout devtools/world/params`; a git-lfs pointer or a "
                             "truncated copy gives this too)")
    return stfile.read(path)[0]


def _embed(compact: np.ndarray, shape: list[int], index) -> np.ndarray:
    full = np.zeros(shape, dtype=compact.dtype)
    if any(len(ix) != n for ix, n in zip(index, compact.shape)) or len(index) != compact.ndim:
        raise ValueError(f"compact shape {compact.shape} does not fit index sizes {[len(i) for i in index]}")
    full[np.ix_(*index)] = compact
    return full


def _copy_heads(full: np.ndarray, w: Widths) -> None:
    active = w.unet // UNET_HEAD_DIM
    for j in range(active, full.shape[0] // UNET_HEAD_DIM):
        src = (j % active) * UNET_HEAD_DIM
        full[j * UNET_HEAD_DIM:(j + 1) * UNET_HEAD_DIM] = full[src:src + UNET_HEAD_DIM]


def full_part(part: str, compact: dict, shapes: dict, w: Widths, token_ids: list[int]) -> dict[str, np.ndarray]:
    """The full tensors of ``part`` (unet, text, vae) in ComfyUI's layout, from its compact tensors."""
    unknown = set(compact) - set(shapes)
    if unknown:
        raise WorldFileError(f"{part} parameters carry keys the SD1.5 layout lacks: {sorted(unknown)[:5]}")
    out = {}
    for key, shape in shapes.items():
        c = compact.get(key)
        trained = {"unet": unet_layer_trained, "text": text_layer_trained, "vae": vae_block_trained}[part](key, w)
        if c is None:
            if trained:
                raise WorldFileError(f"{part} parameters lack {key}")
            out[key] = np.zeros(shape, dtype=np.float16)
            continue
        if not shape:  # vae_scale / vae_shift
            out[key] = c.reshape(())
            continue
        if part == "unet":
            index = [unet_active(key, d, n, w) for d, n in enumerate(shape)]
        elif part == "text":
            index = [text_active(key, d, n, w, token_ids, c.shape[d]) for d, n in enumerate(shape)]
        else:
            index = [vae_active(key, d, n, w) for d, n in enumerate(shape)]
        full = _embed(c, shape, index)
        if part == "unet" and key.split(".")[-2] in ("to_q", "to_k"):
            _copy_heads(full, w)
        out[key] = full
    return out


def _tensors(kind: str) -> dict[str, np.ndarray]:
    meta = info()
    w = Widths.from_json(meta["widths"])
    shapes = json.loads((PARAMS / "shapes.json").read_text())
    parts = {"checkpoint": ("unet", "text", "vae"), "unet": ("unet",), "clip": ("text",), "vae": ("vae",)}[kind]
    out = {}
    for part in parts:
        full = full_part(part, load_params(part), shapes[part], w, meta["token_ids"])
        prefix = PREFIXES[part] if kind == "checkpoint" else ""
        out.update({prefix + k: v for k, v in full.items()})
    return out


def build(kind: str, path: Path) -> str:
    """Write the world's ``kind`` file to ``path``; returns its sha256."""
    meta = {"shapefirst": json.dumps({"world": info()["version"], "kind": kind}, sort_keys=True)}
    return stfile.write(Path(path), _tensors(kind), meta)


def _check(path: Path, kind: str, models: Path) -> None:
    want = info()["files"][kind]
    stat = path.stat()
    memo = (str(path), stat.st_size, stat.st_mtime_ns)
    if _VERIFIED.get(memo) == want:
        return
    got = stfile.sha256(path)
    if got != want:
        raise WorldFileError(
            f"{path} is not the world's {kind} file (sha256 {got[:12]}..., recorded {want[:12]}...): it is corrupt "
            f"or from another version. Delete it and run `{REBUILD.format(models=models)}` (or any command that "
            "uses the world) to rebuild it from devtools/world/params/.")
    _VERIFIED[memo] = want


def ensure(models_dir, kinds=("checkpoint", "unet", "clip", "vae")) -> dict[str, Path]:
    """{kind: path} of the world's files under ``models_dir`` (a ComfyUI models folder), each
    assembled first if missing and checked against its recorded sha256."""
    models = Path(models_dir)
    out = {}
    for kind in kinds:
        sub, _ = FILES[kind]
        path = models / sub / file_name(kind)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            try:
                got = build(kind, Path(tmp))
                want = info()["files"][kind]
                if got != want:
                    raise WorldFileError(f"assembling {path.name} gave sha256 {got[:12]}..., not the recorded "
                                         f"{want[:12]}...: devtools/world/params/ and world.json disagree "
                                         "(restore them with `git checkout devtools/world/params`)")
                os.chmod(tmp, 0o644)
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        _check(path, kind, models)
        out[kind] = path
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__)
        return 2
    for kind, path in ensure(argv[0]).items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
