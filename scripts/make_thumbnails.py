#!/usr/bin/env python3
"""Regenerate the thumbnails of the SD1.5 workflows (workflows/<name>.jpg, shown by ComfyUI's template
browser), each drawn by its workflow on ShapeFirst World (runs inside the ComfyUI runtime, built on
first use; about a minute or two on a CPU). Run it after the World's parameters or a workflow change.

    python3 scripts/make_thumbnails.py [--only NAME] [--check]
"""

import argparse
import sys

import _bootstrap  # noqa: F401

from devtools.entry import HelpFormatter, in_runtime


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="make_thumbnails.py", description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--only", metavar="NAME", action="append",
                    help="only this workflow (file name or stem); repeat for several (default: every SD1.5 workflow)")
    ap.add_argument("--check", action="store_true",
                    help="write nothing; exit 1 when a shipped thumbnail differs from a new render")
    return ap.parse_args(argv)


if __name__ == "__main__":
    args = parse_args(sys.argv[1:])  # before the runtime: --help answers at once
    in_runtime(__file__)
    from devtools.thumbnails import main

    sys.exit(main(args.only, args.check))
