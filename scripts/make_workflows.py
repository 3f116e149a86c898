#!/usr/bin/env python3
"""Regenerate workflows/ from devtools/workflows/specs/ (runs inside the ComfyUI runtime, built on first use).

    python3 scripts/make_workflows.py [--out DIR]
"""

import argparse
import sys
from pathlib import Path

import _bootstrap  # noqa: F401

from devtools.entry import HelpFormatter, in_runtime
from devtools.paths import WORKFLOWS


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="make_workflows.py", description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--out", type=Path, default=WORKFLOWS, help="folder the workflow files are written to")
    return ap.parse_args(argv)


if __name__ == "__main__":
    args = parse_args(sys.argv[1:])  # before the runtime: --help answers at once
    in_runtime(__file__)
    from devtools.workflows.generate import main

    sys.exit(main(args.out))
