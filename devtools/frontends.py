#!/usr/bin/env python3
"""ComfyUI front ends for the browser tests, installed once into the git-ignored runtime folder.

The runtime's own front end is the one ComfyUI 0.3.75 pins (``comfyui-frontend-package``
1.32.9, installed with ComfyUI's requirements). Newer front ends are plain static files:
``pip install --target <runtime>/frontends/<version> --no-deps comfyui-frontend-package==<version>``,
served by the same server with ``--front-end-root <that folder>/comfyui_frontend_package/static``.

Standard library only. Usage::

    python3 -m devtools.frontends 1.58.1      # install if needed, print the static folder
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from .paths import RUNTIME_DIR
PINNED = "pinned"  # the front end ComfyUI's own requirements install
NEWEST = "1.58.1"
FRONTENDS = (PINNED, NEWEST)
PACKAGE = "comfyui-frontend-package"


def frontend_root(version: str, runtime_dir: Path | None = None, python: str | None = None) -> Path | None:
    """The static folder to pass as ``--front-end-root`` (None: the server's own front end).

    Installs ``comfyui-frontend-package==version`` under ``<runtime>/frontends/<version>`` the
    first time; later calls only check that its ``index.html`` is there.
    """
    if version == PINNED:
        return None
    target = Path(runtime_dir or RUNTIME_DIR) / "frontends" / version
    static = target / "comfyui_frontend_package" / "static"
    if (static / "index.html").is_file():
        return static
    target.mkdir(parents=True, exist_ok=True)
    cmd = [python or sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
           "--no-deps", "--target", str(target), f"{PACKAGE}=={version}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not (static / "index.html").is_file():
        raise RuntimeError(f"could not install {PACKAGE}=={version} into {target}: "
                           f"{(done.stderr or done.stdout).strip()[-2000:]}")
    return static


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("version", nargs="?", default=NEWEST, help=f"front-end version (default {NEWEST})")
    args = parser.parse_args(argv)
    root = frontend_root(args.version)
    print(root if root else "the server's own front end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
