"""Start an entry script inside the ComfyUI runtime (standard library only).

Entry scripts parse their arguments before :func:`in_runtime`, so ``--help`` answers at once on a
fresh clone: nothing is built and nothing heavier than the standard library is imported.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .runtime import Runtime, RuntimeError_, ensure_runtime

INNER = "SHAPEFIRST_IN_RUNTIME"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The entry scripts' help: the description as written, and every option's default after its help
    (unless the help already says it, or the default is none or off)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.option_strings and action.default not in (None, False, argparse.SUPPRESS)
                and "default" not in text):
            text += " (default: %(default)s)"
        return text


def in_runtime(script: str, argv: list[str] | None = None) -> Runtime:
    """The runtime (built on first use); re-executes ``script`` with the runtime's python if this
    process runs another interpreter. Exits with the runtime's message when it cannot be built."""
    try:
        rt = ensure_runtime()
    except RuntimeError_ as exc:
        sys.exit(f"{Path(script).name}: {exc}")
    # Compared unresolved: a virtual environment's python may be a link to the system's.
    if Path(sys.executable).absolute() != Path(rt.python).absolute() and not os.environ.get(INNER):
        argv = sys.argv[1:] if argv is None else argv
        env = dict(os.environ, **{INNER: "1"})
        os.execve(str(rt.python), [str(rt.python), str(Path(script).resolve()), *argv], env)
    return rt
