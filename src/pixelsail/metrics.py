"""Evaluation metrics computed exactly as the field computes them.

Two mask conventions exist and give different numbers on the same predictions, so every result key names its
convention:

* ``lisa`` — the LISA lineage (LISA, GLaMM, PixelLM, OMG-LLaVA, Sa2VA, Pixel-SAIL's code). Per sample, the
  foreground intersection ``I`` and union ``U`` of the (union of the) predicted masks and the (union of the) target
  masks. cIoU = ΣI / (ΣU + 1e-10); gIoU = mean of I / (U + 1e-5), where U = 0 (empty on empty) scores 1.0.
* ``rela`` — gRefCOCO's canonical evaluator (ReLA): an explicit "no target" decision per sample, N-acc / T-acc,
  Pr@{0.7, 0.8, 0.9} over targeted samples.

Accumulators hold only sums, so they merge by addition and all-reduce with one ``torch.distributed`` SUM.
All reported values are percentages (as in the paper's tables) except counts and the multiple-choice accuracy,
which PerBench reports as a fraction (0.74).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Iterable, Sequence

import numpy as np

from pixelsail.tokens import NO_TARGET_ANSWER, TURN_END

LISA_PRECISION_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
RELA_PRECISION_THRESHOLDS = (0.7, 0.8, 0.9)
CIOU_EPS = 1e-10
# Java METEOR 1.5 after the PTB tokenizer, as COCOEvalCap runs it (PerBench's own script used NLTK's METEOR:
# pixelsail.metrics_authors)
METEOR_KEY = "METEOR (COCOEvalCap)"
GIOU_EPS = 1e-5


# ---------------------------------------------------------------------------------------------------------------
# per-sample overlap


def union_mask(masks: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """The pixel-wise OR of ``masks`` (an all-False mask of ``shape`` when there are none)."""
    out = np.zeros(shape, dtype=bool)
    for m in masks:
        if m.shape != shape:
            raise ValueError(f"mask of shape {m.shape} does not match the image {shape}")
        out |= m.astype(bool)
    return out


def intersection_union(pred: np.ndarray, target: np.ndarray) -> tuple[int, int]:
    """Foreground intersection and union (pixel counts) of two boolean masks of the same shape."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and target {target.shape} differ in shape")
    pred = pred.astype(bool)
    target = target.astype(bool)
    return int(np.logical_and(pred, target).sum()), int(np.logical_or(pred, target).sum())


def sample_iou(intersection: int, union: int) -> float:
    """Exact per-sample IoU used for precision thresholds; an empty prediction on an empty target is 1.0."""
    return 1.0 if union == 0 else intersection / union


# ---------------------------------------------------------------------------------------------------------------
# accumulators


class Summable:
    """A dataclass of numbers whose fields are sums: merge by addition, all-reduce with one SUM."""

    def merge(self, other: "Summable") -> "Summable":
        if type(other) is not type(self):
            raise TypeError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        for f in fields(self):  # type: ignore[arg-type]
            a, b = getattr(self, f.name), getattr(other, f.name)
            setattr(self, f.name, [x + y for x, y in zip(a, b)] if isinstance(a, list) else a + b)
        return self

    def _flat(self) -> list[float]:
        out: list[float] = []
        for f in fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            out.extend(v if isinstance(v, list) else [v])
        return out

    def _unflat(self, values: list[float]) -> None:
        i = 0
        for f in fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            kind = int if isinstance(v, int) or (isinstance(v, list) and v and isinstance(v[0], int)) else float
            if isinstance(v, list):
                setattr(self, f.name, [kind(x) for x in values[i:i + len(v)]])
                i += len(v)
            else:
                setattr(self, f.name, kind(values[i]))
                i += 1

    def all_reduce(self) -> "Summable":
        """Sum this accumulator over all ranks (no-op when torch.distributed is not initialised)."""
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        t = torch.tensor(self._flat(), dtype=torch.float64)
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        self._unflat(t.cpu().tolist())
        return self


@dataclass
class LisaMaskMetric(Summable):
    """cIoU / gIoU / precision@{0.5..0.9} in the LISA convention.

    ``update`` takes the predicted masks and target masks of one sample (lists, unioned); a model that emitted no
    ``[SEG]`` passes an empty list, i.e. an all-zero mask.
    """

    intersection: int = 0
    union: int = 0
    iou_sum: float = 0.0
    count: int = 0
    hits: list[int] = field(default_factory=lambda: [0] * len(LISA_PRECISION_THRESHOLDS))

    def update(self, pred_masks: Sequence[np.ndarray], target_masks: Sequence[np.ndarray],
               shape: tuple[int, int]) -> tuple[int, int]:
        i, u = intersection_union(union_mask(pred_masks, shape), union_mask(target_masks, shape))
        self.add(i, u)
        return i, u

    def add(self, intersection: int, union: int) -> None:
        self.intersection += intersection
        self.union += union
        self.iou_sum += 1.0 if union == 0 else intersection / (union + GIOU_EPS)
        self.count += 1
        exact = sample_iou(intersection, union)
        for j, t in enumerate(LISA_PRECISION_THRESHOLDS):
            self.hits[j] += int(exact >= t)

    def compute(self) -> dict[str, float]:
        n = max(self.count, 1)
        out = {"cIoU (LISA)": 100.0 * self.intersection / (self.union + CIOU_EPS),
               "gIoU (LISA)": 100.0 * self.iou_sum / n}
        for t, h in zip(LISA_PRECISION_THRESHOLDS, self.hits):
            out[f"Pr@{t:.1f} (LISA)"] = 100.0 * h / n
        out["samples"] = self.count
        return out


@dataclass
class RelaMaskMetric(Summable):
    """gRefCOCO canonical (ReLA) convention: explicit no-target decisions, N-acc, T-acc, Pr@{0.7,0.8,0.9}.

    ``pred_no_target`` is the model's decision (see :func:`predicted_no_target`). As in ReLA's evaluator, a
    "no target" decision on a sample that has targets sets its intersection to 0 but keeps its union
    (prediction ∪ target: a mask the model drew anyway still counts), and on a no-target sample adds nothing.
    """

    intersection: int = 0
    union: int = 0
    iou_sum: float = 0.0
    count: int = 0
    no_target_total: int = 0       # samples whose ground truth has no target
    no_target_correct: int = 0     # ... and the model said "no target"
    target_total: int = 0          # samples with at least one target
    target_kept: int = 0           # ... and the model did not say "no target"
    hits: list[int] = field(default_factory=lambda: [0] * len(RELA_PRECISION_THRESHOLDS))

    def update(self, pred_masks: Sequence[np.ndarray], pred_no_target: bool, target_masks: Sequence[np.ndarray],
               shape: tuple[int, int]) -> tuple[int, int]:
        target = union_mask(target_masks, shape)
        i, u = intersection_union(union_mask(pred_masks, shape), target)
        if pred_no_target:
            i = 0
        self.add(i, u, pred_no_target=pred_no_target, target_empty=not target.any())
        return i, u

    def add(self, intersection: int, union: int, *, pred_no_target: bool, target_empty: bool) -> None:
        self.count += 1
        if target_empty:
            self.no_target_total += 1
            if pred_no_target:
                self.no_target_correct += 1
                self.iou_sum += 1.0
            else:
                self.union += union  # the false mask's area; nothing to intersect with
            return
        self.target_total += 1
        self.target_kept += int(not pred_no_target)
        if pred_no_target:
            intersection = 0
        iou = 0.0 if union == 0 else intersection / union
        self.intersection += intersection
        self.union += union
        self.iou_sum += iou
        for j, t in enumerate(RELA_PRECISION_THRESHOLDS):
            self.hits[j] += int(iou >= t)

    def compute(self) -> dict[str, float]:
        out = {"cIoU (ReLA)": 100.0 * self.intersection / self.union if self.union else 0.0,
               "gIoU (ReLA)": 100.0 * self.iou_sum / max(self.count, 1),
               "N-acc (ReLA)": 100.0 * self.no_target_correct / self.no_target_total if self.no_target_total
               else float("nan"),
               "T-acc (ReLA)": 100.0 * self.target_kept / self.target_total if self.target_total else float("nan")}
        for t, h in zip(RELA_PRECISION_THRESHOLDS, self.hits):
            out[f"Pr@{t:.1f} (ReLA)"] = 100.0 * h / self.target_total if self.target_total else float("nan")
        out["samples"] = self.count
        return out


def predicted_no_target(text: str, pred_masks: Sequence[np.ndarray]) -> bool:
    """The model's explicit "no target" decision: it answered the no-target phrase, or gave no non-empty mask."""
    if NO_TARGET_ANSWER.rstrip(".").lower() in text.lower():
        return True
    return not any(m.any() for m in pred_masks)


# ---------------------------------------------------------------------------------------------------------------
# multiple choice


def mcq_correct(answer: str, output: str) -> bool:
    """PerBench's rule: the answer string (stripped) occurs in the model's output."""
    answer = answer.strip()
    if not answer:
        raise ValueError("multiple-choice ground truth answer is empty")
    return answer in output


# the row that labels a multiple-choice accuracy whose answers were restricted to the options (model.option_decoding;
# the paper's answers are free generation, and its tables have no such row)
RESTRICTED_KEY = "answers restricted to the options"


# the row that labels mask answers whose "No target." the masks overruled (model.no_target_check; inference only, not
# in the paper)
RECHECKED_KEY = "'No target.' overruled by the masks"


@dataclass
class RecheckCount(Summable):
    count: int = 0   # answers of "No target." asked again as "Sure, [SEG]" whose masks found something

    def compute(self) -> dict[str, float]:
        return {RECHECKED_KEY: self.count} if self.count else {}


@dataclass
class McqMetric(Summable):
    correct: int = 0
    count: int = 0
    restricted: int = 0   # answers decoded under the options constraint

    def update(self, answer: str, output: str, restricted: bool = False) -> bool:
        ok = mcq_correct(answer, output)
        self.correct += int(ok)
        self.count += 1
        self.restricted += int(restricted)
        return ok

    def compute(self) -> dict[str, float]:
        out = {"MCQ acc (PerBench)": self.correct / self.count if self.count else float("nan")}
        if self.restricted:
            out[RESTRICTED_KEY] = self.restricted
        return {**out, "samples": self.count}


# ---------------------------------------------------------------------------------------------------------------
# captions


_VP_PREFIX_RE = re.compile(r"^\s*(<vp_\d+>\s*:?\s*)+")
_SPECIAL_RE = re.compile(r"<vp_\d+>|\[SEG\]|</?p>|" + re.escape(TURN_END))


def clean_caption(text: str) -> str:
    """A caption as scored: without the leading ``<vp_k>:`` and without special tokens."""
    text = _VP_PREFIX_RE.sub("", text)
    return " ".join(_SPECIAL_RE.sub(" ", text).split())


@dataclass
class CaptionMetric:
    """Collects (prediction, references) pairs; scores them with COCOEvalCap (pycocoevalcap).

    METEOR here is the Java METEOR 1.5 of COCOEvalCap after its PTB tokenizer (the RefCOCOg region-caption
    convention), with the prediction in the candidate slot and the ground truth in the reference slot.
    """

    predictions: dict[str, str] = field(default_factory=dict)
    references: dict[str, list[str]] = field(default_factory=dict)

    def update(self, key: str, prediction: str, references: Iterable[str]) -> None:
        if key in self.predictions:
            raise ValueError(f"caption sample {key!r} added twice")
        refs = [clean_caption(r) for r in references]
        if not refs:
            raise ValueError(f"caption sample {key!r} has no reference caption")
        self.predictions[key] = clean_caption(prediction)
        self.references[key] = refs

    def merge(self, other: "CaptionMetric") -> "CaptionMetric":
        for k, p in other.predictions.items():
            self.update(k, p, other.references[k])
        return self

    def all_reduce(self) -> "CaptionMetric":
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        parts: list = [None] * dist.get_world_size()
        dist.all_gather_object(parts, (self.predictions, self.references))
        merged = CaptionMetric()
        for preds, refs in parts:
            for k, p in preds.items():
                merged.predictions[k] = p
                merged.references[k] = refs[k]
        self.predictions, self.references = merged.predictions, merged.references
        return self

    def compute(self) -> dict[str, float]:
        if not self.predictions:
            return {"samples": 0}
        scores = coco_caption_scores(self.predictions, self.references)
        named = {METEOR_KEY if k == "METEOR" else k: 100.0 * v for k, v in scores.items()}
        return {**named, "samples": len(self.predictions)}


def caption_scorer_problem() -> str | None:
    """What the caption metrics lack on this machine (pycocoevalcap, Java), in one line; None when nothing."""
    import importlib.util
    import shutil

    if importlib.util.find_spec("pycocoevalcap") is None:
        return "caption metrics need pycocoevalcap: pip install 'pixelsail[captions]'"
    if shutil.which("java") is None:
        return "caption metrics need Java (the PTB tokenizer and METEOR 1.5 are Java programs)"
    return None


def coco_tokenize(predictions: dict[str, list[str]], references: dict[str, list[str]]
                  ) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """COCOEvalCap's PTB tokenisation of predictions and references in one Java run: ``(res, gts)``.

    Needs ``pycocoevalcap`` (``pip install pixelsail[captions]``) and Java.
    """
    problem = caption_scorer_problem()
    if problem:
        raise RuntimeError(problem)
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    keys = sorted(predictions)
    missing = [k for k in keys if k not in references]
    if missing:
        raise ValueError(f"no reference captions for sample(s) {missing[:5]}")
    # one tokenizer run (one JVM start) for predictions and references; the tokenizer works line by line
    both = PTBTokenizer().tokenize({**{("res", k): [{"caption": c} for c in predictions[k]] for k in keys},
                                    **{("gts", k): [{"caption": r} for r in references[k]] for k in keys}})
    return {k: both[("res", k)] for k in keys}, {k: both[("gts", k)] for k in keys}


def coco_caption_scores(predictions: dict[str, str], references: dict[str, list[str]],
                        metrics: Sequence[str] = ("BLEU", "METEOR", "CIDEr")) -> dict[str, float]:
    """COCOEvalCap scores (fractions in [0, 1]; CIDEr can exceed 1) after its PTB tokenizer."""
    res, gts = coco_tokenize({k: [p] for k, p in predictions.items()}, references)
    out: dict[str, float] = {}
    if "BLEU" in metrics:
        from pycocoevalcap.bleu.bleu import Bleu

        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        out.update({f"BLEU-{n + 1}": float(b) for n, b in enumerate(bleu)})
    if "METEOR" in metrics:
        from pycocoevalcap.meteor.meteor import Meteor

        scorer = Meteor()
        out["METEOR"] = float(scorer.compute_score(gts, res)[0])
        del scorer  # its __del__ stops the Java process
    if "CIDEr" in metrics:
        from pycocoevalcap.cider.cider import Cider

        out["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    return out


# ---------------------------------------------------------------------------------------------------------------
# PerBench


def perbench_overall(meteor: float, mcq_accuracy: float, ciou: float, giou: float) -> float:
    """PerBench overall = mean(METEOR, accuracy × 100, (cIoU + gIoU) / 2); METEOR/cIoU/gIoU in percent."""
    return (meteor + 100.0 * mcq_accuracy + (ciou + giou) / 2.0) / 3.0

