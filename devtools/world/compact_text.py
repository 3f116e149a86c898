"""The world's text encoder: the active part of ComfyUI's CLIP-L (pure torch), and the Toy-CLIP
image tower it was pretrained against.

Parameter names are ComfyUI's ``comfy.clip_model.CLIPTextModel`` keys (``text_model.encoder.layers.0
.self_attn.q_proj.weight`` ...). What SD1's CLIPTextEncode computes (``comfy/sd1_clip.py``): token
embeddings + position embeddings -> 12 pre-LayerNorm layers with a causal mask (no padding mask
for SD1; the prompt is padded to 77 with [EOS]) -> final LayerNorm -> all 77 vectors are the
conditioning; the pooled output is the final-normed vector of the first [EOS]. Here the first
``Widths.text_layers`` layers are trained and the others are identities; only the world's words
have token embedding rows (any other token embeds as zeros, as in the assembled full model).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layout import TEXT_FULL, TEXT_HEAD_DIM, Widths
from .nn_common import PaddedLayerNorm, attention, quick_gelu

VOCAB = 49408
EOS = 49407
CONTEXT = 77


class CLIPAttention(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.heads = d // TEXT_HEAD_DIM
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x):
        return self.out_proj(attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.heads, causal=True))


class CLIPMLP(nn.Module):
    def __init__(self, d: int, m: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, m), nn.Linear(m, d)

    def forward(self, x):
        return self.fc2(quick_gelu(self.fc1(x)))


class CLIPLayer(nn.Module):
    def __init__(self, d: int, m: int):
        super().__init__()
        self.layer_norm1 = PaddedLayerNorm(d, TEXT_FULL)
        self.self_attn = CLIPAttention(d)
        self.layer_norm2 = PaddedLayerNorm(d, TEXT_FULL)
        self.mlp = CLIPMLP(d, m)

    def forward(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class Embeddings(nn.Module):
    def __init__(self, d: int, token_ids: list[int]):
        super().__init__()
        self.token_embedding = nn.Embedding(len(token_ids), d)
        self.position_embedding = nn.Embedding(CONTEXT, d)
        lut = torch.full((VOCAB,), len(token_ids), dtype=torch.long)  # unknown tokens -> a zero row
        lut[torch.tensor(token_ids)] = torch.arange(len(token_ids))
        self.register_buffer("lut", lut, persistent=False)

    def forward(self, tokens):
        table = torch.cat([self.token_embedding.weight, self.token_embedding.weight.new_zeros(1, self.token_embedding.weight.shape[1])])
        return F.embedding(self.lut[tokens], table) + self.position_embedding.weight[: tokens.shape[1]]


class TextModel(nn.Module):
    def __init__(self, w: Widths, token_ids: list[int]):
        super().__init__()
        self.embeddings = Embeddings(w.text, token_ids)
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList([CLIPLayer(w.text, w.text_mlp) for _ in range(w.text_layers)])
        self.final_layer_norm = PaddedLayerNorm(w.text, TEXT_FULL)

    def forward(self, tokens):
        x = self.embeddings(tokens)
        for layer in self.encoder.layers:
            x = layer(x)
        return self.final_layer_norm(x)


class CompactCLIPText(nn.Module):
    """tokens (B, N) -> (hidden (B, N, Widths.text), pooled first-[EOS] vector (B, Widths.text))."""

    def __init__(self, w: Widths, token_ids: list[int]):
        super().__init__()
        self.text_model = TextModel(w, token_ids)

    def forward(self, tokens):
        x = self.text_model(tokens)
        first_eos = (tokens == EOS).int().argmax(dim=-1)
        return x, x[torch.arange(x.shape[0]), first_eos]


class ImageTower(nn.Module):
    """Toy-CLIP's image encoder: a small CNN on 64 px RGB in [0, 1] -> an embedding of ``dim``."""

    def __init__(self, dim: int = 128, width: int = 32):
        super().__init__()
        c = width
        self.net = nn.Sequential(
            nn.Conv2d(3, c, 4, stride=2, padding=1), nn.GELU(),  # 32
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.GELU(), nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.GELU(),  # 16
            nn.Conv2d(2 * c, 4 * c, 3, stride=2, padding=1), nn.GELU(), nn.Conv2d(4 * c, 4 * c, 3, padding=1), nn.GELU(),  # 8
        )
        self.pos = nn.Parameter(torch.zeros(4 * c, 8, 8))  # where things are matters in this world
        self.pool = nn.AvgPool2d(2)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * c * 16, 512), nn.GELU(), nn.Linear(512, dim))

    def forward(self, images):
        return self.head(self.pool(self.net(images * 2 - 1) + self.pos))


class ToyCLIP(nn.Module):
    """The contrastive pair: text features = projection of the pooled [EOS] vector, image features
    from the tower; ``logit_scale`` is CLIP's learned temperature (log of the inverse)."""

    def __init__(self, w: Widths, token_ids: list[int], dim: int = 128):
        super().__init__()
        self.text = CompactCLIPText(w, token_ids)
        self.text_projection = nn.Linear(w.text, dim, bias=False)
        self.image = ImageTower(dim)
        self.logit_scale = nn.Parameter(torch.tensor(2.659))  # log(1 / 0.07), as CLIP starts

    def text_features(self, tokens):
        return F.normalize(self.text_projection(self.text(tokens)[1]), dim=-1)

    def image_features(self, images):
        return F.normalize(self.image(images), dim=-1)
