"""Metric values against cases computed by hand."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from pixelsail.metrics import (CaptionMetric, LisaMaskMetric, McqMetric, RelaMaskMetric, clean_caption,
                               coco_caption_scores, mcq_correct, perbench_overall, predicted_no_target)

SHAPE = (4, 5)


def mask(*pixels: tuple[int, int]) -> np.ndarray:
    m = np.zeros(SHAPE, dtype=bool)
    for r, c in pixels:
        m[r, c] = True
    return m


def row(r: int, n: int, start: int = 0) -> np.ndarray:
    return mask(*[(r, c) for c in range(start, start + n)])


def test_ciou_of_a_split_is_not_the_mean_of_sample_ious():
    m = LisaMaskMetric()
    # sample 1: pred row0[0:4], target row0[2:5]+row1[0:1] -> I = 2, U = 4 + 4 - 2 = 6
    assert m.update([row(0, 4)], [row(0, 3, start=2) | row(1, 1)], SHAPE) == (2, 6)
    # sample 2: exact 10-pixel match -> I = U = 10
    assert m.update([row(2, 5) | row(3, 5)], [row(2, 5) | row(3, 5)], SHAPE) == (10, 10)
    out = m.compute()
    assert out["cIoU (LISA)"] == pytest.approx(100 * 12 / 16)                          # 75.0
    assert out["gIoU (LISA)"] == pytest.approx(100 * (2 / (6 + 1e-5) + 10 / (10 + 1e-5)) / 2)  # 66.67
    assert out["cIoU (LISA)"] - out["gIoU (LISA)"] > 8
    assert out["Pr@0.5 (LISA)"] == 50.0 and out["Pr@0.9 (LISA)"] == 50.0
    assert out["samples"] == 2


def test_empty_prediction_on_empty_target_scores_one_and_adds_nothing():
    m = LisaMaskMetric()
    m.update([], [], SHAPE)                       # no [SEG] emitted, no target: U = 0 -> gIoU 1
    out = m.compute()
    assert out["gIoU (LISA)"] == 100.0
    assert out["cIoU (LISA)"] == 0.0              # 0 / (0 + 1e-10)
    assert out["Pr@0.9 (LISA)"] == 100.0
    m.update([], [row(0, 5)], SHAPE)              # no [SEG] on a real target: all-zero mask, IoU 0
    out = m.compute()
    assert out["gIoU (LISA)"] == 50.0 and out["cIoU (LISA)"] == pytest.approx(0.0)
    m.update([row(1, 2)], [], SHAPE)              # a mask where there is nothing: I = 0, U = 2
    assert m.compute()["gIoU (LISA)"] == pytest.approx(100 / 3)
    assert (m.intersection, m.union) == (0, 7)


def test_multi_mask_answers_are_unioned_on_both_sides():
    m = LisaMaskMetric()
    # two predicted masks overlapping on (0,1); two targets; union vs union: pred {00,01,02}, target {01,02,03}
    i, u = m.update([mask((0, 0), (0, 1)), mask((0, 1), (0, 2))], [mask((0, 1)), mask((0, 2), (0, 3))], SHAPE)
    assert (i, u) == (2, 4)
    assert m.compute()["gIoU (LISA)"] == pytest.approx(100 * 2 / (4 + 1e-5))


def test_precision_thresholds_count_ties_as_hits():
    m = LisaMaskMetric()
    m.add(1, 2)     # IoU exactly 0.5
    m.add(7, 10)    # IoU exactly 0.7
    out = m.compute()
    assert out["Pr@0.5 (LISA)"] == 100.0
    assert out["Pr@0.6 (LISA)"] == 50.0
    assert out["Pr@0.7 (LISA)"] == 50.0
    assert out["Pr@0.8 (LISA)"] == 0.0


def test_rela_convention_hand_case():
    m = RelaMaskMetric()
    m.update([], True, [], SHAPE)                              # no target, said so: gIoU 1, nothing added
    m.update([row(0, 3)], False, [], SHAPE)                   # no target, 3-pixel mask: U += 3
    m.update([row(1, 4)], True, [row(1, 4)], SHAPE)           # target, said "no target": I = 0, U = 4
    m.update([row(2, 5) | mask((3, 0), (3, 1))], False, [row(2, 5) | row(3, 5)], SHAPE)  # I=7, U=10: IoU 0.7 tie
    out = m.compute()
    assert out["cIoU (ReLA)"] == pytest.approx(100 * 7 / 17)
    assert out["gIoU (ReLA)"] == pytest.approx(100 * (1 + 0 + 0 + 0.7) / 4)
    assert out["N-acc (ReLA)"] == 50.0
    assert out["T-acc (ReLA)"] == 50.0
    assert out["Pr@0.7 (ReLA)"] == 50.0 and out["Pr@0.8 (ReLA)"] == 0.0


def test_rela_keeps_the_mask_of_a_no_target_answer_in_the_union():
    # the text says "No target." but a 3-pixel mask came with it, on a sample whose target is 4 pixels overlapping
    # it on 2: ReLA counts I = 0 and U = |pred ∪ target| = 5 (not the target's 4, as zeroing the mask would)
    m = RelaMaskMetric()
    assert m.update([row(0, 3)], predicted_no_target("No target.", [row(0, 3)]), [row(0, 4, start=1)], SHAPE) == (0, 5)
    m.update([row(2, 2)], False, [row(2, 2)], SHAPE)          # an exact 2-pixel hit: I = U = 2
    out = m.compute()
    assert out["cIoU (ReLA)"] == pytest.approx(100 * 2 / 7)   # zeroing the mask would give 2 / 6
    assert out["gIoU (ReLA)"] == 50.0 and out["T-acc (ReLA)"] == 50.0


def test_rela_without_no_target_samples_reports_nan_n_acc():
    m = RelaMaskMetric()
    m.update([row(0, 2)], False, [row(0, 2)], SHAPE)
    out = m.compute()
    assert np.isnan(out["N-acc (ReLA)"]) and out["T-acc (ReLA)"] == 100.0


def test_no_target_decision():
    assert predicted_no_target("No target.", [])
    assert predicted_no_target("no target", [row(0, 2)])
    assert predicted_no_target("Sure, [SEG].", [np.zeros(SHAPE, bool)])
    assert not predicted_no_target("Sure, [SEG].", [row(0, 1)])


def test_accumulators_merge_like_one_pass_and_all_reduce_in_one_rank_group(tmp_path):
    a, b, both = LisaMaskMetric(), LisaMaskMetric(), LisaMaskMetric()
    for m, (i, u) in ((a, (1, 2)), (b, (3, 3)), (b, (0, 0))):
        m.add(i, u)
        both.add(i, u)
    assert a.merge(b) == both
    r1, r2 = RelaMaskMetric(), RelaMaskMetric()
    r1.add(2, 4, pred_no_target=False, target_empty=False)
    r2.add(0, 0, pred_no_target=True, target_empty=True)
    assert r1.merge(r2).compute()["N-acc (ReLA)"] == 100.0

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        before = both.compute()
        both.all_reduce()
        assert both.compute() == before and isinstance(both.hits[0], int) and isinstance(both.union, int)
    finally:
        dist.destroy_process_group()


def test_mcq_rule_is_substring_of_the_output():
    assert mcq_correct("(B)", "The answer is (B) red.")
    assert mcq_correct(" B ", "B")
    assert not mcq_correct("(C)", "The answer is (B) red.")
    assert not mcq_correct("red", "Red")          # the rule is a plain (case-sensitive) substring test
    m = McqMetric()
    m.update("(A)", "(A)")
    m.update("(A)", "(B)")
    m.update("(D)", "I think (D).")
    assert m.compute()["MCQ acc (PerBench)"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="empty"):
        mcq_correct("  ", "anything")


def test_perbench_overall_reproduces_the_paper():
    # Pixel-SAIL 3B: METEOR 24.2, acc 0.74, cIoU 33.4, gIoU 23.5 -> 42.2
    assert round(perbench_overall(24.2, 0.74, 33.4, 23.5), 1) == 42.2


def test_clean_caption_strips_the_prompt_prefix_and_special_tokens():
    assert clean_caption("<vp_3>: a red  circle [SEG]<|im_end|>") == "a red circle"
    assert clean_caption("a <vp_1> near it") == "a near it"


def test_caption_metric_refuses_duplicate_ids():
    c = CaptionMetric()
    c.update("1", "a", ["b"])
    with pytest.raises(ValueError, match="twice"):
        c.update("1", "a", ["b"])


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("java") is None, reason="Java METEOR 1.5 needs a java runtime")
def test_java_meteor_on_a_hand_computed_pair():
    pytest.importorskip("pycocoevalcap")
    # hypothesis "red circle", reference "circle red": P = R = 1 so Fmean = 1; 2 matches in 2 chunks give the
    # fragmentation penalty gamma * (chunks / matches) ** beta = 0.6 * 1 ** 0.2 = 0.6 -> METEOR = 1 - 0.6 = 0.4
    scores = coco_caption_scores({"x": "red circle"}, {"x": ["circle red"]}, metrics=("METEOR",))
    assert scores["METEOR"] == pytest.approx(0.4, abs=1e-6)
