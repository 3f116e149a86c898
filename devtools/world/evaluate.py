"""The world's own metrics, from the shipped parameters: the attribute classifier and Toy-CLIP
(text-image and image-image cosine similarity, like the paper's Text- and Image-CLIPScore)."""

from __future__ import annotations

import functools

import torch

from .assemble import info, load_params
from .classifier import Classifier, predict
from .compact_text import ToyCLIP
from .layout import Widths


def _tensors(part: str, prefix: str = "", folder=None) -> dict:
    return {k[len(prefix):]: torch.from_numpy(v).float() for k, v in load_params(part, folder).items()
            if k.startswith(prefix)}


@functools.lru_cache(maxsize=1)
def classifier() -> Classifier:
    model = Classifier()
    model.load_state_dict(_tensors("classifier"))
    return model.eval()


@functools.lru_cache(maxsize=2)
def toy_clip(folder=None) -> ToyCLIP:
    """Toy-CLIP (text and image towers) from the shipped parameters or another parameter ``folder``."""
    meta = info(folder)
    model = ToyCLIP(Widths.from_json(meta["widths"]), meta["token_ids"])
    text = _tensors("text", folder=folder)
    model.text_projection.weight.data.copy_(text.pop("text_projection.weight"))
    model.text.load_state_dict(text)
    model.image.load_state_dict(_tensors("toyclip", "image.", folder))
    model.logit_scale.data.fill_(float(load_params("toyclip", folder)["logit_scale"]))
    return model.eval()


def as_nchw(images: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE (B, H, W, 3) in [0, 1] -> (B, 3, 64, 64) (resized when another size)."""
    x = images.float().movedim(-1, 1)
    if x.shape[-2:] != (64, 64):
        x = torch.nn.functional.interpolate(x, size=(64, 64), mode="area")
    return x


@torch.no_grad()
def attributes(images: torch.Tensor) -> dict[str, list[str]]:
    """Classifier predictions {shape, colour, size, position: [names]} for ComfyUI IMAGEs."""
    return predict(classifier(), as_nchw(images))


@torch.no_grad()
def text_score(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """Toy-CLIPScore (text): cosine similarity of each image with its prompt, (B,)."""
    from .tokens import encode

    m = toy_clip()
    return (m.image_features(as_nchw(images)) * m.text_features(encode(prompts))).sum(-1)


@torch.no_grad()
def image_score(images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Toy-CLIPScore (image): cosine similarity of each image with its reference image, (B,)."""
    m = toy_clip()
    return (m.image_features(as_nchw(images)) * m.image_features(as_nchw(references))).sum(-1)
