"""Grounded-conversation masks scored per object, as GLaMM's GCG evaluation pairs them.

The LISA cIoU of the union of all predicted masks (our GCG row under ``standard``) rewards masking every object:
a GCG answer names every object anyway. GLaMM's evaluation (``eval/gcg/evaluate.py`` in mbzuai-oryx/groundingLMM)
pairs predicted and ground-truth masks one to one instead: repeatedly take the pair with the highest IoU and remove
both, while that IoU is above zero. Per image:

* ``mIoU (GLaMM)``: the mean IoU of the paired masks (0 when nothing pairs); averaged over images. As in GLaMM,
  unpaired masks on either side do not lower it.
* ``mask recall@0.5``: paired masks with IoU >= 0.5 over all ground-truth masks, pooled over images. GLaMM's recall
  also requires the phrase before each mask to match the ground truth's by BERT similarity >= 0.5; that part needs a
  BERT model and is left out here, so the key says "mask".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pixelsail.metrics import Summable

GLAMM_MIOU_KEY = "mIoU (GLaMM)"
MASK_RECALL_KEY = "mask recall@0.5 (GLaMM pairing)"
RECALL_IOU = 0.5


def iou_matrix(pred: Sequence[np.ndarray], gt: Sequence[np.ndarray]) -> np.ndarray:
    """(P, G) IoU of every predicted mask against every ground-truth mask (an empty pair scores 0)."""
    if not len(pred) or not len(gt):
        return np.zeros((len(pred), len(gt)))
    p = np.stack([np.asarray(m, dtype=bool).ravel() for m in pred]).astype(np.float64)   # (P, HW)
    g = np.stack([np.asarray(m, dtype=bool).ravel() for m in gt]).astype(np.float64)     # (G, HW)
    inter = p @ g.T
    union = p.sum(1)[:, None] + g.sum(1)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def greedy_pairs(ious: np.ndarray) -> list[float]:
    """IoUs of the one-to-one pairs taken best first while the best remaining IoU is above zero."""
    ious = ious.copy()
    paired = []
    while ious.size and ious.max() > 0:
        i, j = np.unravel_index(int(np.argmax(ious)), ious.shape)
        paired.append(float(ious[i, j]))
        ious[i, :] = 0.0
        ious[:, j] = 0.0
    return paired


@dataclass
class GcgMaskMetric(Summable):
    miou_sum: float = 0.0
    images: int = 0
    recalled: int = 0
    gt_masks: int = 0

    def update(self, pred: Sequence[np.ndarray], gt: Sequence[np.ndarray]) -> float:
        """Add one image; returns its mIoU (GLaMM)."""
        paired = greedy_pairs(iou_matrix(pred, gt))
        miou = float(np.mean(paired)) if paired else 0.0
        self.miou_sum += miou
        self.images += 1
        self.recalled += sum(v >= RECALL_IOU for v in paired)
        self.gt_masks += len(gt)
        return miou

    def compute(self) -> dict[str, float]:
        return {GLAMM_MIOU_KEY: 100.0 * self.miou_sum / self.images if self.images else float("nan"),
                MASK_RECALL_KEY: 100.0 * self.recalled / self.gt_masks if self.gt_masks else float("nan")}


__all__ = ["GLAMM_MIOU_KEY", "GcgMaskMetric", "MASK_RECALL_KEY", "greedy_pairs", "iou_matrix"]
