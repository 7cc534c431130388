"""Where a visual prompt is and how big, told to the model (not in the paper; ``vp_geometry: tags`` / ``patches``).

The paper marks a prompt only on the patches it covers (visual-prompt injection): a ``<vp_k>`` in the text finds its
region by attention, and what attention brings back is a weighted *mean* of those patches. A mean holds what the
region looks like (colour, shape) but neither how many patches there were nor, unless the patches carry it, where
they lie. "Which is larger, <vp_1> or <vp_2>?" and "Is <vp_1> left or right of <vp_2>?" need exactly that, and a
4-layer decoder trained from scratch answered both at chance through twelve sessions (docs/TRAINING.md).

This module does what SAM's prompt encoder does for points and boxes: each prompt's centre, box size and area
(:func:`pixelsail.processing.prompt_geometry`, from the prompt mask itself) as Fourier features, through a
bias-free projection, added either to the embedding of every ``<vp_k>`` token of the text (``vp_geometry: tags``)
or to every patch the prompt covers, beside injection's vector (``patches``): then a tag reads its region's place
and size through the same attention that brings it the region's colour.

The vector is held to the scale of what it is added to: its direction is learned, its length is ``tanh(gate)``
times the norm of the tag's embedding (of the image's mean patch embedding for ``patches``), with ``gate``
zero-initialised, so the model is exactly the paper's at initialisation and the geometry can never outweigh the
tag's own identity. Unbounded (session 20's first form: a zero-initialised projection, trained at the heads' rate)
it grew to 13x a tag's embedding over the recipe and the copy of the asked tag that every visual-prompt answer
starts with broke (open questions 0.78 -> 0.08), while "left or right" went from chance to 0.99 on two seeds. On
the patches the ladder's "left or right" rung stayed at chance on two seeds (the tags then have to fetch it by
attention, the route that does not form). Bounded, on the tags, in the shipped recipe since session 21: multiple
choice 0.72 -> 0.93 / 0.95 on two seeds (larger-of-two and left-or-right both 0.84-0.95), the tag copy intact and
open questions 0.78 -> 0.92. docs/TRAINING.md, sessions 20-21.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pixelsail.processing import GEOMETRY_DIM

VP_GEOMETRY = ("", "tags", "patches")   # off / added to the prompt's <vp_k> text tokens / to the patches it covers


class PromptGeometry(nn.Module):
    """(K, 5) prompt geometry in [0, 1] and (K,) norms to match -> (K, hidden): the values and sin/cos of
    2^b * pi * value, b < num_bands, projected to the hidden width, scaled to ``tanh(gate) * norm``."""

    def __init__(self, *, hidden_size: int, num_bands: int = 4):
        super().__init__()
        self.num_bands = num_bands
        self.proj = nn.Linear(GEOMETRY_DIM * (1 + 2 * num_bands), hidden_size, bias=False)
        self.gate = nn.Parameter(torch.zeros(()))       # tanh(0) = 0: the paper's model at initialisation

    def features(self, geometry: torch.Tensor) -> torch.Tensor:
        """(K, 5) -> (K, 5 * (1 + 2 * num_bands))."""
        freqs = math.pi * 2.0 ** torch.arange(self.num_bands, device=geometry.device, dtype=torch.float32)
        angles = (geometry.float()[:, :, None] * freqs).flatten(1)                   # (K, 5 * num_bands)
        return torch.cat([geometry.float(), angles.sin(), angles.cos()], dim=-1)

    def forward(self, geometry: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
        """geometry (K, 5), norm (K,) or a scalar (detached here: the geometry follows its tag's scale, it does
        not set it) -> (K, hidden) vectors of length ``tanh(gate) * norm``."""
        direction = F.normalize(self.proj(self.features(geometry).to(self.proj.weight.dtype)), dim=-1)
        length = torch.tanh(self.gate) * norm.detach().to(direction.dtype)
        return direction * length.reshape(-1, 1) if length.dim() else direction * length
