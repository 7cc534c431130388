"""The query also carries what its target looks like (``model.seg_query_look``; not in the paper).

On the relation rung ("the triangle left of the blue square") the ``[SEG]`` state learns *where* its target is (with
``seg_box_weight`` the box head's centre is nearest the target in 99 % of the validation scenes), yet the masks lose a
third of their cIoU where another object touches the target, mostly the anchor the state attended to
(docs/TRAINING.md, session 31): the query says "the triangle over there", not "the green one", and a place-driven
query bleeds across the edge. The mask features themselves separate such targets well: the best linear query of one
image's features, fitted to that image's target, reaches 92 % cIoU on touched targets (session 32).

:class:`TargetLook` gives the query its target's appearance. The image's mask features, the very maps the query is
dotted with, are averaged over where the target is thought to be, and a projection of that average is added to the
query, which then also lights up the pixels that look like its target (touching objects never share a colour in the
shapes world). Where the target is thought to be (``seg_query_look``):

- ``"mask"``: the cells of the query's own first mask (probability above one half), as Mask2Former's masked
  attention reads the features under the previous layer's mask;
- ``"core"``: the same cells, each weighted by its logit (how sure the first mask is there), so a rim that bleeds
  onto a touching object, whose logits sit just above zero, counts less than the target's confident middle;
- ``"box"``: a Gaussian window at the box head's box (needs ``seg_box_weight > 0``): its centre, a quarter of its
  size as the spread.

The place is detached (the mask and box losses train it); the projection starts at zero, so the model starts as
without the switch, and an empty first mask adds nothing.

Measured on the ladder's relation rung (docs/TRAINING.md, session 32): ``"mask"`` ends at 79.6 / 78.9 % cIoU after
72,000 samples on two seeds, against 72.0 / 72.3 without it (touched targets 77.2 % against 67.5); the box window,
about 9 px off on 15-30 px objects, made a frozen model's masks worse (``benchmarks.query_bound``) and was stopped.
``"core"`` (session 34) is ahead of ``"mask"`` at almost every evaluation from 14,400 samples on, on two seeds, and
reaches 81.5 / 80.2 at 57,600 (the runs stopped there): the window the relation rung's look should use.
"""
from __future__ import annotations

import torch
from torch import nn

LOOK_SOURCES = ("", "mask", "core", "box")


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


def mask_window(logits: torch.Tensor) -> torch.Tensor:
    """(M, h, w) mask logits -> (M, h, w) equal weights on the cells whose probability exceeds one half, summing to
    1; all zero for an empty mask."""
    inside = (logits.detach() > 0).float()
    return inside / inside.flatten(1).sum(1).clamp(min=1.0)[:, None, None]


def core_window(logits: torch.Tensor) -> torch.Tensor:
    """(M, h, w) mask logits -> (M, h, w) weights proportional to the positive logits (the cells of
    :func:`mask_window`, the surest weighted most), summing to 1; all zero for an empty mask."""
    sure = logits.detach().float().clamp(min=0.0)
    return sure / sure.flatten(1).sum(1).clamp(min=1e-6)[:, None, None]


# the windows read from the query's own first mask (a look with more than one round needs one of them)
MASK_WINDOWS = {"mask": mask_window, "core": core_window}


class TargetLook(nn.Module):
    """(M, h, w) windows over the images' mask features (M, mask_dim, h, w) -> (M, mask_dim) additions to the
    queries: a projection of the window-weighted mean feature."""

    def __init__(self, *, mask_dim: int):
        super().__init__()
        self.proj = nn.Linear(mask_dim, mask_dim, bias=False)
        nn.init.zeros_(self.proj.weight)  # the query starts as without the switch

    def forward(self, window: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        pooled = torch.einsum("mhw,mdhw->md", window.detach().to(features.dtype), features)  # (M, mask_dim)
        return self.proj(pooled.to(self.proj.weight.dtype))


__all__ = ["LOOK_SOURCES", "MASK_WINDOWS", "TargetLook", "box_window", "core_window", "mask_window"]
