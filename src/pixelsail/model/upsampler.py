"""Learnable upsampling of the stride-P vision-token map to per-pixel mask features (PAPER.md, improvement 1)."""
from __future__ import annotations

import math

import torch
from torch import nn


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of a (B, C, H, W) map."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class UpsampleStep(nn.Module):
    """x2: transposed conv (k2, s2) -> GELU -> depth-wise 3x3 -> point-wise 1x1 -> channel LayerNorm."""

    def __init__(self, channels: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2)
        self.act = nn.GELU()
        self.depthwise = nn.Conv2d(channels, channels, kernel_size=3, padding=1, groups=channels)
        self.pointwise = nn.Conv2d(channels, channels, kernel_size=1)
        self.norm = ChannelLayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.pointwise(self.depthwise(self.act(self.up(x)))))


class MaskFeatures(nn.Module):
    """(B, hidden, H/P, W/P) vision-token map -> (B, mask_dim, H/stride, W/stride) per-pixel mask embeddings.

    With ``upsample=False`` this is the plain baseline: the same per-pixel MLP on the stride-P map.
    """

    def __init__(self, *, hidden_size: int, patch_size: int, mask_dim: int, upsample: bool, stride: int,
                 max_width: int = 1024):
        super().__init__()
        if upsample:
            if stride > patch_size or patch_size % stride or not math.log2(patch_size // stride).is_integer():
                raise ValueError(f"upsample stride {stride} must divide patch size {patch_size} by a power of two")
            steps = int(math.log2(patch_size // stride))
        else:
            steps = 0
        width = min(hidden_size, max_width)
        self.pre = nn.Conv2d(hidden_size, width, kernel_size=1, bias=False) if width != hidden_size else nn.Identity()
        self.steps = nn.Sequential(*[UpsampleStep(width) for _ in range(steps)])
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, mask_dim))
        self.stride = patch_size // (2 ** steps)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        x = self.steps(self.pre(grid))
        return self.mlp(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
