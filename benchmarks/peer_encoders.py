"""The image encoders of the real peer systems, shaped like them, from plain torch modules (random weights).

* :class:`SamImageEncoder` - SAM's ViT (ViT-H: width 1280, 32 blocks, 16 heads, patch 16, 1024 px): windowed
  attention (14 x 14 windows) in all blocks but four global ones, then the neck (1x1 conv -> LN -> 3x3 conv -> LN) to
  a 256-d stride-16 embedding. LISA's segmentation encoder.
* :class:`HieraImageEncoder` - SAM2's Hiera (Hiera-L: 144 -> 288 -> 576 -> 1152 channels, 2/6/36/4 blocks, windows
  8/4/16/8, three global blocks, 2x2 query pooling between stages) and its FPN neck, giving the 256-d stride-16
  embedding and the stride-4/8 high-resolution features of SAM2's decoder. Sa2VA's segmentation encoder.

Timing-relevant simplifications, each making the peer cheaper (so a measured speed-up is a lower bound): no
relative-position terms in SAM's attention (SAM materialises every attention matrix to add them), fused SDPA
everywhere, SAM2's window position embedding left out. The CLIP and InternViT towers are plain global-attention
ViTs and come from :class:`benchmarks.peer_pipeline.ViTEncoder`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.peer_pipeline import Attention, mlp


@dataclass(frozen=True)
class ViTSpec:
    width: int
    depth: int
    heads: int
    patch: int
    image_size: int
    window: int = 0                              # 0: global attention in every block
    global_blocks: tuple[int, ...] = ()          # blocks with global attention when window > 0


@dataclass(frozen=True)
class HieraSpec:
    embed_dim: int = 144
    heads: int = 2
    stages: tuple[int, ...] = (2, 6, 36, 4)
    windows: tuple[int, ...] = (8, 4, 16, 8)
    global_blocks: tuple[int, ...] = (23, 33, 43)
    image_size: int = 1024
    neck_dim: int = 256


def window_partition(x: torch.Tensor, w: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(1, H, W, C) -> (windows, w*w, C), zero-padding H and W up to multiples of w; also the padded (H, W)."""
    _, h, wd, c = x.shape
    x = F.pad(x, (0, 0, 0, (-wd) % w, 0, (-h) % w))
    hp, wp = x.shape[1:3]
    x = x.view(1, hp // w, w, wp // w, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, w * w, c), (hp, wp)


def window_unpartition(x: torch.Tensor, w: int, padded: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """The inverse of :func:`window_partition`: (windows, w*w, C) -> (1, H, W, C) with the padding cut off."""
    hp, wp = padded
    x = x.view(1, hp // w, wp // w, w, w, -1).permute(0, 1, 3, 2, 4, 5).reshape(1, hp, wp, -1)
    return x[:, :size[0], :size[1]]


def _grid_tokens(y: torch.Tensor, window: int) -> tuple[torch.Tensor, int, tuple[int, int]]:
    """(1, H, W, C) -> attention groups: windows of ``window``, or the whole map as one group when 0."""
    if window:
        tokens, padded = window_partition(y, window)
        return tokens, window, padded
    _, h, w, c = y.shape
    return y.reshape(1, h * w, c), 0, (h, w)


class WindowBlock(nn.Module):
    """A pre-norm ViT block on a (1, H, W, C) map, attending within ``window`` x ``window`` windows (0: globally)."""

    def __init__(self, dim: int, heads: int, window: int):
        super().__init__()
        self.window = window
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.mlp = mlp(dim, 4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[1:3]
        tokens, w, padded = _grid_tokens(self.norm1(x), self.window)
        y = self.attn(tokens, tokens, tokens)
        x = x + (window_unpartition(y, w, padded, size) if w else y.view(1, *size, -1))
        return x + self.mlp(self.norm2(x))


class SamImageEncoder(nn.Module):
    """(1, 3, S, S) normalised pixels -> (1, (S/16)^2, 256) image embedding."""

    def __init__(self, spec: ViTSpec, out_dim: int = 256):
        super().__init__()
        grid = spec.image_size // spec.patch
        self.patch = nn.Conv2d(3, spec.width, spec.patch, stride=spec.patch)
        self.pos = nn.Parameter(torch.zeros(1, grid, grid, spec.width))
        self.blocks = nn.ModuleList(WindowBlock(spec.width, spec.heads, 0 if i in spec.global_blocks else spec.window)
                                    for i in range(spec.depth))
        self.neck_in = nn.Linear(spec.width, out_dim, bias=False)
        self.neck_norm1, self.neck_norm2 = nn.LayerNorm(out_dim), nn.LayerNorm(out_dim)
        self.neck_conv = nn.Conv2d(out_dim, out_dim, 3, padding=1, bias=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch(pixels).permute(0, 2, 3, 1) + self.pos
        for block in self.blocks:
            x = block(x)
        x = self.neck_norm1(self.neck_in(x))
        x = self.neck_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.neck_norm2(x).flatten(1, 2)


class HieraBlock(nn.Module):
    """Hiera's block: windowed attention whose queries are max-pooled 2x2 at a stage's first block (``pool``),
    where the width also changes (dim -> dim_out, the shortcut projected and pooled alike)."""

    def __init__(self, dim: int, dim_out: int, heads: int, window: int, pool: bool):
        super().__init__()
        self.window, self.pool, self.heads = window, pool, heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim_out)
        self.qkv = nn.Linear(dim, 3 * dim_out)
        self.proj = nn.Linear(dim_out, dim_out)
        self.shortcut = nn.Linear(dim, dim_out) if dim != dim_out else None
        self.mlp = mlp(dim_out, 4 * dim_out)

    @staticmethod
    def _pool(x: torch.Tensor) -> torch.Tensor:
        """(N, h, w, C) -> (N, h/2, w/2, C) by 2x2 max pooling."""
        return F.max_pool2d(x.permute(0, 3, 1, 2), 2, ceil_mode=True).permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h, w, _ = x.shape
        y = self.norm1(x)
        shortcut = x if self.shortcut is None else self.shortcut(y)
        if self.pool:
            shortcut = self._pool(shortcut)
        tokens, win, padded = _grid_tokens(y, self.window)
        n, length, _ = tokens.shape
        side = (win, win) if win else (h, w)
        q, k, v = self.qkv(tokens).view(n, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        if self.pool:   # (n, heads, L, d) -> pooled over the window's rows and columns
            d = q.shape[-1]
            q = self._pool(q.reshape(n * self.heads, *side, d)).reshape(n, self.heads, -1, d)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, q.shape[2], -1)
        out = self.proj(out)
        if self.pool:
            side, padded = (side[0] // 2, side[1] // 2), (padded[0] // 2, padded[1] // 2)
        size = shortcut.shape[1:3]
        out = window_unpartition(out, side[0], padded, size) if win else out.view(1, *size, -1)
        x = shortcut + out
        return x + self.mlp(self.norm2(x))


class HieraImageEncoder(nn.Module):
    """(1, 3, S, S) -> image embedding (1, (S/16)^2, 256) and high-res features at stride 4 (32-d) and 8 (64-d)."""

    def __init__(self, spec: HieraSpec):
        super().__init__()
        self.patch = nn.Conv2d(3, spec.embed_dim, 7, stride=4, padding=3)
        self.pos = nn.Parameter(torch.zeros(1, spec.embed_dim, 7, 7))   # interpolated to the grid, as SAM2 does
        blocks, dims, dim, heads, i = [], [], spec.embed_dim, spec.heads, 0
        for stage, depth in enumerate(spec.stages):
            dim_out, heads_out = spec.embed_dim * 2 ** stage, spec.heads * 2 ** stage
            for j in range(depth):
                pool = stage > 0 and j == 0
                # a stage's first block still uses the previous stage's window (SAM2's "lags by a block")
                window = spec.windows[stage - 1 if pool else stage]
                blocks.append(HieraBlock(dim, dim_out, heads_out, 0 if i in spec.global_blocks else window, pool))
                dim, heads, i = dim_out, heads_out, i + 1
            dims.append(dim_out)
        self.blocks = nn.ModuleList(blocks)
        self.stage_ends = [sum(spec.stages[:s + 1]) - 1 for s in range(len(spec.stages))]
        self.lateral = nn.ModuleList(nn.Linear(d, spec.neck_dim) for d in dims)
        self.no_mem = nn.Parameter(torch.zeros(spec.neck_dim))
        self.conv_s0 = nn.Linear(spec.neck_dim, spec.neck_dim // 8)
        self.conv_s1 = nn.Linear(spec.neck_dim, spec.neck_dim // 4)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.patch(pixels)
        x = (x + F.interpolate(self.pos, size=x.shape[-2:], mode="bicubic")).permute(0, 2, 3, 1)
        levels = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.stage_ends:
                levels.append(x)
        feats = [lat(level) for lat, level in zip(self.lateral, levels)]
        # top-down fusion of the two coarsest levels (SAM2's fpn_top_down_levels = [2, 3]); stride 32 is dropped
        top = F.interpolate(feats[3].permute(0, 3, 1, 2), scale_factor=2.0, mode="nearest")
        embed = feats[2] + top.permute(0, 2, 3, 1) + self.no_mem
        return embed.flatten(1, 2), self.conv_s0(feats[0]), self.conv_s1(feats[1])


__all__ = ["HieraImageEncoder", "HieraSpec", "SamImageEncoder", "ViTSpec", "WindowBlock", "window_partition",
           "window_unpartition"]
