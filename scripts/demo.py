#!/usr/bin/env python3
"""ShapeFirst's main job: run every shipped workflow headlessly inside a real ComfyUI.

    python3 scripts/demo.py                 # quick: every workflow at reduced size and steps
    python3 scripts/demo.py --full          # the paper's step counts
    python3 scripts/demo.py --only NAME     # one workflow
    python3 scripts/demo.py --ckpt PATH     # your own SD1.5 checkpoint
    python3 scripts/demo.py --ui            # ComfyUI at http://127.0.0.1:8188 with the pack

Builds the ComfyUI runtime on first use. Without --ckpt the SD1.5 workflows run on ShapeFirst World,
a small model trained on shapes that ships with the pack (docs/world.md), with their prompts in its
words; the other families' workflows on tiny random-weight models (their pictures are noise).
Details: devtools/demo.py.
"""

import sys

import _bootstrap  # noqa: F401

from devtools.entry import in_runtime

if __name__ == "__main__":
    from devtools.demo import main, parse_args

    parse_args(sys.argv[1:])  # before the runtime: --help and wrong arguments answer at once
    sys.exit(main(in_runtime(__file__)))
