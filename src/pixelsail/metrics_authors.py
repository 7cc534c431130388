"""The Pixel-SAIL authors' own scoring rules (their released scripts: sa2va_eval/projects/ST/eval in the Sa2VA
repository), where they differ from the field's conventions in :mod:`pixelsail.metrics`.

* PerBench detailed descriptions (``metrics_cider_meteor.py``): per sample NLTK's METEOR and NLTK's sentence BLEU
  (cumulative 4-gram, no smoothing) on whitespace tokens, averaged over samples, and CIDEr (pycocoevalcap after the
  PTB tokenizer). All three put the *prediction in the reference slot* and the ground truth in the hypothesis
  slot; METEOR is not symmetric in them, so the swap changes the number. Reproduced here as they do it.
* PerBench V-T RES (``stbench_vres_eval.py``): the first predicted mask against the first target mask; a sample
  with no predicted mask (even after the "It is [SEG]." retry) adds nothing to ΣI and ΣU but counts, with IoU 0,
  in gIoU, whose denominator is the number of target masks.
* RES / gRES: the first predicted mask only, scored like the LISA convention (see :class:`LisaMaskMetric`).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pixelsail.metrics import (CIOU_EPS, GIOU_EPS, CaptionMetric, Summable, coco_tokenize, intersection_union,
                               sample_iou)

NLTK_METEOR_KEY = "METEOR (NLTK, swapped)"
NLTK_BLEU_KEY = "BLEU-4 (NLTK, swapped)"
SWAPPED_CIDER_KEY = "CIDEr (swapped)"
VTRES_CIOU_KEY = "cIoU (authors, V-T RES)"
VTRES_GIOU_KEY = "gIoU (authors, V-T RES)"


def nltk_meteor_bleu(predictions: dict[str, str], references: dict[str, str], *, swapped: bool = True
                     ) -> dict[str, float]:
    """Mean NLTK METEOR and sentence BLEU over samples, on whitespace tokens (fractions in [0, 1]).

    ``swapped=True`` is the authors' order: ``meteor_score([prediction], ground_truth)``. ``swapped=False`` is the
    usual order (ground truth as the reference), for comparison.
    """
    try:
        from nltk.translate.bleu_score import sentence_bleu
        from nltk.translate.meteor_score import meteor_score
    except ImportError as e:  # pragma: no cover - nltk is a dependency
        raise RuntimeError("the authors' PerBench caption scores need nltk: pip install nltk") from e
    from pixelsail.wordnet import ensure_wordnet

    ensure_wordnet()
    keys = sorted(predictions)
    if not keys:
        raise ValueError("no captions to score")
    meteor, bleu = [], []
    for k in keys:
        pred, gt = predictions[k].split(), references[k].split()
        ref, hyp = (pred, gt) if swapped else (gt, pred)
        meteor.append(meteor_score([ref], hyp))
        with warnings.catch_warnings():  # NLTK warns when a sentence has no 4-gram overlap (its BLEU is 0)
            warnings.simplefilter("ignore")
            bleu.append(float(sentence_bleu([ref], hyp)))
    return {"METEOR": float(np.mean(meteor)), "BLEU": float(np.mean(bleu))}


def swapped_cider(predictions: dict[str, str], references: dict[str, str]) -> float:
    """pycocoevalcap CIDEr after the PTB tokenizer with the predictions in the ground-truth slot (the authors')."""
    from pycocoevalcap.cider.cider import Cider

    keys = sorted(predictions)
    preds, gts = coco_tokenize({k: [predictions[k]] for k in keys}, {k: [references[k]] for k in keys})
    return float(Cider().compute_score(preds, gts)[0])


class AuthorsCaptionMetric(CaptionMetric):
    """PerBench descriptions scored as the authors' script does (one ground truth per sample: the first given)."""

    def compute(self) -> dict[str, float]:
        if not self.predictions:
            return {"samples": 0}
        gts = {k: refs[0] for k, refs in self.references.items()}
        scores = nltk_meteor_bleu(self.predictions, gts)
        return {NLTK_METEOR_KEY: 100.0 * scores["METEOR"], NLTK_BLEU_KEY: 100.0 * scores["BLEU"],
                SWAPPED_CIDER_KEY: 100.0 * swapped_cider(self.predictions, gts), "samples": len(self.predictions)}


@dataclass
class AuthorsVtresMetric(Summable):
    """cIoU / gIoU of V-T RES as the authors' PerBench script computes them (see the module docstring)."""

    intersection: int = 0
    union: int = 0
    iou_sum: float = 0.0
    target_count: int = 0      # gIoU's denominator: target masks, not samples
    count: int = 0
    unpredicted: int = 0       # samples without a predicted mask: left out of ΣI and ΣU

    def update(self, pred_masks: Sequence[np.ndarray], target_masks: Sequence[np.ndarray],
               target_count: int | None = None) -> float:
        """Score one sample; returns its IoU (0 when nothing was predicted).

        ``target_count``: how many target masks the authors' script stacks for this sample (default: all given).
        """
        if not target_masks:
            raise ValueError("a V-T RES sample needs at least one target mask")
        self.count += 1
        self.target_count += len(target_masks) if target_count is None else target_count
        if not pred_masks:
            self.unpredicted += 1
            return 0.0
        i, u = intersection_union(pred_masks[0], target_masks[0])
        self.intersection += i
        self.union += u
        self.iou_sum += 1.0 if u == 0 else i / (u + GIOU_EPS)
        return sample_iou(i, u)

    def compute(self) -> dict[str, float]:
        return {VTRES_CIOU_KEY: 100.0 * self.intersection / (self.union + CIOU_EPS),
                VTRES_GIOU_KEY: 100.0 * self.iou_sum / max(self.target_count, 1),
                "unpredicted": self.unpredicted, "samples": self.count}


def first_mask_keys(row: dict[str, float]) -> dict[str, float]:
    """A :class:`LisaMaskMetric` row fed first masks only, as the authors' RES script reports it: cIoU and gIoU."""
    return {"cIoU (authors, first mask)": row["cIoU (LISA)"], "gIoU (authors, first mask)": row["gIoU (LISA)"],
            "samples": row["samples"]}
