"""Prediction records -> metric values per task, under a named convention.

The same predictions give different numbers under the field's conventions and under the Pixel-SAIL authors' own
scripts, so a score is always computed under one named convention (every metric key also names its rule):

* ``standard`` — the field's conventions (:mod:`pixelsail.metrics`): LISA-lineage cIoU / gIoU on the union of all
  predicted masks (no mask: an all-zero one), ReLA's gRefCOCO evaluator, COCOEvalCap captions (Java METEOR 1.5
  after PTB tokenisation, ground truth as the reference); grounded conversation also per object, with GLaMM's
  one-to-one pairing (:mod:`pixelsail.metrics_gcg`).
* ``authors`` — the authors' released scripts (:mod:`pixelsail.metrics_authors`): the first predicted mask only
  for RES / gRES, V-T RES with unpredicted samples left out of cIoU, PerBench descriptions by NLTK METEOR / BLEU
  and CIDEr with the prediction as the reference. Tasks their scripts do not score (GCG, open QA) get no row.

docs/EVALUATION.md explains both with numbers.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from pixelsail.data.annotations import decode_segmentation
from pixelsail.metrics import (METEOR_KEY, CaptionMetric, LisaMaskMetric, McqMetric, RecheckCount,
                               RelaMaskMetric, perbench_overall, predicted_no_target, sample_iou)
from pixelsail.metrics_authors import (NLTK_METEOR_KEY, VTRES_CIOU_KEY, VTRES_GIOU_KEY, AuthorsCaptionMetric,
                                       AuthorsVtresMetric, first_mask_keys)
from pixelsail.metrics_gcg import GcgMaskMetric

MASK_TASKS = ("res", "gres", "vt_res", "gcg")
TEXT_TASKS = ("region_caption", "vp_qa", "vqa", "gcg")
MCQ_KEY = "MCQ acc (PerBench)"
STANDARD = "standard"
AUTHORS = "authors"
CONVENTIONS = {
    STANDARD: "the field's conventions: LISA cIoU/gIoU on the union of predicted masks, ReLA's gRefCOCO "
              "evaluator, COCOEvalCap captions (Java METEOR 1.5 after PTB tokenisation)",
    AUTHORS: "the Pixel-SAIL authors' scripts: first predicted mask only (RES/gRES), V-T RES without unpredicted "
             "samples in cIoU, PerBench descriptions by NLTK METEOR/BLEU and CIDEr with the prediction as the "
             "reference",
}
# (caption, cIoU, gIoU) keys that PerBench's overall score is made of, per convention
PERBENCH_PARTS = {STANDARD: (METEOR_KEY, "cIoU (LISA)", "gIoU (LISA)"),
                  AUTHORS: (NLTK_METEOR_KEY, VTRES_CIOU_KEY, VTRES_GIOU_KEY)}


def check_convention(name: str) -> str:
    if name not in CONVENTIONS:
        raise ValueError(f"unknown scoring convention {name!r}; expected one of {', '.join(CONVENTIONS)}")
    return name


@dataclass
class Scores:
    """Metric values per task group, and a per-record quality in [0, 1] (for the gallery)."""

    results: dict[str, dict[str, float]] = field(default_factory=dict)
    per_record: dict[int, float] = field(default_factory=dict)
    convention: str = STANDARD


def record_masks(record: dict, key: str) -> list[np.ndarray]:
    """The masks of a prediction record's ``key`` (``pred_masks`` / ``gt_masks``), decoded."""
    h, w = (int(v) for v in record["image_hw"])
    return [decode_segmentation(r, h, w, f"prediction record {record['index']} {key}[{j}]")
            for j, r in enumerate(record[key])]


def _shape(record: dict) -> tuple[int, int]:
    return int(record["image_hw"][0]), int(record["image_hw"][1])


def _mcq_answer(record: dict) -> str:
    return record.get("meta", {}).get("answer", record["answer"])


def _references(record: dict) -> list[str]:
    return record.get("meta", {}).get("references") or [record["answer"]]


class _Scorer:
    """Accumulators per task under one convention; :meth:`add` takes one record and returns its quality."""

    caption_metric: type[CaptionMetric] = CaptionMetric
    caption_tasks: tuple[str, ...] = TEXT_TASKS

    def __init__(self) -> None:
        self.mcq: dict[str, McqMetric] = defaultdict(McqMetric)
        self.text: dict[str, CaptionMetric] = defaultdict(self.caption_metric)
        self.rechecked: dict[str, RecheckCount] = defaultdict(RecheckCount)

    def sources(self) -> list[dict[str, Any]]:
        """Per-task accumulators (anything with ``compute()``), in the order their rows are listed."""
        return [self.mcq, self.text, self.rechecked]

    def add_masks(self, record: dict) -> float | None:
        raise NotImplementedError

    def add(self, record: dict, captions: bool) -> float | None:
        task, quality = record["task"], self.add_masks(record)
        if task == "vp_mcq":
            quality = float(self.mcq[task].update(_mcq_answer(record), record["text"],
                                                   record.get("decoding") == "options"))
        if task in self.caption_tasks and captions:
            self.text[task].update(str(record["index"]), record["text"], _references(record))
        if record.get("rechecked"):
            self.rechecked[task].count += 1
        return quality


class _StandardScorer(_Scorer):
    def __init__(self) -> None:
        super().__init__()
        self.lisa: dict[str, LisaMaskMetric] = defaultdict(LisaMaskMetric)
        self.rela: dict[str, RelaMaskMetric] = defaultdict(RelaMaskMetric)
        self.gcg: dict[str, GcgMaskMetric] = defaultdict(GcgMaskMetric)

    def sources(self) -> list[dict[str, Any]]:
        return [self.lisa, self.rela, self.gcg] + super().sources()

    def add_masks(self, record: dict) -> float | None:
        task = record["task"]
        if task not in MASK_TASKS:
            return None
        pred, gt = record_masks(record, "pred_masks"), record_masks(record, "gt_masks")
        if task == "gres":
            self.rela[task].update(pred, predicted_no_target(record["text"], pred), gt, _shape(record))
        if task == "gcg":  # each object's mask, paired one to one (the union below rewards masking everything)
            self.gcg[task].update(pred, gt)
        return sample_iou(*self.lisa[task].update(pred, gt, _shape(record)))


class _AuthorsScorer(_Scorer):
    caption_metric = AuthorsCaptionMetric
    caption_tasks = ("region_caption",)

    def __init__(self) -> None:
        super().__init__()
        self.first: dict[str, LisaMaskMetric] = defaultdict(LisaMaskMetric)
        self.vtres: dict[str, AuthorsVtresMetric] = defaultdict(AuthorsVtresMetric)

    def sources(self) -> list[dict[str, Any]]:
        return [{t: _FirstMaskRow(m) for t, m in self.first.items()}, self.vtres] + super().sources()

    def add_masks(self, record: dict) -> float | None:
        task = record["task"]
        if task not in ("res", "gres", "vt_res"):
            return None
        pred, gt = record_masks(record, "pred_masks"), record_masks(record, "gt_masks")
        if task == "vt_res":
            order = record.get("meta", {}).get("authors_targets") or list(range(len(gt)))
            return self.vtres[task].update(pred, [gt[j] for j in order])
        return sample_iou(*self.first[task].update(pred[:1], gt, _shape(record)))


@dataclass
class _FirstMaskRow:
    metric: LisaMaskMetric

    def compute(self) -> dict[str, float]:
        return first_mask_keys(self.metric.compute())


def score_records(records: Sequence[dict], *, captions: bool = True, convention: str = STANDARD) -> Scores:
    """Score prediction records (see :func:`pixelsail.evaluate.predict_sample`) per task under ``convention``.

    ``captions=False`` skips the caption metrics (Java, and NLTK under ``authors``) of text tasks.
    """
    scorer = _AuthorsScorer() if check_convention(convention) == AUTHORS else _StandardScorer()
    per_record: dict[int, float] = {}
    for r in records:
        quality = scorer.add(r, captions)
        if quality is not None:
            per_record[int(r["index"])] = quality
    results: dict[str, dict[str, float]] = {}
    for task in sorted({r["task"] for r in records}):
        row: dict[str, float] = {}
        for source in scorer.sources():
            if task in source:  # records are already gathered from all ranks: no all-reduce here
                row.update(source[task].compute())
        if row:  # a text task scored with captions=False has no metric
            results[task] = row
    overall = perbench_row(results, convention)
    if overall is not None:
        results["perbench"] = overall
    return Scores(results, per_record, convention)


def perbench_row(results: dict[str, dict[str, float]], convention: str = STANDARD) -> dict[str, float] | None:
    """PerBench's overall score when all three of its tasks were scored (and the captions were)."""
    caption_key, ciou_key, giou_key = PERBENCH_PARTS[check_convention(convention)]
    cap, choice, vt = results.get("region_caption", {}), results.get("vp_mcq", {}), results.get("vt_res", {})
    if caption_key not in cap or MCQ_KEY not in choice or ciou_key not in vt:
        return None
    row = {caption_key: cap[caption_key], MCQ_KEY: choice[MCQ_KEY], ciou_key: vt[ciou_key], giou_key: vt[giou_key]}
    row["Overall (PerBench)"] = perbench_overall(row[caption_key], row[MCQ_KEY], row[ciou_key], row[giou_key])
    return row
