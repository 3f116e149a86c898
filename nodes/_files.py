"""Every file ShapeFirst writes: numbered outputs under ComfyUI's output folder and preview
PNGs in its temp folder, always with sanitised names. What goes into the files (CSV, JSON,
safetensors bytes) is built in shapefirst.records."""

from __future__ import annotations

import os
import re
import secrets

_SAFE_PART = re.compile(r"[^A-Za-z0-9_.-]+")


def sanitize_prefix(prefix: str, default: str) -> str:
    """A relative 'folder/name' made of safe characters only; never absolute, never '..'."""
    parts = []
    for part in str(prefix or "").replace("\\", "/").split("/"):
        part = _SAFE_PART.sub("_", part).strip("._")
        if part:
            parts.append(part[:80])
    return "/".join(parts[-4:]) or default


def _inside(folder: str, root: str) -> bool:
    folder, root = os.path.realpath(folder), os.path.realpath(root)
    return os.path.commonpath([folder, root]) == root


def save_text_files(prefix: str, default_prefix: str, contents: dict[str, str | bytes]) -> list[dict]:
    """Write ``{extension: text or bytes}`` as ``<output>/<prefix>_NNNNN_.<ext>``; returns their descriptors.

    Files land only under ComfyUI's output directory (checked again after folder_paths resolves
    the path); names are sanitised and numbered so nothing is overwritten.
    """
    import folder_paths

    safe = sanitize_prefix(prefix, default_prefix)
    output_dir = folder_paths.get_output_directory()
    folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(safe, output_dir)
    if not _inside(folder, output_dir):
        raise ValueError(f"refusing to write outside the output folder: {safe!r}")
    # get_save_image_path counts "<name>_NNNNN_" files; pick a counter free for every extension
    while any(os.path.exists(os.path.join(folder, f"{name}_{counter:05}_.{ext}")) for ext in contents):
        counter += 1
    os.makedirs(folder, exist_ok=True)
    saved = []
    for ext, data in contents.items():
        filename = f"{name}_{counter:05}_.{_SAFE_PART.sub('_', ext)}"
        path = os.path.join(folder, filename)
        if isinstance(data, bytes):  # binary files (safetensors) are written as they are
            with open(path, "xb") as fh:
                fh.write(data)
        else:
            with open(path, "x", encoding="utf-8") as fh:
                fh.write(data)
        saved.append({"filename": filename, "subfolder": subfolder, "type": "output"})
    return saved


def save_temp_png(array, tag: str) -> dict:
    """Save a uint8 (H, W, 3) array as a PNG in ComfyUI's temp folder (what /view?type=temp serves)."""
    import folder_paths
    from PIL import Image

    folder = folder_paths.get_temp_directory()
    os.makedirs(folder, exist_ok=True)
    filename = f"shapefirst_attention_{secrets.token_hex(6)}_{_SAFE_PART.sub('_', str(tag))[:40]}.png"
    Image.fromarray(array).save(os.path.join(folder, filename), compress_level=1)
    return {"filename": filename, "subfolder": "", "type": "temp"}
