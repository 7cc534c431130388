"""An absolute position for every patch, added to its embedding (not in the paper; ``patch_position: true``).

The paper's vision tokens know where they are only through the 2-D rotary positions, which enter attention as
*relative* offsets: a patch can tell what lies to its left, not that it sits in the image's top-left corner. A
pretrained model has learnt to read absolute place from image borders; a tiny decoder trained from scratch on the
shapes world does not (session 12 in docs/TRAINING.md: its region descriptions name the right 3x3 cell for 26 % of
objects, against 90 % for colour), and "left of", "in the top left" and "Is <vp_1> left or right of <vp_2>?" all
need it. This module gives each patch Fourier features of its centre in normalised image coordinates (so a 3x3 cell
means the same at every image size) through a zero-initialised bias-free projection: at initialisation the model is
exactly the paper's, and the projection learns from there.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class PatchPosition(nn.Module):
    """Grid (gh, gw) -> (gh*gw, hidden) row-major position embeddings: sin/cos of 2^k * pi * (x, y), k < num_bands,
    at the patch centres in [0, 1], projected to the hidden width."""

    def __init__(self, *, hidden_size: int, num_bands: int = 6):
        super().__init__()
        self.num_bands = num_bands
        self.proj = nn.Linear(4 * num_bands, hidden_size, bias=False)
        nn.init.zeros_(self.proj.weight)

    def features(self, grid: tuple[int, int], device: torch.device | None = None) -> torch.Tensor:
        """(gh*gw, 4*num_bands) Fourier features of the patch centres."""
        gh, gw = grid
        ys = (torch.arange(gh, device=device, dtype=torch.float32) + 0.5) / gh
        xs = (torch.arange(gw, device=device, dtype=torch.float32) + 0.5) / gw
        y, x = torch.meshgrid(ys, xs, indexing="ij")                                  # (gh, gw) each
        coords = torch.stack([x.flatten(), y.flatten()], dim=-1)                     # (N, 2)
        freqs = math.pi * 2.0 ** torch.arange(self.num_bands, device=device, dtype=torch.float32)
        angles = (coords[:, :, None] * freqs).flatten(1)                             # (N, 2*num_bands)
        return torch.cat([angles.sin(), angles.cos()], dim=-1)

    def forward(self, grid: tuple[int, int]) -> torch.Tensor:
        feats = self.features(grid, self.proj.weight.device).to(self.proj.weight.dtype)
        return self.proj(feats)
