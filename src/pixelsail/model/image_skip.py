"""The image's own pixels in the per-pixel mask features (not in the paper; ``mask_image_skip: true``).

The paper draws every mask from features upsampled out of the vision tokens alone, one token per 16 x 16 patch. In
the shapes world at 128 px a small object is smaller than a patch and two touching objects share patches; the
ladder's multi-target lists lose their targets exactly there: small objects, targets that touch or lie on one
another (docs/TRAINING.md, session 27: the masks of small targets are blobs a few feature cells wide). The upsampler
has to invent those edges from the tokens.

This module adds to each mask-feature cell a learned function of the raw pixels the cell covers: the cell's
``stride x stride x 3`` normalised values through a two-layer MLP whose output layer starts at zero, so the model
starts as the paper's. A query's dot product with it is then a map at the features' own resolution (colour and
edges, as the pixels give them), which the token features' coarse "which object" can be sharpened with.

Measured (docs/TRAINING.md, sessions 28-31): on the ladder, whose validation scenes come from the training renderer,
it helps multi-target on three seeds; in the shipped recipe it loses 7.8 points of referring cIoU on the perturbed
split (other shades, edges and backgrounds: the very pixels it reads) and 15.6 of grounded-conversation cIoU, so it
is off.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class ImageSkip(nn.Module):
    """G images sharing a patch grid -> (G, mask_dim, gh * P / stride, gw * P / stride): a learned vector per
    ``stride x stride`` cell of each image, computed from that cell's pixels only."""

    def __init__(self, *, patch_size: int, stride: int, mask_dim: int, width: int = 64):
        super().__init__()
        if patch_size % stride:
            raise ValueError(f"mask feature stride {stride} does not divide the patch size {patch_size}")
        self.patch_size, self.stride = patch_size, stride
        self.mlp = nn.Sequential(nn.Linear(3 * stride * stride, width), nn.GELU(), nn.Linear(width, mask_dim))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, images: Sequence) -> torch.Tensor:
        """``images``: :class:`~pixelsail.processing.ImageInputs` of one grid (their ``patches`` (N, 3*P*P))."""
        (gh, gw), p, s = images[0].grid, self.patch_size, self.stride
        weight = self.mlp[0].weight
        x = torch.stack([im.patches for im in images]).to(device=weight.device, dtype=weight.dtype)  # (G, N, 3*P*P)
        g = x.shape[0]
        x = x.view(g, gh, gw, 3, p // s, s, p // s, s)             # patch row, col, channel, cell row, y, cell col, x
        x = x.permute(0, 1, 4, 2, 6, 3, 5, 7)                      # (G, gh, P/s, gw, P/s, 3, s, s)
        x = x.reshape(g, gh * (p // s), gw * (p // s), 3 * s * s)  # (G, h, w, 3*s*s): each cell's pixels
        return self.mlp(x).permute(0, 3, 1, 2)                     # (G, mask_dim, h, w)


__all__ = ["ImageSkip"]
