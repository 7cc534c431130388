"""A place term in the per-pixel mask features (not in the paper; ``mask_position: true``).

A mask is the dot product of the [SEG] query with each pixel's mask feature, so a query can only select what the
features carry. Measured on the shapes world (docs/TRAINING.md, session 13, ``benchmarks.vision_probe``): the mask
features carry colour, shape and size (a linear read-out gets 94-100 %) but no place at all (row and column at the
majority class), even though the vision tokens' final states hold them (row 85 %, column 67 %). A query for "the
object left of the blue star" or "the other red object" (the marked one excluded) then has nothing to select by.

This module adds to every pixel's feature a learned function of where the pixel is: Gaussian bumps on a
``grid`` x ``grid`` lattice over the normalised image, through a zero-initialised bias-free projection. The query's
dot product with it is a coarse spatial map (any smooth map at the lattice's resolution, a bump at one place
included, which the separable Fourier features of ``patch_position`` cannot draw) added to the mask logits. At
initialisation the model is exactly the paper's.
"""
from __future__ import annotations

import torch
from torch import nn


class MaskPosition(nn.Module):
    """Map size (h, w) -> (h, w, mask_dim) place features, the same place meaning the same at every image size."""

    def __init__(self, *, mask_dim: int, grid: int = 8):
        super().__init__()
        self.grid = grid
        self.proj = nn.Linear(grid * grid, mask_dim, bias=False)
        nn.init.zeros_(self.proj.weight)

    def basis(self, size: tuple[int, int], device: torch.device | None = None) -> torch.Tensor:
        """(h*w, grid*grid): each pixel centre's Gaussian weight (sigma = one lattice step) for every lattice point,
        both in [0, 1] image coordinates, pixels row-major, lattice points row-major."""
        h, w = size
        g = self.grid
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        centres = (torch.arange(g, device=device, dtype=torch.float32) + 0.5) / g
        # separable: exp(-(dx^2 + dy^2) / 2 s^2) = exp(-dy^2 / 2 s^2) * exp(-dx^2 / 2 s^2), s = 1 / g
        wy = torch.exp(-0.5 * ((ys[:, None] - centres[None]) * g) ** 2)          # (h, g)
        wx = torch.exp(-0.5 * ((xs[:, None] - centres[None]) * g) ** 2)          # (w, g)
        return (wy[:, None, :, None] * wx[None, :, None, :]).reshape(h * w, g * g)  # (h, w, g, g) -> (h*w, g*g)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        basis = self.basis(size, self.proj.weight.device).to(self.proj.weight.dtype)
        return self.proj(basis).view(*size, -1)                                    # (h, w, mask_dim)
