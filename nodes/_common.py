"""Helpers shared by ShapeFirst's nodes: error messages, safe output files, logging."""

from __future__ import annotations

import json
import logging
import os
import re

LOGGER = logging.getLogger("shapefirst")

CATEGORY = "ShapeFirst"
# Namespaced keys for wrappers and transformer_options entries.
KEY_PREFIX = "shapefirst."


class ShapeFirstInputError(ValueError):
    """A bad input, with a message that names the node and says how to fix it."""

    def __init__(self, node: str, message: str):
        super().__init__(f"{node}: {message}")
        self.node = node


def check_fraction_open(node: str, name: str, value: float) -> None:
    """Raise unless 0 < value < 1."""
    if value is None or not (0.0 < float(value) < 1.0):
        raise ShapeFirstInputError(node, f"{name} must be strictly between 0 and 1 (got {value}); "
                                         "use e.g. 0.2 for the lowest 20% of the spectrum, as in the paper.")


def as_validation(check, *args) -> bool | str:
    """Run a ``check`` that raises ShapeFirstInputError; return what validate_inputs must answer."""
    try:
        check(*args)
    except ShapeFirstInputError as exc:
        return str(exc)
    return True


_SAFE_PART = re.compile(r"[^A-Za-z0-9_.-]+")


def sanitize_prefix(prefix: str, default: str) -> str:
    """A relative 'folder/name' made of safe characters only; never absolute, never '..'."""
    parts = []
    for part in str(prefix or "").replace("\\", "/").split("/"):
        part = _SAFE_PART.sub("_", part).strip("._")
        if part:
            parts.append(part[:80])
    return "/".join(parts[-4:]) or default


def save_text_files(prefix: str, default_prefix: str, contents: dict[str, str | bytes]) -> list[dict]:
    """Write ``{extension: text or bytes}`` as ``<output>/<prefix>_NNNNN.<ext>``; returns their descriptors.

    Files land only under ComfyUI's output directory (folder_paths refuses anything that
    escapes it); names are sanitised and numbered so nothing is overwritten.
    """
    import folder_paths

    safe = sanitize_prefix(prefix, default_prefix)
    output_dir = folder_paths.get_output_directory()
    folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(safe, output_dir)
    # get_save_image_path counts "<name>_NNNNN_" files; pick a counter free for every extension
    while any(os.path.exists(os.path.join(folder, f"{name}_{counter:05}_.{ext}")) for ext in contents):
        counter += 1
    os.makedirs(folder, exist_ok=True)
    saved = []
    for ext, text in contents.items():
        filename = f"{name}_{counter:05}_.{ext}"
        path = os.path.join(folder, filename)
        if isinstance(text, bytes):  # binary files (e.g. safetensors) are written as they are
            with open(path, "xb") as fh:
                fh.write(text)
            saved.append({"filename": filename, "subfolder": subfolder, "type": "output"})
            continue
        with open(path, "x", encoding="utf-8") as fh:
            fh.write(text)
        saved.append({"filename": filename, "subfolder": subfolder, "type": "output"})
    return saved


def to_json(data) -> str:
    return json.dumps(data, indent=1, allow_nan=False)
