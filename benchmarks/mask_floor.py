"""What a minimum mask area (``model.mask_min_area``) would change, re-scored from saved predictions.

    python -m benchmarks.mask_floor runs/eval/predictions.jsonl --floors 0 16 25 32 64     # floors in pixels

The floor is applied after the masks are drawn (a mask with fewer pixels comes back empty), so re-scoring a
`pixelsail eval` predictions file gives exactly what evaluating with the floor in the model config gives. Printed per
floor: referring cIoU, multi-target cIoU, N-acc and T-acc (ReLA), visual-text cIoU and the grounded conversations'
cIoU, all from :func:`pixelsail.evaluate.score_records`; and the share of no-target questions whose answer writes
"No target." in words (which no floor changes).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import numpy as np

from pixelsail.data.export import mask_to_rle
from pixelsail.evaluate import read_jsonl, score_records
from pixelsail.scoring import record_masks

MASK_TASKS = ("res", "gres", "vt_res", "gcg")


def with_floor(records: Sequence[dict], floor_px: float) -> list[dict]:
    """The records with every predicted mask of fewer than ``floor_px`` pixels replaced by an empty one."""
    out = []
    for r in records:
        masks = [np.zeros_like(m) if m.sum() < floor_px else m for m in record_masks(r, "pred_masks")]
        out.append({**r, "pred_masks": [mask_to_rle(m) for m in masks]})
    return out


def floor_table(records: Sequence[dict], floors: Sequence[float]) -> list[dict[str, float]]:
    """One row per floor (pixels): the mask metrics of the re-scored records."""
    masked = [r for r in records if r["task"] in MASK_TASKS]
    rows = []
    for floor in floors:
        res = score_records(with_floor(masked, floor), captions=False).results
        gres = res.get("gres", {})
        rows.append({"floor_px": float(floor), "res_ciou": res.get("res", {}).get("cIoU (LISA)", np.nan),
                     "gres_ciou": gres.get("cIoU (ReLA)", np.nan), "n_acc": gres.get("N-acc (ReLA)", np.nan),
                     "t_acc": gres.get("T-acc (ReLA)", np.nan),
                     "vt_res_ciou": res.get("vt_res", {}).get("cIoU (LISA)", np.nan),
                     "gcg_ciou": res.get("gcg", {}).get("cIoU (LISA)", np.nan)})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("predictions", type=Path, help="a `pixelsail eval` predictions.jsonl")
    ap.add_argument("--floors", type=float, nargs="+", default=[0, 16, 25, 32, 64, 100], help="floors in pixels")
    args = ap.parse_args(argv)
    try:
        records = read_jsonl(args.predictions)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    if not any(r.get("task") in MASK_TASKS for r in records):
        raise SystemExit(f"error: {args.predictions} has no mask predictions ({', '.join(MASK_TASKS)})")
    absent = [r for r in records if r.get("task") == "gres" and r.get("meta", {}).get("no_target")]
    if absent:
        said = sum("no target" in r["text"].lower() for r in absent)
        print(f"no-target questions: {len(absent)}, answered 'No target.' in words: {said} ({100 * said / len(absent):.1f} %)")
    print("floor px | referring cIoU | multi-target cIoU | N-acc | T-acc | visual-text cIoU | GCG cIoU")
    for row in floor_table(records, args.floors):
        print(f"{row['floor_px']:8.0f} | {row['res_ciou']:14.2f} | {row['gres_ciou']:17.2f} | {row['n_acc']:5.2f} | "
              f"{row['t_acc']:5.2f} | {row['vt_res_ciou']:16.2f} | {row['gcg_ciou']:8.2f}")


if __name__ == "__main__":
    main()
