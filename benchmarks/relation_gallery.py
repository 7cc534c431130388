"""What a ladder model's relation masks get wrong: chose the wrong candidate, or drew the right one badly.

``python -m benchmarks.grounding --rungs relation ... --save-model runs/x/models`` keeps a run's final model;
``python -m benchmarks.relation_gallery runs/x/models/relation-own-seed0`` then scores its teacher-forced masks on
the rung's validation scenes ("the triangle left of the blue square") and sorts each sample by what its mask is:

- *found*: IoU >= 0.5 with the target;
- *other candidate*: IoU >= 0.5 with another object of the target's description (the relation was not followed);
- *anchor*: IoU >= 0.5 with the anchor ("the blue square");
- *spread*: it holds half of the target and half of another object;
- *partly*: it holds half of the target but is too large or too small for IoU 0.5;
- *elsewhere*, *empty*: the rest.

On this rung every other candidate lies on the far side of the anchor (the generator asks only such relations), so
the target is always the candidate furthest in the relation's direction: choosing it needs the candidates' places,
not only the words. The tool prints the shares, the cIoU and the outcomes by relation word, by the words naming
the target, by the number of candidates and by how far the nearest wrong candidate is from the target; where the
model has a box head (``seg_box_weight``) also how often the predicted box's centre lies nearest the target among
the candidates. Where the pixels go wrong: target pixels missed and predicted pixels on the anchor, the other
candidates, other objects and the background (shares of the union), and the cIoU where the target stands alone
against where another object touches or hides part of it. It draws the failing samples: the scene with target
(and anchor), then the mask.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.grounding import teacher_forced_masks
from benchmarks.ladder import RUNGS, rung_samples
from benchmarks.list_gallery import gallery_arguments, save_failures
from pixelsail.data.shapes_scene import COLOR_NAMES, RELATIONS, SHAPES, SIZES, Scene, ShapeObject
from pixelsail.data.shapes_language import matches
from pixelsail.metrics import LisaMaskMetric, intersection_union, sample_iou

OUTCOMES = ("found", "other candidate", "anchor", "spread", "partly", "elsewhere", "empty")


@dataclass
class RelationParts:
    relation: str
    target: ShapeObject
    anchor: ShapeObject
    others: list[ShapeObject]     # the target's description also fits these (the wrong choices)
    target_words: str             # "shape", "colour + shape", ...


def _attrs(words: list[str]) -> dict[str, str]:
    out = {}
    for w in words:
        if w in SIZES:
            out["size"] = w
        elif w in COLOR_NAMES:
            out["color"] = w
        elif w in SHAPES:
            out["shape"] = w
    return out


def relation_parts(expression: str, scene: Scene, target_index: int) -> RelationParts:
    """Read "the small triangle left of the blue square" against its scene (the generator's wording)."""
    text = expression.removeprefix("Please segment ").rstrip(".")
    for rel in RELATIONS:
        head, sep, tail = text.partition(f" {rel} the ")
        if sep:
            break
    else:
        raise ValueError(f"no relation word in {expression!r}")
    want, where = _attrs(head.split()), _attrs(tail.split())
    vis = scene.visible_objects
    anchors = [o for o in vis if matches(o, where)]
    if len(anchors) != 1:
        raise ValueError(f"the anchor of {expression!r} is not unique in its scene ({len(anchors)} match)")
    target = next(o for o in vis if o.index == target_index)
    others = [o for o in vis if o is not target and o is not anchors[0] and matches(o, want)]
    names = {"size": "size", "color": "colour", "shape": "shape"}
    words = " + ".join(names[k] for k in ("size", "color", "shape") if k in want)
    return RelationParts(rel, target, anchors[0], others, words)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return sample_iou(*intersection_union(a, b))


def relation_outcome(pred: np.ndarray, parts: RelationParts) -> str:
    """One of :data:`OUTCOMES` for a (H, W) bool mask (see the module's docstring)."""
    if not pred.any():
        return "empty"
    if _iou(pred, parts.target.mask) >= 0.5:
        return "found"
    if any(_iou(pred, o.mask) >= 0.5 for o in parts.others):
        return "other candidate"
    if _iou(pred, parts.anchor.mask) >= 0.5:
        return "anchor"

    def holds(o: ShapeObject) -> bool:
        return np.count_nonzero(pred & o.mask) >= 0.5 * np.count_nonzero(o.mask)

    if holds(parts.target):
        others = parts.others + [parts.anchor]
        return "spread" if any(holds(o) for o in others) else "partly"
    return "elsewhere"


PIXEL_LOSSES = ("target missed", "on the anchor", "on other candidates", "on other objects", "on the background")


def pixel_losses(pred: np.ndarray, parts: RelationParts, scene: Scene) -> np.ndarray:
    """Counts (6,): the union of mask and target, then its :data:`PIXEL_LOSSES` (target pixels the mask misses,
    predicted pixels on the anchor, on the other candidates, on the remaining objects, on the background)."""
    target, anchor = parts.target.mask, parts.anchor.mask
    others = np.zeros_like(target)
    for o in parts.others:
        others |= o.mask
    objects = np.zeros_like(target)
    for o in scene.visible_objects:
        objects |= o.mask
    extra = pred & ~target
    return np.array([np.count_nonzero(pred | target), np.count_nonzero(target & ~pred),
                     np.count_nonzero(extra & anchor), np.count_nonzero(extra & others & ~anchor),
                     np.count_nonzero(extra & objects & ~anchor & ~others), np.count_nonzero(extra & ~objects)])


def target_touched(target_object: ShapeObject, scene: Scene) -> bool:
    """Whether another object hides part of the target or borders it (4-neighbours): where a mask must stop at an
    edge between two objects rather than at the background."""
    target = target_object.mask
    if np.count_nonzero(target_object.full_mask & ~target):
        return True
    grown = target.copy()
    grown[1:] |= target[:-1]
    grown[:-1] |= target[1:]
    grown[:, 1:] |= target[:, :-1]
    grown[:, :-1] |= target[:, 1:]
    return any(np.count_nonzero(grown & o.mask) for o in scene.visible_objects if o is not target_object)


def nearest_gap(parts: RelationParts) -> float:
    """Distance (share of the image) between the target's and the nearest wrong candidate's centroids along the
    relation's axis; inf without a wrong candidate."""
    axis = 0 if parts.relation in ("left of", "right of") else 1
    size = parts.target.mask.shape[1 - axis]
    gaps = [abs(parts.target.centroid[axis] - o.centroid[axis]) / size for o in parts.others]
    return min(gaps, default=float("inf"))


def gap_bin(gap: float) -> str:
    return "< 0.2" if gap < 0.2 else "0.2-0.4" if gap < 0.4 else ">= 0.4"


def box_picks_target(box: torch.Tensor, parts: RelationParts) -> bool:
    """Whether the predicted box's centre is nearer the target's centroid than any wrong candidate's."""
    h, w = parts.target.mask.shape
    centre = np.array([float(box[0]) * w, float(box[1]) * h])

    def dist(o: ShapeObject) -> float:
        return float(np.hypot(*(np.array(o.centroid) - centre)))

    return all(dist(parts.target) < dist(o) for o in parts.others)


def draw(rows: list[tuple], path: Path, per_row: int = 4) -> None:
    from pixelsail.viz import image_grid, overlay_masks

    panels, captions = [], []
    for sample, pred, parts, outcome in rows:
        panels.append(overlay_masks(sample.image, [parts.target.mask, parts.anchor.mask]))
        captions.append(sample.turns[0][0].removeprefix("Please segment ")[:38])
        panels.append(overlay_masks(sample.image, [pred]))
        captions.append(outcome)
    image_grid(panels, captions, ncols=2 * per_row).save(path)


def _table(name: str, counts: Counter, keys) -> None:
    for key in keys:
        n = sum(counts[(key, o)] for o in OUTCOMES)
        if n:
            shares = ", ".join(f"{o} {100 * counts[(key, o)] / n:.0f}" for o in OUTCOMES if counts[(key, o)])
            print(f"  {name} {key}: {n} samples; % {shares}")


def main(argv: list[str] | None = None) -> None:
    args = gallery_arguments(__doc__, "samples", argv)
    from pixelsail.model import PixelSail

    model = PixelSail.from_pretrained(args.model)
    samples = rung_samples(RUNGS["relation"], "val", args.samples, args.image_size, keep_scene=True)
    outcomes, by_rel, by_words, by_count, by_gap = Counter(), Counter(), Counter(), Counter(), Counter()
    box_right, box_n, metric, failing = 0, 0, LisaMaskMetric(), []
    losses, touched = np.zeros(6, dtype=np.int64), {True: LisaMaskMetric(), False: LisaMaskMetric()}
    for sample, pred, box in teacher_forced_masks(model, samples, with_boxes=True):
        if len(pred) != 1:
            raise SystemExit(f"{len(pred)} masks for one target: not a teacher-forced relation sample")
        parts = relation_parts(sample.turns[0][0], sample.meta["scene"], sample.meta["target_index"][0])
        got = relation_outcome(pred[0], parts)
        metric.update([pred[0]], [sample.masks[0]], pred[0].shape)
        touched[target_touched(parts.target, sample.meta["scene"])].update([pred[0]], [sample.masks[0]], pred[0].shape)
        losses += pixel_losses(pred[0], parts, sample.meta["scene"])
        outcomes[got] += 1
        by_rel[(parts.relation, got)] += 1
        by_words[(parts.target_words, got)] += 1
        by_count[(min(len(parts.others) + 1, 4), got)] += 1
        by_gap[(gap_bin(nearest_gap(parts)), got)] += 1
        if box is not None:
            box_n += 1
            box_right += box_picks_target(box[0], parts)
        if got != "found":
            failing.append((sample, pred[0], parts, got))
    n = sum(outcomes.values())
    print(f"{n} relation samples, cIoU {metric.compute()['cIoU (LISA)']:.1f} %; outcomes: "
          + ", ".join(f"{o} {100 * outcomes[o] / n:.1f} %" for o in OUTCOMES))
    print("  of the union of masks and targets: "
          + ", ".join(f"{name} {100 * c / max(losses[0], 1):.1f} %" for name, c in zip(PIXEL_LOSSES, losses[1:])))
    for key, name in ((False, "alone"), (True, "touched or partly hidden by another object")):
        if touched[key].count:
            print(f"  target {name}: {touched[key].count} samples, cIoU {touched[key].compute()['cIoU (LISA)']:.1f} %")
    _table("relation", by_rel, RELATIONS)
    _table("target named by", by_words, sorted({k for k, _ in by_words}))
    _table("candidates", by_count, (2, 3, 4))
    _table("nearest wrong candidate's gap", by_gap, ("< 0.2", "0.2-0.4", ">= 0.4"))
    if box_n:
        print(f"  the box head's centre is nearest the target in {100 * box_right / box_n:.1f} % of samples")
    save_failures(failing, args, draw, ".relations.png", "samples not found", "every target found: nothing to draw")


if __name__ == "__main__":
    main()
