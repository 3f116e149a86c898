#!/usr/bin/env python3
"""Table 2 for your own model: sweep truncated-guidance windows over a prompt set on ComfyUI servers.

    python3 scripts/sweep.py --prompts prompts.txt --checkpoint v1-5-pruned-emaonly.safetensors \\
        --windows a=5 a=10 a=15 a=20 --server http://127.0.0.1:8188 --server http://127.0.0.1:8189

Without --server it starts one ComfyUI here (the runtime of scripts/runtime.py). The work is in
devtools/sweep.py; run with --help for every option. Re-runs itself under the runtime's python
when this interpreter lacks ComfyUI's requirements (aiohttp, numpy, pillow).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def _has_requirements() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("aiohttp", "numpy", "PIL"))


if __name__ == "__main__":
    if not _has_requirements() and not os.environ.get("SHAPEFIRST_SWEEP_REEXEC"):
        sys.path.insert(0, str(HERE))
        import runtime

        python = str(runtime.ensure_runtime().python)
        os.environ["SHAPEFIRST_SWEEP_REEXEC"] = "1"
        os.execv(python, [python, str(Path(__file__).resolve()), *sys.argv[1:]])
    for p in (REPO, HERE):  # appended: ComfyUI's own `nodes` must win over this repository's nodes/
        if str(p) not in sys.path:
            sys.path.append(str(p))
    from devtools.sweep import main

    sys.exit(main())
