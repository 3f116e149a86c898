"""ShapeFirst: tools from Yi et al., "Towards Understanding the Working Mechanism of
Text-to-Image Diffusion Model" (NeurIPS 2024), as ComfyUI nodes."""

from .nodes import comfy_entrypoint

WEB_DIRECTORY = "./js"

__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
