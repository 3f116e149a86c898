"""The one in-process ComfyUI boot used by the harness, the benchmarks, the tests and the tools.

Must run under the runtime's python (devtools/runtime.py). Boot once per process: ComfyUI keeps
its node registry and model cache in module globals.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

from .runtime import Runtime, ensure_runtime

_BOOTED: dict = {}


class BootError(RuntimeError):
    """ComfyUI or the pack could not be started in this process."""


def runtime() -> Runtime:
    """The runtime this process uses (built on first use); see devtools/runtime.py."""
    if "runtime" not in _BOOTED:
        _BOOTED["runtime"] = ensure_runtime()
    return _BOOTED["runtime"]


def quiet_logs() -> None:
    logging.basicConfig(level=os.environ.get("SHAPEFIRST_LOG", "WARNING"))


def importable(rt: Runtime | None = None, cpu: bool = True) -> None:
    """Make ComfyUI's packages (``comfy``, ``folder_paths``...) importable in this process without
    booting it: what the model builders need before any graph runs (a fresh clone builds its demo
    checkpoint before, or without, the harness). ``cpu`` is the device choice ``boot`` would make;
    it is read once, when ``comfy.model_management`` is first imported."""
    rt = rt or runtime()
    comfyui = str(Path(rt.comfyui))
    if comfyui not in sys.path:
        sys.path.insert(0, comfyui)
    import comfy.cli_args

    if "comfy.model_management" not in sys.modules:
        comfy.cli_args.args.cpu = cpu


def boot(work_dir: Path, output_dir: Path | None = None, checkpoints_dir: Path | None = None,
         cpu: bool = True, pack: bool = True, rt: Runtime | None = None):
    """Import ComfyUI from the runtime, point its folders at ``work_dir``, load its extra nodes
    and (``pack``) this pack through ComfyUI's own loader. Returns ComfyUI's ``nodes`` module."""
    rt = rt or runtime()
    comfyui = Path(rt.comfyui)
    importable(rt, cpu)
    import utils.extra_config  # noqa: F401  (before `nodes`, or `utils` resolves to comfy/utils.py)
    import folder_paths

    work_dir = Path(work_dir)
    output_dir = Path(output_dir) if output_dir else work_dir / "output"
    for d in (output_dir, work_dir / "temp", work_dir / "input"):
        d.mkdir(parents=True, exist_ok=True)
    folder_paths.set_output_directory(str(output_dir.resolve()))
    folder_paths.set_temp_directory(str(work_dir / "temp"))
    folder_paths.set_input_directory(str(work_dir / "input"))
    if checkpoints_dir:
        folder_paths.add_model_folder_path("checkpoints", str(checkpoints_dir), is_default=True)
    import nodes

    if Path(nodes.__file__).resolve().parent != comfyui.resolve():
        raise BootError(f"`nodes` resolved to {nodes.__file__}, not ComfyUI's nodes.py: put ComfyUI first on "
                        "sys.path (the pack's own nodes/ package must only be imported as part of the pack)")
    if not _BOOTED.get("extra_nodes"):
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
        _BOOTED["extra_nodes"] = True
    if pack:
        load_pack(rt)
    return nodes


def load_pack(rt: Runtime | None = None) -> None:
    """Load this pack (as ComfyUI's custom_nodes/comfyui-shapefirst) with ComfyUI's own loader."""
    if _BOOTED.get("pack"):
        return
    import nodes

    rt = rt or runtime()
    if not asyncio.run(nodes.load_custom_node(str(rt.pack), module_parent="custom_nodes")):
        raise BootError(f"ComfyUI could not load the pack at {rt.pack}")
    _BOOTED["pack"] = True
