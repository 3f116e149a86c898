"""Write the shipped parameters (``devtools/world/params/``) from finished training stages.

``params/shapes.json`` is the SD1.5 layout (key -> shape of every full tensor) as ComfyUI's own
classes build it; ``params/world.json`` records the widths, the trained token ids, and the
sha256 of every parameter file and of every assembled file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import stfile
from .assemble import FILES, PARAMS
from .layout import Widths

VERSION = 1


def sd15_shapes() -> dict:
    """{part: {key: shape}} of ComfyUI's SD1.5 UNet (the reduced ``sd15`` spec), CLIP-L and TAESD."""
    import torch

    from ..boot import importable

    importable()
    import comfy.clip_model
    import comfy.ops
    import comfy.taesd.taesd

    from ..checkpoints import UNET_PREFIX, unet_shapes

    out = {"unet": {k[len(UNET_PREFIX):]: list(v.shape) for k, v in unet_shapes("sd15").items()}}
    config = json.loads((Path(comfy.clip_model.__file__).parent / "sd1_clip_config.json").read_text())
    clip = comfy.clip_model.CLIPTextModel(config, None, "meta", comfy.ops.disable_weight_init)
    out["text"] = {k: list(v.shape) for k, v in clip.state_dict().items()}
    with torch.device("meta"):
        taesd = comfy.taesd.taesd.TAESD(latent_channels=4)
    out["vae"] = {k: list(v.shape) for k, v in taesd.state_dict().items()}
    return out


def arrays(state: dict, dtype=np.float16) -> dict[str, np.ndarray]:
    """torch state dict -> numpy arrays in ``dtype`` (fp16 by default)."""
    return {k: v.detach().float().numpy().astype(dtype) for k, v in state.items()}


def vae_scalars(raw_mean: float, raw_std: float) -> dict[str, np.ndarray]:
    """TAESD's ``vae_scale``/``vae_shift`` that make ComfyUI hand the SD1.5 UNet (which sees
    0.18215 x the VAE's latent) the encoder output normalised: (enc - raw_mean) / raw_std; the
    decoder then receives enc again."""
    from .compact_vae import SD15_SCALE

    scale = SD15_SCALE * raw_std
    return {"vae_scale": np.asarray(scale, dtype=np.float32),
            "vae_shift": np.asarray(-raw_mean / scale, dtype=np.float32)}


def compact_params(unet, clip, vae, classifier, raw_mean: float = 0.0, raw_std: float = 1.0):
    """The shipped parameter files' tensors, from trained modules."""
    text = arrays(clip.text.state_dict())
    text["text_projection.weight"] = arrays({"w": clip.text_projection.weight})["w"]
    vae_p = arrays(vae.state_dict())
    vae_p.update(vae_scalars(raw_mean, raw_std))
    toy = {f"image.{k}": v for k, v in arrays(clip.image.state_dict()).items()}
    toy["logit_scale"] = np.asarray(clip.logit_scale.item(), dtype=np.float32)
    return {"unet": arrays(unet.state_dict()), "text": text, "vae": vae_p, "toyclip": toy,
            "classifier": arrays(classifier.state_dict())}


def write_params(params: dict, w: Widths, token_ids: list[int], out: Path = PARAMS, training: dict | None = None):
    """Write the parameter files, the layout and world.json (with the assembled files' hashes)."""
    from . import assemble

    out.mkdir(parents=True, exist_ok=True)
    (out / "shapes.json").write_text(json.dumps(sd15_shapes(), indent=0, sort_keys=True) + "\n")
    hashes = {}
    for part, tensors in params.items():
        hashes[part] = stfile.write(out / f"{part}.safetensors", tensors)
    meta = {"version": VERSION, "widths": w.to_json(), "token_ids": list(token_ids), "params": hashes,
            "files": {}, "training": training or {}}
    (out / "world.json").write_text(json.dumps(meta, indent=1) + "\n")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for kind in FILES:
            meta["files"][kind] = assemble.build(kind, Path(tmp) / f"{kind}.safetensors")
    (out / "world.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def export(state: Path) -> dict:
    """Load the finished stages under ``state`` and write the shipped parameters."""
    import torch

    from .classifier import Classifier
    from .compact_text import ToyCLIP
    from .compact_unet import CompactUNet
    from .compact_vae import CompactTAESD
    from .tokens import token_ids
    from .train import status
    from .trainer import load_module

    w = Widths()
    clip, vae, unet, cls = ToyCLIP(w, token_ids()), CompactTAESD(w), CompactUNet(w), Classifier()
    load_module(state / "clip" / "state.safetensors", clip)
    load_module(state / "vae" / "state.safetensors", vae)
    load_module(state / "classifier" / "state.safetensors", cls)
    load_module(state / "unet" / "state.safetensors", unet, prefix="ema.")
    encoded = json.loads((state / "encoded" / "meta.json").read_text())
    with torch.no_grad():
        params = compact_params(unet, clip, vae, cls, encoded["raw_mean"], encoded["raw_std"])
    meta = write_params(params, w, token_ids(), training=status())
    sizes = {p: (PARAMS / f"{p}.safetensors").stat().st_size for p in params}
    print(f"[export] wrote {PARAMS}: {sum(sizes.values()) / 1e6:.1f} MB ({sizes})", flush=True)
    return meta
