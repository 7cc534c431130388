"""The ``[SEG]`` query reads the image it is about to segment (``model.seg_query_image_read``; not in the paper).

Some expressions name their target only through the image: "the triangle left of the blue square" needs where the
square is, "all green objects" needs which green object comes first for the first ``[SEG]``. The question's words
(the question pool) cannot give that, and with ``seg_query_stop_grad`` the ``[SEG]`` state is trained by the
language loss alone, which never asks for it (docs/TRAINING.md, session 24). :class:`MaskFeatureReadout` gives the
query one look at the image: attention from the query's other inputs over the very mask features the query is then
dotted with (which carry colour, shape, the visual prompts and, with ``mask_position``, every pixel's place). Its
result joins the query MLP's input. The mask loss trains it; it opens no new gradient route into the transformer
(the mask features are trained by the mask loss already). Its query projection starts at zero: at initialisation
it reads the mean of the features.
"""
from __future__ import annotations

import torch
from torch import nn


class MaskFeatureReadout(nn.Module):
    """asker (M, hidden) attends over its image's mask features (M, mask_dim, h, w) -> (M, mask_dim)."""

    def __init__(self, *, hidden_size: int, mask_dim: int, num_heads: int = 4):
        super().__init__()
        if mask_dim % num_heads:
            raise ValueError(f"mask_dim {mask_dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(hidden_size, mask_dim, bias=False)
        self.k = nn.Linear(mask_dim, mask_dim, bias=False)
        self.v = nn.Linear(mask_dim, mask_dim, bias=False)
        nn.init.zeros_(self.q.weight)  # uniform attention at the start: the mean of the image's features

    def forward(self, asker: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        m, d = features.shape[:2]
        h = self.num_heads
        pixels = features.flatten(2).transpose(1, 2).to(asker.dtype)              # (M, h*w, D)
        q = self.q(asker).view(m, h, 1, d // h)                                   # (M, H, 1, D/H)
        k = self.k(pixels).view(m, -1, h, d // h).transpose(1, 2)                 # (M, H, h*w, D/H)
        v = self.v(pixels).view(m, -1, h, d // h).transpose(1, 2)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)          # (M, H, 1, D/H)
        return out.reshape(m, d)
