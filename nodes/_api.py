"""The one place ShapeFirst imports ComfyUI's node API: a new API version is a one-line change."""

from comfy_api.latest import ComfyExtension, io, ui  # noqa: F401

__all__ = ["ComfyExtension", "io", "ui"]
