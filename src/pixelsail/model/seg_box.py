"""Each ``[SEG]`` state also predicts its target's box (not in the paper; ``seg_box_weight > 0``).

The relation rung ("the triangle left of the blue square") learns only once the mask loss reaches the ``[SEG]``
state, and then slowly (about 70 % after 72,000 samples; docs/TRAINING.md, sessions 24-29): the state must carry
where the target is, and the mask loss says so only through a dot product with per-pixel features. A box loss
says it directly, as MDETR and the referring detectors train their queries: a small head reads the ``[SEG]`` state
and predicts the target's centre and size, scored by L1 plus generalised IoU (DETR's box loss). The targets are
the boxes of the masks the data already give (a sample without an object, "No target.", has no box and no loss).
The head is used in training only, unless ``seg_query_look: box`` places by its box the window the query reads its
target's look from (model/target_look.py). The loss reaches the ``[SEG]`` state even with ``seg_query_stop_grad``
(it is the state this signal is for), and with ``mask_set_matching`` each ``[SEG]`` of a list is scored against
the target its mask was matched to. Measured on the ladder (docs/TRAINING.md, session 30): relation learns earlier on
two seeds but ends level (72.0 / 72.3 at 72,000); multi-target with ``mask_image_skip`` 81.4 / 80.6 at its allowance.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SegBoxHead(nn.Module):
    """(M, hidden) ``[SEG]`` states -> (M, 4) boxes (centre x, centre y, width, height), each in [0, 1] of the image."""

    def __init__(self, *, hidden_size: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)
        self.mlp = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, 4))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm(states)).float().sigmoid()


def mask_boxes(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, H, W) masks -> ((M, 4) boxes (cx, cy, w, h) as shares of the image, (M,) whether the mask has a pixel).
    A box spans whole pixels: a mask of the single pixel (row 0, column 0) of a 4 x 4 image is (0.125, 0.125,
    0.25, 0.25). Empty masks get a zero box."""
    m = masks.bool()
    h, w = m.shape[-2:]
    rows, cols = m.any(dim=2), m.any(dim=1)                                   # (M, H), (M, W)
    present = rows.any(dim=1)

    def span(hit: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.arange(size, device=hit.device)
        first = torch.where(hit, idx, size).amin(dim=1)
        last = torch.where(hit, idx, -1).amax(dim=1) + 1
        return first.float() / size, last.float() / size

    x0, x1 = span(cols, w)
    y0, y1 = span(rows, h)
    boxes = torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=1)
    return torch.where(present[:, None], boxes, torch.zeros_like(boxes)), present


def _corners(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def generalized_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Generalised IoU of matching rows of (N, 4) (cx, cy, w, h) boxes: IoU minus the share of the smallest
    enclosing box that neither covers (Rezatofighi et al. 2019); 1 for equal boxes, towards -1 far apart."""
    a, b = _corners(a), _corners(b)
    lo, hi = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (hi - lo).clamp(min=0).prod(dim=1)
    area_a, area_b = (a[:, 2:] - a[:, :2]).prod(dim=1), (b[:, 2:] - b[:, :2]).prod(dim=1)
    union = area_a + area_b - inter
    hull = (torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])).prod(dim=1)
    eps = 1e-7
    return inter / (union + eps) - (hull - union) / (hull + eps)


def seg_box_loss(predicted: torch.Tensor, masks: list[torch.Tensor], assigned: torch.Tensor) -> torch.Tensor:
    """L1 + (1 - generalised IoU) of (M, 4) predicted boxes against the boxes of their targets: query j's target
    is row ``assigned[j]`` of the samples' (n_i, H_i, W_i) ``masks`` stacked in order (images may differ in size).
    Averaged over the targets that have a pixel; zero, still attached to the graph, when none has."""
    boxes, present = zip(*(mask_boxes(m.to(predicted.device)) for m in masks))
    target, present = torch.cat(boxes)[assigned], torch.cat(present)[assigned]
    if not bool(present.any()):
        return predicted.sum() * 0.0
    p, t = predicted[present], target[present]
    l1 = F.l1_loss(p, t, reduction="none").sum(dim=1)
    return (l1 + 1.0 - generalized_iou(p, t)).mean()


__all__ = ["SegBoxHead", "mask_boxes", "generalized_iou", "seg_box_loss"]
