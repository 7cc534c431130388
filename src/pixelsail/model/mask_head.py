"""[SEG] queries, dot-product mask logits, and the point-sampled BCE + Dice loss (Mask2Former style)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SegQuery(nn.Module):
    """[SEG] hidden state -> mask query of width ``mask_dim``.

    With ``standardize`` the hidden states are first standardised per channel, as BatchNorm does (statistics of
    the batch's [SEG] states while training, running ones otherwise). Why: in a model trained from scratch the
    final [SEG] state is one large vector shared by every expression plus a small expression-specific part, and
    the MLP learns from that part only once it is brought to unit scale (docs/TRAINING.md has the measurements).
    Off, this is the paper's plain MLP.
    """

    def __init__(self, *, hidden_size: int, mask_dim: int, standardize: bool = False):
        super().__init__()
        self.norm = nn.BatchNorm1d(hidden_size, affine=False) if standardize else None
        self.mlp = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, mask_dim))

    def forward(self, seg_hidden: torch.Tensor) -> torch.Tensor:
        """seg_hidden (M, hidden) -> (M, mask_dim)."""
        if self.norm is not None:
            norm = self.norm
            batch_stats = self.training and torch.is_grad_enabled() and seg_hidden.shape[0] > 1
            seg_hidden = F.batch_norm(seg_hidden.float(), norm.running_mean, norm.running_var, training=batch_stats,
                                      momentum=norm.momentum, eps=norm.eps).to(seg_hidden.dtype)
        return self.mlp(seg_hidden)


def mask_logits(queries: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """queries (M, D) . features (M, D, h, w) -> logits (M, h, w)."""
    return torch.einsum("md,mdhw->mhw", queries, features)


MASK_THRESHOLD = 0.5  # a pixel belongs to the mask where its probability exceeds this


def mask_probabilities(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """logits (M, h, w) -> probabilities (M, H, W) at the image size (bilinear on the logits, then sigmoid)."""
    return F.interpolate(logits[:, None], size=size, mode="bilinear", align_corners=False)[:, 0].sigmoid()


def point_sample(maps: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear values of maps (M, h, w) at normalised points coords (M, P, 2) in [0, 1] (x, y) -> (M, P)."""
    grid = coords[:, :, None, :] * 2.0 - 1.0  # (M, P, 1, 2)
    return F.grid_sample(maps[:, None], grid, mode="bilinear", align_corners=False)[:, 0, :, 0]


def importance_points(logits: torch.Tensor, num_points: int, oversample: float, importance: float,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Points where the prediction is least certain (|logit| small), mixed with uniform ones. -> (M, P, 2)."""
    m = logits.shape[0]
    n_over = max(num_points, int(num_points * oversample))
    cand = torch.rand(m, n_over, 2, device=logits.device, generator=generator)
    with torch.no_grad():
        uncertainty = -point_sample(logits.detach().float(), cand).abs()
    n_imp = int(importance * num_points)
    top = uncertainty.topk(n_imp, dim=1).indices
    chosen = cand.gather(1, top[..., None].expand(-1, -1, 2))
    rand = torch.rand(m, num_points - n_imp, 2, device=logits.device, generator=generator)
    return torch.cat([chosen, rand], dim=1)


def mask_losses(logits: torch.Tensor, targets: torch.Tensor, *, num_points: int, oversample: float,
                importance: float, num_masks: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Sigmoid BCE and Dice on importance-sampled points, each summed over masks and divided by ``num_masks``.

    logits (M, h, w) at feature resolution; targets (M, H, W) {0, 1} at image resolution. Points are in normalised
    image coordinates, so prediction and target are compared at the same place whatever their resolutions.
    """
    logits = logits.float()
    coords = importance_points(logits, num_points, oversample, importance)
    pred = point_sample(logits, coords)
    with torch.no_grad():
        gt = point_sample(targets.float(), coords)
    bce = F.binary_cross_entropy_with_logits(pred, gt, reduction="none").mean(dim=1).sum() / num_masks
    prob = pred.sigmoid()
    dice = 1.0 - (2.0 * (prob * gt).sum(1) + 1.0) / (prob.sum(1) + gt.sum(1) + 1.0)
    return bce, dice.sum() / num_masks
