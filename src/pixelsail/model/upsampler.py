"""Learnable upsampling of the stride-P vision-token map to per-pixel mask features (PAPER.md, improvement 1).

Each layer is written as the matrix multiply it is, on channels-last maps: a kernel-2 stride-2 transposed conv is a
per-pixel Linear(C -> 4C) followed by a 2x2 pixel shuffle and a 1x1 conv is a per-pixel Linear: the same maths as
the conv layers at matmul speed. The depth-wise 3x3 is oneDNN's grouped convolution on the channels-last memory, in
fp32 on CPUs without native bf16 (emulated bf16 convolutions are slow there).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pixelsail.hardware import fast_bf16
from pixelsail.model.mask_position import MaskPosition


class DepthwiseConv3x3(nn.Module):
    """A per-channel 3x3 convolution with zero padding on a (B, H, W, C) map."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(3, 3, channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        nn.init.uniform_(self.weight, -1 / 3, 1 / 3)  # conv2d's default bound for fan_in = 9

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, H, W, C) viewed as (B, C, H, W) in channels-last memory: oneDNN's grouped convolution. Nine shifted
        # multiply-adds, used before, were 6-9x slower fwd+bwd (each shift's slice backward zero-fills a whole map).
        weight = self.weight.permute(2, 0, 1)[:, None]  # (C, 1, 3, 3)
        x = x.permute(0, 3, 1, 2)
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu") and not fast_bf16("cpu"):
            with torch.autocast("cpu", enabled=False):  # emulated bf16 convolutions: fp32 is ~6x faster
                out = F.conv2d(x.float(), weight.float(), self.bias.float(), padding=1, groups=x.shape[1])
        else:
            out = F.conv2d(x, weight, self.bias, padding=1, groups=x.shape[1])
        return out.permute(0, 2, 3, 1)


class UpsampleStep(nn.Module):
    """x2: transposed conv (k2, s2) -> GELU -> depth-wise 3x3 -> point-wise 1x1 -> LayerNorm over channels."""

    def __init__(self, channels: int):
        super().__init__()
        self.up = nn.Linear(channels, 4 * channels)
        self.act = nn.GELU()
        self.depthwise = DepthwiseConv3x3(channels)
        self.pointwise = nn.Linear(channels, channels)
        self.norm = nn.LayerNorm(channels, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        # (B, H, W, 4C) -> (B, H, W, 2, 2, C) -> (B, H, 2, W, 2, C) -> (B, 2H, 2W, C)
        x = self.up(x).view(b, h, w, 2, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, c)
        return self.norm(self.pointwise(self.depthwise(self.act(x))))


class MaskFeatures(nn.Module):
    """(B, hidden, H/P, W/P) vision-token map -> (B, mask_dim, H/stride, W/stride) per-pixel mask embeddings.

    With ``upsample=False`` this is the plain baseline: the same per-pixel MLP on the stride-P map. With
    ``position=True`` every pixel's embedding also gets a learned function of its place (see model/mask_position.py).
    """

    def __init__(self, *, hidden_size: int, patch_size: int, mask_dim: int, upsample: bool, stride: int,
                 max_width: int = 1024, position: bool = False):
        super().__init__()
        if upsample:
            if stride > patch_size or patch_size % stride or not math.log2(patch_size // stride).is_integer():
                raise ValueError(f"upsample stride {stride} must divide patch size {patch_size} by a power of two")
            steps = int(math.log2(patch_size // stride))
        else:
            steps = 0
        width = min(hidden_size, max_width)
        self.pre = nn.Linear(hidden_size, width, bias=False) if width != hidden_size else nn.Identity()
        self.steps = nn.Sequential(*[UpsampleStep(width) for _ in range(steps)])
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, mask_dim))
        self.stride = patch_size // (2 ** steps)
        self.position = MaskPosition(mask_dim=mask_dim) if position else None

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        x = self.steps(self.pre(grid.permute(0, 2, 3, 1)))  # channels-last (B, h, w, C)
        out = self.mlp(x)                                   # (B, h, w, mask_dim)
        if self.position is not None:
            out = out + self.position(tuple(out.shape[1:3])).to(out.dtype)
        return out.permute(0, 3, 1, 2)
