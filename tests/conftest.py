"""Shared fixtures. Tier 1 (pure math) needs nothing; tiers 2 and 3 boot a real ComfyUI.

The ComfyUI is the runtime of devtools/runtime.py: the default 0.3.75 one, $COMFYUI_PATH, or the
one built for the ComfyUI source in $SHAPEFIRST_COMFYUI_SRC (``bash scripts/test.sh --comfyui-src DIR``).
Test checkpoints are seeded random-weight models of the real SD architectures, built once per
ComfyUI host and cached in that host's models folder (.runtime/models/comfyui-<version>/checkpoints;
$SHAPEFIRST_MODELS_DIR replaces .runtime/models).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# One torch thread in every test process and in the servers and scripts they start (set before anything
# imports torch): the tiny test models' operations are too small to share out, and a waiting OpenMP
# thread spins. Measured on the 2-core machine under load: one test took 141 s of CPU time with two
# threads and 27-31 s with one. Set OMP_NUM_THREADS yourself to choose otherwise.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# The one place the tests make the repository importable (`devtools`, `shapefirst`). Appended,
# never prepended: ComfyUI's own top-level `nodes` module must win over this repository's `nodes/`.
REPO = str(Path(__file__).resolve().parent.parent)
if REPO not in sys.path:
    sys.path.append(REPO)

from devtools import paths  # noqa: E402

# fixtures of the tiny model families (SD3, Wan, ...): tests/families_fixtures.py; the guidance events sent
# to the browser: tests/guidance_events.py
pytest_plugins = ["families_fixtures", "guidance_events"]


@pytest.fixture(scope="session")
def runtime_paths() -> dict:
    """The runtime's folders: comfyui, python, pack (this repository as ComfyUI sees it), models."""
    from devtools import boot

    rt = boot.runtime()
    return {"comfyui": rt.comfyui, "python": rt.python, "pack": rt.pack, "models": rt.models}


@pytest.fixture(scope="session")
def checkpoints_dir(runtime_paths) -> Path:
    d = Path(runtime_paths["models"]) / "checkpoints"
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="session")
def comfy(runtime_paths, checkpoints_dir, tmp_path_factory):
    """A real ComfyUI, booted in this process, with the pack loaded through ComfyUI's loader."""
    from devtools import boot
    from devtools.harness import ComfyHarness

    boot.quiet_logs()
    return ComfyHarness(tmp_path_factory.mktemp("comfy"), checkpoints_dir).boot()


def _ensure(kind: str, checkpoints_dir: Path) -> str:
    from devtools import checkpoints

    return checkpoints.ensure_checkpoint(kind, checkpoints_dir).name


@pytest.fixture(scope="session")
def sd15_ckpt(comfy, checkpoints_dir) -> str:
    """File name (for CheckpointLoaderSimple) of the tiny random-weight SD1.5 checkpoint."""
    return _ensure("sd15", checkpoints_dir)


@pytest.fixture
def output_dir(request) -> Path:
    """A per-test folder for artefacts a person may want to look at (screenshots, charts)."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in request.node.name)[:120]
    d = paths.TEST_OUTPUT / safe
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="session")
def sd2x_ckpt(comfy, checkpoints_dir) -> str:
    """File name of the tiny random-weight SD2.x checkpoint (OpenCLIP-H text encoder, pads with 0)."""
    return _ensure("sd2x", checkpoints_dir)


@pytest.fixture(scope="session")
def sdxl_ckpt(comfy, checkpoints_dir) -> str:
    """File name of the tiny random-weight SDXL checkpoint (clip_l + clip_g; 1.9 GB, built once)."""
    return _ensure("sdxl", checkpoints_dir)


@pytest.fixture(scope="session")
def sd15_controlnet(comfy, runtime_paths) -> str:
    """File name (for ControlNetLoader) of a random-weight ControlNet matching the tiny SD1.5 UNet."""
    from devtools import checkpoints
    import folder_paths

    d = Path(runtime_paths["models"]) / "controlnet"
    name = checkpoints.ensure_controlnet("sd15", d).name
    folder_paths.add_model_folder_path("controlnet", str(d), is_default=True)
    return name
