"""What the ComfyUI hosts' model classes require beyond ComfyUI 0.3.75's, in one place.

The seeded model builders (devtools/families.py) and the tests that build models by hand give a
config the way 0.3.75's detection reports it; a newer host may require more keys. Each model is
still built under every host (paths.host_models), so a missing key here fails that host's build.
"""

from __future__ import annotations


def host_unet(unet: dict) -> dict:
    """A copy of a diffusion-model config with the keys the running host also requires: Flux's
    ``txt_ids_dims`` (ComfyUI 0.33: the text-id axes that carry positions; none for Flux.1, as
    0.33's detection reports)."""
    import dataclasses

    import comfy.ldm.flux.model as flux_model

    unet = dict(unet)
    flux_fields = {f.name for f in dataclasses.fields(flux_model.FluxParams)}
    if unet.get("image_model") == "flux" and "txt_ids_dims" in flux_fields:
        unet.setdefault("txt_ids_dims", [])
    return unet
