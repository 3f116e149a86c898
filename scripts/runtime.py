#!/usr/bin/env python3
"""Build (or find) the ComfyUI runtime ShapeFirst develops against; see devtools/runtime.py.

    python3 scripts/runtime.py [--print-python] [--comfyui-src DIR]
"""

import sys

import _bootstrap  # noqa: F401

from devtools.runtime import main

if __name__ == "__main__":
    sys.exit(main())
