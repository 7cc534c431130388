"""Where referring masks fail: a trained model's shapes-world referring segmentation, by what the expression names.

    python -m benchmarks.res_breakdown --model runs/shapes-tiny/model                       # 400 test expressions
    python -m benchmarks.res_breakdown --model M --predictions runs/eval/predictions.jsonl  # + generated masks

Expressions are grouped by kind: the attributes they name (colour, shape, size and their combinations) or a
relation ("the circle left of the blue star"). Per group, teacher-forced (the answer "Sure, [SEG]." given):

* ``ranked first``: share of expressions whose target gets the highest mean mask probability among the scene's
  visible objects - does the query point at the right object at all, whatever the threshold;
* ``p(target)`` / ``p(best other)``: mean mask probability inside the target / inside the most probable other
  object; masks come out empty when both stay under the 0.5 threshold;
* ``chance``: the share a query that picks a visible object at random would rank first.

With ``--predictions`` (a ``pixelsail eval --task shapes`` file) it adds the generated masks' cIoU and the number
of empty masks per group, over the ``res`` records of that file.
"""
from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import numpy as np
import torch

from benchmarks.grounding import _encode, _hidden, _queries
from pixelsail.data.shapes import COLOR_NAMES, SHAPES, SIZES, generate_scene, make_sample
from pixelsail.model.mask_head import mask_logits, mask_probabilities

_ATTRIBUTE_WORDS = (("size", SIZES), ("colour", COLOR_NAMES), ("shape", SHAPES))


def expression_group(expression: str, kind: str) -> str:
    """"relation", or the attributes an attribute expression names joined by "+" ("size+colour", "shape")."""
    if kind != "attribute":
        return kind
    words = set(expression.replace(",", " ").split())
    named = [name for name, vocabulary in _ATTRIBUTE_WORDS if words & set(vocabulary)]
    return "+".join(named) or "none"


def object_scores(probs: np.ndarray, object_masks: dict[int, np.ndarray], target: int) -> dict[str, float]:
    """Mean probability inside each object -> whether ``target`` ranks first, its score and the best other's."""
    means = {k: float(probs[m].mean()) for k, m in object_masks.items() if m.any()}
    others = [v for k, v in means.items() if k != target]
    best_other = max(others) if others else 0.0
    return {"ranked_first": float(means[target] > best_other), "p_target": means[target], "p_other": best_other,
            "chance": 1.0 / len(means)}


@torch.no_grad()
def teacher_forced(model, split: str, count: int, batch_size: int = 32) -> dict[str, list[dict[str, float]]]:
    """Per expression group, :func:`object_scores` of the first ``count`` single-target ``res`` samples."""
    model.eval()
    samples = [make_sample(split, i, "res") for i in range(count)]
    samples = [s for s in samples if len(s.meta["target_ids"]) == 1]
    groups: dict[str, list[dict[str, float]]] = collections.defaultdict(list)
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        batch = _encode(model, chunk)
        hidden, features, text_start = _hidden(model, batch)
        for i, (s, q) in enumerate(zip(chunk, _queries(model, None, batch, chunk, hidden, text_start, features))):
            h, w = s.image.shape[:2]
            probs = mask_probabilities(mask_logits(q, features[i][None].expand(q.shape[0], -1, -1, -1)), (h, w))
            scene = generate_scene(split, s.meta["index"], s.meta["seed"], h, s.meta["attempt"])
            masks = {o.index: o.mask for o in scene.visible_objects}
            group = expression_group(s.meta["expression"], s.meta["expression_kind"])
            groups[group].append(object_scores(probs[0].numpy(), masks, s.meta["target_ids"][0]))
    return dict(groups)


def generated(predictions: Path) -> dict[str, dict[str, float]]:
    """Per expression group, cIoU (percent) and empty masks of the generated ``res`` masks in a predictions file."""
    return generated_records([json.loads(line) for line in predictions.read_text().splitlines() if line.strip()])


def generated_records(records: list[dict]) -> dict[str, dict[str, float]]:
    """:func:`generated` over prediction records already read."""
    from pycocotools import mask as mask_utils

    acc: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0, 0, 0])
    for r in records:
        if r.get("task") != "res" or not r["gt_masks"]:
            continue
        gt = mask_utils.decode(r["gt_masks"][0]).astype(bool)
        pred = np.zeros_like(gt)
        for rle in r["pred_masks"]:
            pred |= mask_utils.decode(rle).astype(bool)
        a = acc[expression_group(r["meta"]["expression"], r["meta"]["expression_kind"])]
        a[0] += float((gt & pred).sum())
        a[1] += float((gt | pred).sum())
        a[2] += 1
        a[3] += int(not pred.any())
    return {g: {"n": a[2], "cIoU": 100.0 * a[0] / max(a[1], 1.0), "empty": a[3]} for g, a in acc.items()}


def table(tf: dict[str, list[dict[str, float]]], gen: dict[str, dict[str, float]] | None = None) -> str:
    head = "| expression names | n | ranked first | chance | p(target) | p(best other) |"
    rule = "|---|---:|---:|---:|---:|---:|"
    if gen is not None:
        head += " generated: n / cIoU / empty |"
        rule += "---:|"
    lines = [head, rule]
    for group in sorted(set(tf) | set(gen or {})):
        rows = tf.get(group, [])
        mean = {k: float(np.mean([r[k] for r in rows])) if rows else float("nan") for k in
                ("ranked_first", "chance", "p_target", "p_other")}
        line = (f"| {group} | {len(rows)} | {100 * mean['ranked_first']:.1f} % | {100 * mean['chance']:.1f} % | "
                f"{mean['p_target']:.2f} | {mean['p_other']:.2f} |")
        if gen is not None:
            g = gen.get(group)
            line += f" {g['n']} / {g['cIoU']:.1f} / {g['empty']} |" if g else " - |"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from pixelsail.model.pixelsail import PixelSail

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a trained shapes model directory")
    p.add_argument("--split", default="test")
    p.add_argument("--count", type=int, default=400, help="referring samples to score teacher-forced")
    p.add_argument("--predictions", type=Path, help="a pixelsail eval predictions.jsonl (adds generated masks)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.predictions is not None and not args.predictions.is_file():
        p.error(f"--predictions {args.predictions}: no such file")
    torch.set_num_threads(args.threads)
    model = PixelSail.from_pretrained(args.model)
    tf = teacher_forced(model, args.split, args.count)
    print(table(tf, generated(args.predictions) if args.predictions is not None else None))


if __name__ == "__main__":
    main()
