"""FrequencySplitPreview: split an IMAGE or LATENT into its low and high frequency parts."""

from __future__ import annotations

import torch

from ..shapefirst import frequency, imaging
from ._api import io, ui
from ._common import CATEGORY, ShapeFirstInputError, as_validation, check_fraction_open

NODE = "FrequencySplitPreview"
PREVIEW_LATENT = "latent channels"
PREVIEW_DECODE = "vae decode"

# Output type: the parts have the input's type (IMAGE in, IMAGE out; LATENT in, LATENT out).
ImageOrLatent = io.Custom("IMAGE,LATENT")


def _image_to_bchw(image: torch.Tensor) -> torch.Tensor:
    return image.movedim(-1, 1)


def _bchw_to_image(x: torch.Tensor) -> torch.Tensor:
    return x.movedim(1, -1)


def _first_frames(z: torch.Tensor) -> torch.Tensor:
    """A 4-D view for previews: the first frame of a 5-D video latent (B, C, T, H, W)."""
    return z[:, :, 0] if z.ndim == 5 else z


def _decoded_first_frames(vae, z: torch.Tensor) -> torch.Tensor:
    images = vae.decode(z)
    if images.ndim == 5:  # video VAEs decode to (B, T, H, W, C)
        images = images[:, 0]
    return images[..., :3].to(torch.float32).cpu()


def split_image(image: torch.Tensor, low_fraction: float):
    if image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        raise ShapeFirstInputError(
            NODE, f"an IMAGE must have shape (batch, height, width, channels), got {tuple(image.shape)}; "
                  "connect a Load Image / VAE Decode output, or a LATENT instead.")
    low, high = frequency.split(_image_to_bchw(image), low_fraction)
    return _bchw_to_image(low), _bchw_to_image(high)


def split_latent(latent: dict, low_fraction: float):
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if not isinstance(samples, torch.Tensor) or samples.ndim not in (4, 5) or getattr(samples, "is_nested", False):
        shape = tuple(samples.shape) if isinstance(samples, torch.Tensor) and not samples.is_nested else None
        raise ShapeFirstInputError(
            NODE, f"a LATENT must hold samples of shape (B, C, H, W) or (B, C, T, H, W), got {shape}; "
                  "connect an Empty Latent Image, VAE Encode or sampler output.")
    low_s, high_s = frequency.split(samples, low_fraction)
    low, high = dict(latent), dict(latent)  # shallow copies: the user's dict is never modified
    low["samples"], high["samples"] = low_s, high_s
    return low, high


class FrequencySplitPreview(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=NODE,
            display_name="Frequency Split Preview",
            category=f"{CATEGORY}/frequency",
            description=(
                "Splits an image or latent into its low-frequency part (the overall shape) and its "
                "high-frequency part (the details), per channel over the centred 2-D spectrum, as in "
                "Yi et al. (NeurIPS 2024) Section 4.2. low + high reproduces the input exactly. "
                "The preview shows input / low / high side by side."
            ),
            inputs=[
                io.MultiType.Input(
                    "samples", types=[io.Image, io.Latent],
                    tooltip="IMAGE or LATENT to split. The low and high outputs have the same type, so they "
                            "can be decoded, saved, or fed back into sampling."),
                io.Float.Input(
                    "low_fraction", default=0.2, min=0.0, max=1.0, step=0.01,
                    tooltip="Share of the spectrum's bins, nearest its centre, counted as low frequency; "
                            "strictly between 0 and 1. 0.2 = the paper's lowest 20%."),
                io.Combo.Input(
                    "preview", options=[PREVIEW_LATENT, PREVIEW_DECODE], default=PREVIEW_LATENT,
                    tooltip="For a LATENT: 'latent channels' shows its first three channels on one shared scale "
                            "(grey = 0); 'vae decode' decodes input, low and high with the VAE (connect one). "
                            "Ignored for an IMAGE."),
                io.Vae.Input(
                    "vae", optional=True,
                    tooltip="Only needed for preview = 'vae decode' with a LATENT input."),
            ],
            outputs=[
                ImageOrLatent.Output("low", display_name="low",
                                     tooltip="Low-frequency part, same type as the input."),
                ImageOrLatent.Output("high", display_name="high",
                                     tooltip="High-frequency part (input - low), same type as the input. "
                                             "Image values are centred on 0."),
                io.Image.Output("preview_image", display_name="preview",
                                tooltip="Input, low and high side by side (high shown as 0.5 + high)."),
            ],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, low_fraction=None):
        if low_fraction is None:  # linked from another node: checked when it runs
            return True
        return as_validation(check_fraction_open, NODE, "low_fraction", low_fraction)

    @classmethod
    def execute(cls, samples, low_fraction=0.2, preview=PREVIEW_LATENT, vae=None) -> io.NodeOutput:
        check_fraction_open(NODE, "low_fraction", low_fraction)
        pct_low = f"{low_fraction:.0%}"
        pct_high = f"{1 - low_fraction:.0%}"
        if isinstance(samples, dict):
            low, high = split_latent(samples, low_fraction)
            if preview == PREVIEW_DECODE:
                if vae is None:
                    raise ShapeFirstInputError(
                        NODE, "preview = 'vae decode' needs a VAE; connect the checkpoint's VAE to the 'vae' "
                              "input, or set preview to 'latent channels'.")
                panels = [_decoded_first_frames(vae, t["samples"]) for t in (samples, low, high)]
            elif preview == PREVIEW_LATENT:
                views = [_first_frames(t["samples"]).cpu() for t in (samples, low, high)]
                scale = float(views[0][:, :3].abs().amax()) or 1.0
                panels = [imaging.latent_to_rgb(v, scale=scale) for v in views]
            else:
                raise ShapeFirstInputError(NODE, f"unknown preview mode {preview!r}; choose "
                                                 f"'{PREVIEW_LATENT}' or '{PREVIEW_DECODE}'.")
        elif isinstance(samples, torch.Tensor):
            low, high = split_image(samples, low_fraction)
            rgb = [t[..., :3].to(torch.float32).cpu() for t in (samples, low, high)]
            if rgb[0].shape[-1] == 1:
                rgb = [t.expand(*t.shape[:-1], 3) for t in rgb]
            panels = [rgb[0], rgb[1], rgb[2] + 0.5]
        else:
            raise ShapeFirstInputError(
                NODE, f"'samples' must be an IMAGE or a LATENT, got {type(samples).__name__}.")
        strip = imaging.side_by_side(panels, ["input", f"low {pct_low}", f"high {pct_high}"])
        return io.NodeOutput(low, high, strip, ui=ui.PreviewImage(strip, cls=cls))
