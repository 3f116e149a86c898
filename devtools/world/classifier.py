"""The world's attribute classifier: shape, colour, size and position of a one-object image
(pure torch). Used to measure whether generated images show what the prompt asked for."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .dataset import ATTRIBUTES

HEADS = {name: len(values) for name, values in ATTRIBUTES.items()}


class Classifier(nn.Module):
    """images (B, 3, 64, 64) in [0, 1] -> {attribute: logits (B, classes)}."""

    def __init__(self, width: int = 32):
        super().__init__()
        c = width
        self.net = nn.Sequential(
            nn.Conv2d(3, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 32
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 16
            nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 8
            nn.Conv2d(2 * c, 4 * c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 4
            nn.Flatten(), nn.Linear(4 * c * 16, 256), nn.ReLU())
        self.heads = nn.ModuleDict({k: nn.Linear(256, n) for k, n in HEADS.items()})

    def forward(self, images):
        h = self.net(images * 2 - 1)
        return {k: head(h) for k, head in self.heads.items()}


def classifier_loss(logits: dict, labels: torch.Tensor):
    """Summed cross-entropy over the heads; labels (B, 4) in ATTRIBUTES order. Returns (loss, mean accuracy)."""
    loss, acc = 0.0, 0.0
    for j, k in enumerate(HEADS):
        loss = loss + F.cross_entropy(logits[k], labels[:, j])
        acc += (logits[k].argmax(1) == labels[:, j]).float().mean().item() / len(HEADS)
    return loss, acc


@torch.no_grad()
def predict(model: Classifier, images: torch.Tensor) -> dict:
    """{attribute: class names} for a batch of images in [0, 1]."""
    out = model(images)
    return {k: [ATTRIBUTES[k][i] for i in out[k].argmax(1).tolist()] for k in HEADS}
