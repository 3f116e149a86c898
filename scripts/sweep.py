#!/usr/bin/env python3
"""Table 2 for your own model: sweep truncated-guidance windows over a prompt set on ComfyUI servers.

    python3 scripts/sweep.py --prompts prompts.txt --checkpoint /path/to/v1-5-pruned-emaonly.safetensors \\
        --windows a=20% a=40% a=60% --start-servers 2

--help (and any argument error) answers at once, before anything is built; then the sweep runs
inside the runtime of devtools/runtime.py (built on first use). The command line is in
devtools/sweep_cli.py, the work in devtools/sweep.py.
"""

import sys

import _bootstrap  # noqa: F401

from devtools.sweep_cli import parse_args

if __name__ == "__main__":
    parse_args(sys.argv[1:])  # standard library only: no runtime, no torch
    from devtools.entry import in_runtime

    in_runtime(__file__)
    from devtools.sweep_cli import main

    sys.exit(main())
