#!/usr/bin/env python3
"""Regenerate workflows/ from devtools/workflows/specs/ (runs inside the ComfyUI runtime)."""

import sys

import _bootstrap  # noqa: F401

from devtools.entry import in_runtime

if __name__ == "__main__":
    in_runtime(__file__)
    from devtools.workflows.generate import main

    sys.exit(main())
