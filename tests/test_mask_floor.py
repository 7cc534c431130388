"""benchmarks.mask_floor: re-scoring saved predictions with a minimum mask area equals the model's own floor."""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks.mask_floor import floor_table, with_floor
from pixelsail.data.export import mask_to_rle
from pixelsail.scoring import record_masks


def _box(y0, y1, x0, x1):
    m = np.zeros((16, 16), bool)
    m[y0:y1, x0:x1] = True
    return m


def _record(index, task, pred, gt, **meta):
    return {"index": index, "task": task, "image_hw": [16, 16], "text": "Sure, [SEG].", "answer": "Sure, [SEG].",
            "question": "q", "pred_masks": [mask_to_rle(m) for m in pred], "gt_masks": [mask_to_rle(m) for m in gt],
            "meta": meta}


def test_masks_under_the_floor_come_back_empty_and_the_metrics_follow():
    target = _box(0, 4, 0, 4)                                      # 16 px
    records = [
        _record(0, "res", [target], [target]),
        _record(1, "gres", [target], [target], no_target=False),
        _record(2, "gres", [_box(10, 12, 10, 13)], [], no_target=True),   # 6 stray pixels where nothing matches
    ]
    kept = with_floor(records, 6)
    assert [int(m.sum()) for r in kept for m in record_masks(r, "pred_masks")] == [16, 16, 6]
    emptied = with_floor(records, 7)
    assert [int(m.sum()) for r in emptied for m in record_masks(r, "pred_masks")] == [16, 16, 0]
    none, floor7, floor17 = floor_table(records, [0, 7, 17])
    assert (none["n_acc"], floor7["n_acc"]) == (0.0, 100.0)          # the stray pixels counted as "found"
    assert none["res_ciou"] == floor7["res_ciou"] == pytest.approx(100.0) and none["t_acc"] == 100.0
    assert floor17["res_ciou"] == 0.0 and floor17["t_acc"] == 0.0    # a floor above the object loses it
