"""What a shapes-world evaluation's overall numbers hide: multiple choice, referring and visual-text masks, split up.

    python -m benchmarks.shapes_breakdown runs/eval/predictions.jsonl     # a `pixelsail eval --task shapes` file

* multiple choice per question kind (colour, shape, larger, side): the letter right (PerBench's score), the option's
  word right, and the letter right among the answers whose word is right (the look-up from word to letter);
* open visual-prompt questions per kind (colour, shape, size, what, where; "absent" for a tag with no region,
  answered "<vp_k> is not in the image."): the answer exactly right;
* referring cIoU per expression group (``benchmarks.res_breakdown``'s: the attributes named, or "relation" for
  "the circle left of the blue star");
* visual-text referral ("the object with the same colour as <vp_3>"): the share of the predicted pixels that lie on
  the target, on the marked object itself, and elsewhere (the scene is regenerated from the record's metadata).
"""
from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

from benchmarks.res_breakdown import generated_records
from pixelsail.data.shapes_scene import generate_scene
from pixelsail.metrics import union_mask
from pixelsail.scoring import record_masks


def mcq_by_kind(records: list[dict]) -> dict[str, dict[str, float]]:
    """Per question kind (and "all"): samples, letter, word and letter-given-word accuracies (0-1)."""
    counts: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0, 0, 0])
    for r in records:
        if r.get("task") != "vp_mcq":
            continue
        meta = r["meta"]
        letter, word = meta["answer"] in r["text"], meta["correct"] in r["text"]
        for key in (meta.get("question_kind", "?"), "all"):
            c = counts[key]
            c[0] += 1
            c[1] += letter
            c[2] += word
            c[3] += letter and word
    return {k: {"samples": n, "letter": lt / n, "word": w / n, "letter given word": lw / w if w else float("nan")}
            for k, (n, lt, w, lw) in counts.items()}


def vp_qa_by_kind(records: list[dict]) -> dict[str, dict[str, float]]:
    """Per question kind (and "all"; "absent" for a prompt tag with no region): samples and exact answers (0-1)."""
    counts: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for r in records:
        if r.get("task") != "vp_qa":
            continue
        absent = r["meta"].get("absent_prompt") is not None
        right = r["text"].strip() == r["answer"].strip()
        for key in ("absent" if absent else r["meta"].get("question_kind", "?"), "all"):
            counts[key][0] += 1
            counts[key][1] += right
    return {k: {"samples": n, "exact": e / n} for k, (n, e) in counts.items()}


def vt_pixel_split(records: list[dict]) -> dict[str, float]:
    """Percent of the visual-text referrals' predicted pixels on the target / the marked object / elsewhere."""
    on: collections.Counter = collections.Counter()
    for r in records:
        if r.get("task") != "vt_res":
            continue
        meta = r["meta"]
        hw = (int(r["image_hw"][0]), int(r["image_hw"][1]))
        pred = union_mask(record_masks(r, "pred_masks"), hw)
        scene = generate_scene(meta["split"], meta["index"], meta["seed"], hw[0], meta.get("attempt", 0))
        by_index = {o.index: o for o in scene.objects}
        target = union_mask([by_index[i].mask for i in meta["target_ids"]], hw)
        marked = union_mask([by_index[i].mask for i in meta["prompt_objects"].values()], hw) & ~target
        on["target"] += int((pred & target).sum())
        on["marked"] += int((pred & marked).sum())
        on["elsewhere"] += int((pred & ~target & ~marked).sum())
        on["records"] += 1
    total = on["target"] + on["marked"] + on["elsewhere"]
    if not on["records"]:
        return {}
    return {"records": on["records"], "predicted pixels": total,
            **{k: 100.0 * on[k] / total if total else float("nan") for k in ("target", "marked", "elsewhere")}}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("predictions", type=Path)
    args = ap.parse_args(argv)
    if not args.predictions.is_file():
        raise SystemExit(f"error: {args.predictions} is not a file")
    records = [json.loads(line) for line in args.predictions.read_text().splitlines() if line.strip()]
    mcq, res, vt = mcq_by_kind(records), generated_records(records), vt_pixel_split(records)
    vp_qa = vp_qa_by_kind(records)
    if not (mcq or vp_qa or res or vt):
        raise SystemExit(f"error: {args.predictions} has no vp_mcq, vp_qa, res or vt_res records")
    for kind, m in sorted(mcq.items()):
        print(f"multiple choice {kind:7s} {m['samples']:4d}: letter {m['letter']:.3f}, word {m['word']:.3f}, "
              f"letter given word {m['letter given word']:.3f}")
    for kind, m in sorted(vp_qa.items()):
        print(f"visual-prompt question {kind:6s} {m['samples']:4d}: exact {m['exact']:.3f}")
    for group, m in sorted(res.items()):
        print(f"referring {group:18s} {m['n']:4d}: cIoU {m['cIoU']:.1f}, {m['empty']} empty")
    if vt:
        print(f"visual-text referral, {vt['records']} records, predicted pixels: on the target {vt['target']:.1f} %, "
              f"on the marked object {vt['marked']:.1f} %, elsewhere {vt['elsewhere']:.1f} %")


if __name__ == "__main__":
    main()
