#!/usr/bin/env python3
"""Table 2 for your own model: sweep truncated-guidance windows over a prompt set on ComfyUI servers.

    python3 scripts/sweep.py --prompts prompts.txt --checkpoint v1-5-pruned-emaonly.safetensors \\
        --windows a=5 a=10 a=15 a=20 --server http://127.0.0.1:8188 --server http://127.0.0.1:8189

Without --server it starts one ComfyUI here (the runtime of devtools/runtime.py, built on first
use). The work is in devtools/sweep.py; run with --help for every option.
"""

import sys

import _bootstrap  # noqa: F401

from devtools.entry import in_runtime

if __name__ == "__main__":
    in_runtime(__file__)
    from devtools.sweep import main

    sys.exit(main())
