"""Where a visual prompt is and how big, told to the model (not in the paper; ``vp_geometry: tags`` / ``patches``).

The paper marks a prompt only on the patches it covers (visual-prompt injection): a ``<vp_k>`` in the text finds its
region by attention, and what attention brings back is a weighted *mean* of those patches. A mean holds what the
region looks like (colour, shape) but neither how many patches there were nor, unless the patches carry it, where
they lie. "Which is larger, <vp_1> or <vp_2>?" and "Is <vp_1> left or right of <vp_2>?" need exactly that, and a
4-layer decoder trained from scratch answered both at chance through twelve sessions (docs/TRAINING.md).

This module does what SAM's prompt encoder does for points and boxes: each prompt's centre, box size and area
(:func:`pixelsail.processing.prompt_geometry`, from the prompt mask itself) as Fourier features, through a
zero-initialised bias-free projection, added either to the embedding of every ``<vp_k>`` token of the text
(``vp_geometry: tags``) or to every patch the prompt covers, beside injection's vector (``patches``): then a tag
reads its region's place and size through the same attention that brings it the region's colour, and keeps its own
identity. At initialisation the model is exactly the paper's either way.

Measured (docs/TRAINING.md, session 20): on the tags, "left or right" went from chance to 0.99 on two seeds, and
the geometry vector grew to 13x a tag's embedding, so the copy of the asked tag that every visual-prompt answer
starts with broke (open questions 0.78 -> 0.08). On the patches, the ladder's "left or right" rung stayed at chance
on two seeds (the tags then have to fetch it by attention, the route that does not form).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from pixelsail.processing import GEOMETRY_DIM

VP_GEOMETRY = ("", "tags", "patches")   # off / added to the prompt's <vp_k> text tokens / to the patches it covers


class PromptGeometry(nn.Module):
    """(K, 5) prompt geometry in [0, 1] -> (K, hidden): the values and sin/cos of 2^b * pi * value, b < num_bands,
    projected to the hidden width."""

    def __init__(self, *, hidden_size: int, num_bands: int = 4):
        super().__init__()
        self.num_bands = num_bands
        self.proj = nn.Linear(GEOMETRY_DIM * (1 + 2 * num_bands), hidden_size, bias=False)
        nn.init.zeros_(self.proj.weight)

    def features(self, geometry: torch.Tensor) -> torch.Tensor:
        """(K, 5) -> (K, 5 * (1 + 2 * num_bands))."""
        freqs = math.pi * 2.0 ** torch.arange(self.num_bands, device=geometry.device, dtype=torch.float32)
        angles = (geometry.float()[:, :, None] * freqs).flatten(1)                   # (K, 5 * num_bands)
        return torch.cat([geometry.float(), angles.sin(), angles.cos()], dim=-1)

    def forward(self, geometry: torch.Tensor) -> torch.Tensor:
        return self.proj(self.features(geometry).to(self.proj.weight.dtype))
