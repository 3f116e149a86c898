"""Where the world's compact networks sit inside ComfyUI's full SD1.5 tensors ("narrow inside wide").

The trained networks are narrower than the SD1.5 layout ComfyUI detects (UNet 320 channels,
CLIP-L 768 wide and 12 layers deep, TAESD 64 channels). Every compact tensor carries the name of
the full tensor it lives in; ``active(key, dim, size)`` says which indices of that full dimension
it fills. Every other entry of the full tensors is an exact zero, except the copied attention
heads (see ``devtools.world.assemble``), so ComfyUI's full-width network computes exactly what
the compact one computes:

* a zero channel stays zero through convolutions, linear layers, SiLU/GELU/ReLU and through
  GroupNorm when it fills whole groups with zero weight and bias;
* LayerNorm normalises over the full width: the compact LayerNorm counts the missing channels
  as zeros (``PaddedLayerNorm``);
* a residual block whose output layer is zero is the identity (UNet middle res blocks, CLIP
  layers past the trained ones); a TAESD Block whose last conv is zero is a ReLU.

Standard library only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

UNET_FULL, UNET_TIME_FULL, UNET_FF_FULL, UNET_HEAD_DIM = 320, 1280, 1280, 40
TEXT_FULL, TEXT_MLP_FULL, TEXT_HEAD_DIM, TEXT_LAYERS_FULL = 768, 3072, 64, 12
VAE_FULL = 64


@dataclass(frozen=True)
class Widths:
    unet: int = 160  # UNet channels (multiple of 40: whole GroupNorm groups and whole heads)
    unet_time: int = 320  # hidden width of the time embedding MLP (of 1280)
    unet_ff: int = 640  # GEGLU inner width (of 1280)
    unet_middle_res: bool = False  # train the middle block's two res blocks (else exact identities)
    text: int = 256  # CLIP width (multiple of 64: whole heads)
    text_mlp: int = 1024  # CLIP MLP width (of 3072)
    text_layers: int = 2  # trained CLIP layers (the other layers are identities)
    vae: int = 32  # TAESD channels (of 64)
    vae_encoder_blocks: tuple[int, ...] = (7, 11, 12)  # indices in TAESD's Encoder of trained Blocks
    vae_decoder_blocks: tuple[int, ...] = (3, 4, 8)  # ... and in its Decoder

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "Widths":
        d = dict(d)
        for k in ("vae_encoder_blocks", "vae_decoder_blocks"):
            d[k] = tuple(d[k])
        return cls(**d)


def _first(n: int) -> list[int]:
    return list(range(n))


def _two(n: int, full_half: int) -> list[int]:
    """The first n indices of each half of a dimension made of two halves of ``full_half``."""
    return _first(n) + [full_half + i for i in range(n)]


def unet_active(key: str, dim: int, size: int, w: Widths) -> list[int]:
    """Active indices of dimension ``dim`` (full size ``size``) of UNet tensor ``key`` (no prefix)."""
    if key.startswith("time_embed.0.") and dim == 1:
        return _first(size)  # the sinusoidal input: all 320 features
    if key.startswith("time_embed.") or (".emb_layers." in key and dim == 1):
        return _first(w.unet_time)
    if ".ff.net.0.proj." in key and dim == 0:
        return _two(w.unet_ff, UNET_FF_FULL)
    if ".ff.net.2." in key and dim == 1:
        return _first(w.unet_ff)
    if ".attn2.to_k." in key or ".attn2.to_v." in key:
        return _first(w.text) if dim == 1 else _first(w.unet)
    if size == 2 * UNET_FULL:  # output blocks read cat([h, skip])
        return _two(w.unet, UNET_FULL)
    if size == UNET_FULL:
        return _first(w.unet)
    return _first(size)  # latent channels, kernel taps


def text_active(key: str, dim: int, size: int, w: Widths, token_ids: list[int], compact: int) -> list[int]:
    """Active indices of a CLIP-L tensor ``key`` (transformers layout, no prefix); ``compact`` is
    the compact tensor's size along ``dim``."""
    if key.endswith("token_embedding.weight") and dim == 0:
        return list(token_ids)
    if key == "text_projection.weight":  # the Toy-CLIP projection: its first rows
        return _first(w.text) if dim == 1 else _first(compact)
    if size == TEXT_MLP_FULL:
        return _first(w.text_mlp)
    if size == TEXT_FULL:
        return _first(w.text)
    return _first(size)  # positions


def vae_active(key: str, dim: int, size: int, w: Widths) -> list[int]:
    """Active indices of a TAESD tensor ``key`` (``taesd_encoder.*`` / ``taesd_decoder.*``)."""
    return _first(w.vae) if size == VAE_FULL else _first(size)


def unet_layer_trained(key: str, w: Widths) -> bool:
    """Whether a UNet tensor belongs to a trained layer (else the layer is an exact identity)."""
    return w.unet_middle_res or not (key.startswith("middle_block.0.") or key.startswith("middle_block.2."))


def text_layer_trained(key: str, w: Widths) -> bool:
    if ".encoder.layers." not in key:
        return True
    return int(key.split(".encoder.layers.")[1].split(".")[0]) < w.text_layers


def vae_block_trained(key: str, w: Widths) -> bool:
    """Whether a TAESD tensor is trained: its convolutions, and the Blocks the widths name."""
    parts = key.split(".")
    if len(parts) < 2 or not parts[1].isdigit() or ".conv." not in key:
        return True
    blocks = w.vae_encoder_blocks if parts[0] == "taesd_encoder" else w.vae_decoder_blocks
    return int(parts[1]) in blocks
