"""The world's UNet: the active part of ComfyUI's one-level SD1.5 UNet (pure torch).

Parameter names are ComfyUI's UNet keys (``input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight``
...); each tensor is the active block of the full tensor of that name (``layout.unet_active``).
Structure, as ComfyUI builds it for ``devtools.checkpoints.SPECS["sd15"]``::

    time_embed -> input_blocks.0 (conv) -> input_blocks.1 (res, transformer)
    -> middle_block (res, transformer, res) -> output_blocks.0/1 (res on cat[h, skip], transformer) -> out

The middle res blocks are exact identities unless ``Widths.unet_middle_res``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layout import UNET_FULL, UNET_HEAD_DIM, Widths
from .nn_common import PaddedLayerNorm, attention, timestep_embedding

GROUP = UNET_FULL // 32  # GroupNorm(32, 320): 10 channels a group (20 on the 640-wide concatenation)


class ResBlock(nn.Module):
    def __init__(self, cin: int, c: int, e: int, group: int = GROUP):
        super().__init__()
        self.in_layers = nn.Sequential(nn.GroupNorm(cin // group, cin), nn.SiLU(), nn.Conv2d(cin, c, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(e, c))
        self.out_layers = nn.Sequential(nn.GroupNorm(c // GROUP, c), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Conv2d(c, c, 3, padding=1))
        self.skip_connection = nn.Conv2d(cin, c, 1) if cin != c else nn.Identity()

    def forward(self, x, emb):
        h = self.in_layers(x) + self.emb_layers(emb)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class CrossAttention(nn.Module):
    def __init__(self, c: int, context: int | None = None):
        super().__init__()
        self.heads = c // UNET_HEAD_DIM
        self.to_q = nn.Linear(c, c, bias=False)
        self.to_k = nn.Linear(context or c, c, bias=False)
        self.to_v = nn.Linear(context or c, c, bias=False)
        self.to_out = nn.Sequential(nn.Linear(c, c), nn.Dropout(0.0))

    def forward(self, x, context=None):
        context = x if context is None else context
        return self.to_out(attention(self.to_q(x), self.to_k(context), self.to_v(context), self.heads))


class GEGLU(nn.Module):
    def __init__(self, c: int, f: int):
        super().__init__()
        self.proj = nn.Linear(c, 2 * f)

    def forward(self, x):
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, c: int, f: int):
        super().__init__()
        self.net = nn.Sequential(GEGLU(c, f), nn.Dropout(0.0), nn.Linear(f, c))

    def forward(self, x):
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    def __init__(self, c: int, f: int, context: int):
        super().__init__()
        self.attn1 = CrossAttention(c)
        self.ff = FeedForward(c, f)
        self.attn2 = CrossAttention(c, context)
        self.norm1, self.norm2, self.norm3 = (PaddedLayerNorm(c, UNET_FULL) for _ in range(3))

    def forward(self, x, context):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    def __init__(self, c: int, f: int, context: int):
        super().__init__()
        self.norm = nn.GroupNorm(c // GROUP, c, eps=1e-6)
        self.proj_in = nn.Conv2d(c, c, 1)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(c, f, context)])
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x, context):
        b, c, h, w = x.shape
        y = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)
        y = self.transformer_blocks[0](y, context)
        return self.proj_out(y.transpose(1, 2).reshape(b, c, h, w)) + x


class Seq(nn.ModuleList):
    """ComfyUI's TimestepEmbedSequential: a list of layers, some of which read emb or context."""

    def forward(self, x, emb, context):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class CompactUNet(nn.Module):
    """eps(x_t, t, context): x_t (B, 4, H, W), t (B,) in [0, 1000), context (B, 77, Widths.text)."""

    def __init__(self, w: Widths):
        super().__init__()
        c, e, f, d = w.unet, w.unet_time, w.unet_ff, w.text
        self.widths = w
        self.time_embed = nn.Sequential(nn.Linear(UNET_FULL, e), nn.SiLU(), nn.Linear(e, e))
        self.input_blocks = nn.ModuleList([Seq([nn.Conv2d(4, c, 3, padding=1)]),
                                           Seq([ResBlock(c, c, e), SpatialTransformer(c, f, d)])])
        middle = [SpatialTransformer(c, f, d)]
        if w.unet_middle_res:
            middle = [ResBlock(c, c, e)] + middle + [ResBlock(c, c, e)]
        self.middle_block = Seq(middle) if w.unet_middle_res else nn.ModuleDict({"1": middle[0]})
        self.output_blocks = nn.ModuleList(
            [Seq([ResBlock(2 * c, c, e, group=2 * GROUP), SpatialTransformer(c, f, d)]) for _ in range(2)])
        self.out = nn.Sequential(nn.GroupNorm(c // GROUP, c), nn.SiLU(), nn.Conv2d(c, 4, 3, padding=1))

    def forward(self, x, t, context):
        emb = self.time_embed(timestep_embedding(t, UNET_FULL))
        hs = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb, context)
            hs.append(h)
        if isinstance(self.middle_block, Seq):
            h = self.middle_block(h, emb, context)
        else:
            h = self.middle_block["1"](h, context)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb, context)
        return self.out(h)
