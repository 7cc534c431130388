"""Where a multi-target list loses its objects: a ladder model's masks on the multi-target rung, counted and drawn.

``python -m benchmarks.grounding --rungs multi ... --save-model runs/x/models`` keeps a run's final model;
``python -m benchmarks.list_gallery runs/x/models/multi-own-seed0 --out runs/x/lists.png`` then scores its
teacher-forced masks on the rung's validation scenes and sorts every target the list did not find (IoU < 0.5 with
the mask the one-to-one assignment gave it) by what covered it instead:

- *shared*: a mask holds at least half of it and of another target too (one mask spread over several objects);
- *partly*: a mask holds at least half of it, but that mask is too large or too small for IoU 0.5;
- *missed*: no mask holds half of it.

It prints those shares, where the union of the list's masks misses or adds pixels (the union cIoU's losses), how
often the lists fail by the number of targets and by the words that name them ("all red objects": colour; "all
large objects": size; ...), and draws the failing lists: the scene with its
targets, then each ``[SEG]``'s mask in its own colour.
"""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np

from benchmarks.grounding import teacher_forced_masks
from benchmarks.ladder import RUNGS, list_outcomes, list_overlaps, rung_samples

COVERS = ("found", "shared", "partly", "missed")


def target_covers(pred: np.ndarray, targets: list[np.ndarray], found_iou: float = 0.5) -> list[str]:
    """Per target, one of :data:`COVERS` (``pred`` (k, H, W) bool; see the module's docstring)."""
    _, found, holds = list_overlaps(pred, targets, found_iou)   # holds (k, n): mask k holds half of target n
    spread = holds.sum(1) >= 2                                                # (k,) masks over two targets or more
    out = []
    for n in range(len(targets)):
        if found[n]:
            out.append("found")
        elif (holds[:, n] & spread).any():
            out.append("shared")
        elif holds[:, n].any():
            out.append("partly")
        else:
            out.append("missed")
    return out


UNION_LOSSES = ("missed, in targets mostly covered", "missed, whole targets", "extra on other objects",
                "extra on the background")


def union_losses(pred: np.ndarray, targets: list[np.ndarray], objects: np.ndarray) -> np.ndarray:
    """Where the list's union misses or adds pixels, counts (5,): the union of prediction and targets, then the
    :data:`UNION_LOSSES` (target pixels no mask covers, in targets whose masks cover at least half of them or less;
    predicted pixels on non-target objects, on the background). ``objects`` (H, W): every visible object."""
    truth = np.any(np.stack(targets), 0)
    mine = pred.any(0) if len(pred) else np.zeros_like(truth)
    missed = truth & ~mine
    mostly = np.zeros_like(truth)
    for t in targets:
        if (mine & t).sum() >= 0.5 * t.sum():
            mostly |= t
    extra = mine & ~truth
    return np.array([(mine | truth).sum(), (missed & mostly).sum(), (missed & ~mostly).sum(),
                     (extra & objects).sum(), (extra & ~objects).sum()], dtype=np.int64)


def named_by(question: str) -> str:
    """Which attribute words a multi-target question uses ("colour", "colour + shape", ...), from the vocabulary."""
    from pixelsail.data.shapes_scene import COLOR_NAMES, SHAPES, SIZES

    words = set(question.lower().rstrip(".").split())
    plural = {w.rstrip("s") for w in words} | words
    kinds = [name for name, vocab in (("size", SIZES), ("colour", COLOR_NAMES), ("shape", SHAPES))
             if plural & {v.lower() for v in vocab}]
    return " + ".join(kinds) or "other"


def draw(rows: list[tuple], path: Path, per_row: int = 4) -> None:
    from pixelsail.viz import image_grid, overlay_masks

    panels, captions = [], []
    for sample, pred, covers in rows:
        panels.append(overlay_masks(sample.image, list(sample.masks)))
        captions.append(sample.turns[0][0].removeprefix("Please segment ")[:38])
        panels.append(overlay_masks(sample.image, list(pred)))
        captions.append(" ".join(c[0] for c in covers) + f" | {len(pred)} masks")
    image_grid(panels, captions, ncols=2 * per_row).save(path)


def gallery_arguments(doc: str, what: str, argv: list[str] | None) -> argparse.Namespace:
    """The command line a ladder-model gallery takes (``what``: "lists", "samples", what it draws)."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("model", help="a model directory saved by benchmarks.grounding --save-model")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--samples", type=int, default=256, help="validation scenes (the ladder's own, in its order)")
    ap.add_argument("--draw", type=int, default=16, help=f"failing {what} drawn")
    ap.add_argument("--out", default=None, help=f"PNG of the failing {what} (default: beside the model)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = gallery_arguments(__doc__, "lists", argv)
    from pixelsail.model import PixelSail

    model = PixelSail.from_pretrained(args.model)
    samples = [s for s in rung_samples(RUNGS["multi"], "val", args.samples, args.image_size) if len(s.masks) >= 2]
    if not samples:
        raise SystemExit("no validation scene with two targets or more: nothing to look at")
    covers, outcomes, failing = Counter(), np.zeros(6, dtype=np.int64), []
    losses = np.zeros(5, dtype=np.int64)
    by_count, by_words = Counter(), Counter()
    for sample, pred in teacher_forced_masks(model, samples):
        if len(pred) != len(sample.masks):
            raise SystemExit(f"{len(pred)} masks for {len(sample.masks)} targets: not a teacher-forced list")
        got = target_covers(pred, list(sample.masks))
        covers.update(got)
        outcomes += list_outcomes(pred, list(sample.masks))
        losses += union_losses(pred, list(sample.masks), sample.meta["all_objects"])
        failed = any(c != "found" for c in got)
        by_count[(len(sample.masks), failed)] += 1
        by_words[(named_by(sample.turns[0][0]), failed)] += 1
        if failed:
            failing.append((sample, pred, got))
    total = sum(covers.values())
    shares = ", ".join(f"{k} {100 * covers[k] / total:.1f} %" for k in COVERS)
    print(f"{len(samples)} lists, {total} targets: {shares}")
    where = ", ".join(f"{name} {100 * c / losses[0]:.1f} %" for name, c in zip(UNION_LOSSES, losses[1:]))
    print(f"  of the union of masks and targets: {where}")
    for name, table in (("targets", by_count), ("named by", by_words)):
        for key in sorted({k for k, _ in table}):
            n = table[(key, True)] + table[(key, False)]
            print(f"  {name} {key}: {n} lists, {100 * table[(key, True)] / n:.0f} % with a target not found")
    save_failures(failing, args, draw, ".lists.png", "lists with a target not found",
                  "every target of every list found: nothing to draw")


def save_failures(failing: list, args: argparse.Namespace, draw_rows, suffix: str, what: str, none: str) -> None:
    """Draw the first ``args.draw`` of ``failing`` with ``draw_rows`` to ``args.out`` (default: the model's path
    with ``suffix``) and say so, or print ``none``."""
    if not failing:
        print(none)
        return
    out = Path(args.out) if args.out else Path(args.model).with_suffix(suffix)
    draw_rows(failing[:args.draw], out)
    print(f"{len(failing)} {what}; the first {min(args.draw, len(failing))} drawn: {out}")


if __name__ == "__main__":
    main()
