"""The query also carries what its target looks like, read where the box head puts it (``model.seg_query_box_read``;
not in the paper; needs ``seg_box_weight > 0``).

On the relation rung ("the triangle left of the blue square") the ``[SEG]`` state learns *where* its target is: the
box head's centre is nearest the target in 99 % of the validation scenes. The masks still lose a third of their
cIoU where another object touches the target, mostly the anchor the state attended to (docs/TRAINING.md, session
31): the query says "the triangle over there", not "the green one", and a place-driven query bleeds across the
edge. The oracle query, which knows the target's colour, shape and size, reaches 80 % on the same features.

:class:`BoxWindowReadout` gives the query the target's appearance: a Gaussian window at the predicted box (centre,
a quarter of its size as the spread) pools the image's mask features, the very maps the query is dotted with, and a
projection of that pooled vector is added to the query. A query that contains the target's own feature vector
lights up the pixels that look like it, and touching objects never share a colour in the shapes world. The box is
detached (the box loss alone places it); the projection starts at zero, so the model starts as without the switch.
"""
from __future__ import annotations

import torch
from torch import nn


def box_window(boxes: torch.Tensor, size: tuple[int, int], spread: float = 0.25) -> torch.Tensor:
    """(M, 4) boxes (cx, cy, w, h as shares of the image) -> (M, h, w) Gaussian weights over the cell centres of an
    ``size`` = (h, w) feature grid, each summing to 1; the spread is ``spread`` times the box's width and height, and
    at least one cell."""
    rows, cols = size
    dev = boxes.device
    ys = (torch.arange(rows, device=dev, dtype=torch.float32) + 0.5) / rows                 # (h,)
    xs = (torch.arange(cols, device=dev, dtype=torch.float32) + 0.5) / cols                 # (w,)
    cx, cy, bw, bh = boxes.float().unbind(-1)                                               # (M,) each
    sx = (bw * spread).clamp(min=1.0 / cols)
    sy = (bh * spread).clamp(min=1.0 / rows)
    gx = -0.5 * ((xs[None, :] - cx[:, None]) / sx[:, None]) ** 2                             # (M, w)
    gy = -0.5 * ((ys[None, :] - cy[:, None]) / sy[:, None]) ** 2                             # (M, h)
    logw = gy[:, :, None] + gx[:, None, :]                                                  # (M, h, w)
    return logw.flatten(1).softmax(dim=1).view(-1, rows, cols)


class BoxWindowReadout(nn.Module):
    """boxes (M, 4) and their images' mask features (M, mask_dim, h, w) -> (M, mask_dim) additions to the queries."""

    def __init__(self, *, mask_dim: int, spread: float = 0.25):
        super().__init__()
        self.spread = spread
        self.proj = nn.Linear(mask_dim, mask_dim, bias=False)
        nn.init.zeros_(self.proj.weight)  # the query starts as without the switch

    def forward(self, boxes: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        weights = box_window(boxes.detach(), features.shape[-2:], self.spread)              # (M, h, w)
        pooled = torch.einsum("mhw,mdhw->md", weights.to(features.dtype), features)       # (M, mask_dim)
        return self.proj(pooled.to(self.proj.weight.dtype))


__all__ = ["BoxWindowReadout", "box_window"]
