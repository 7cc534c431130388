"""mask_set_matching: the [SEG]s of one list take their targets by the cheapest assignment, nothing else changes."""
from __future__ import annotations

import torch

from model_utils import box_mask, random_image, tiny_model
from pixelsail.data.sample import Sample
from pixelsail.model.seg_ordinal import seg_ordinals
from pixelsail.model.set_matching import list_joiner_ids, matched_targets, seg_lists


def _seg_positions(proc, answers: list[str]):
    rows = [proc.conversation_ids([("Please segment all red objects.", a)])[0] for a in answers]
    width = max(map(len, rows))
    ids = torch.tensor([r + [proc.ids["pad"]] * (width - len(r)) for r in rows])
    seg_b, seg_t = (ids == proc.ids["seg"]).nonzero(as_tuple=True)
    return ids, seg_b, seg_t


def test_lists_are_the_segs_joined_only_by_commas_and_and():
    proc = tiny_model().processor
    joiners = list_joiner_ids(proc.encode, proc.ids["seg"])
    assert proc.ids["seg"] not in joiners and joiners
    ids, seg_b, seg_t = _seg_positions(proc, [
        "Sure, [SEG], [SEG] and [SEG].",                                      # queries 0-2: one list
        "Sure, [SEG].",                                                       # 3: alone
        "<p> A red circle </p> [SEG] and <p> a red star </p> [SEG].",         # 4, 5: phrases keep their masks
        "Sure, [SEG] and [SEG]."])                                            # 6, 7: a list of its own row
    assert seg_lists(ids, seg_b, seg_t, proc.ids["seg"], joiners) == [[0, 1, 2], [6, 7]]


def test_lists_are_the_runs_the_ordinals_number():
    """One definition of a list: a [SEG] that is not a query (here the middle one) still links its neighbours, as
    seg_list_ordinal counts it; a list's queries are those whose ordinals run 0, 1, 2, ... in one row."""
    proc = tiny_model().processor
    seg, joiners = proc.ids["seg"], list_joiner_ids(proc.encode, proc.ids["seg"])
    ids, seg_b, seg_t = _seg_positions(proc, ["Sure, [SEG], [SEG] and [SEG].", "Sure, [SEG] and [SEG]."])
    assert seg_lists(ids, seg_b, seg_t, seg, joiners) == [[0, 1, 2], [3, 4]]
    keep = torch.tensor([0, 2, 3, 4])
    assert seg_lists(ids, seg_b[keep], seg_t[keep], seg, joiners) == [[0, 1], [2, 3]]
    ordinals = [seg_ordinals(row.tolist(), seg, joiners) for row in ids]
    assert [ordinals[b][t] for b, t in zip(seg_b.tolist(), seg_t.tolist())] == [0, 1, 2, 0, 1]


def test_matched_targets_follow_the_predictions_within_a_list_only():
    a, b, c = (torch.from_numpy(box_mask(32, 32, *box)) for box in ((0, 10, 0, 10), (20, 30, 20, 30),
                                                                   (0, 10, 20, 30)))
    targets = torch.stack([a, b, c, a])                                       # (4, 32, 32), as the data give them
    # the queries predict b, a, c, a at stride 4
    logits = torch.stack([(t[::4, ::4].float() - 0.5) * 20 for t in (b, a, c, a)])
    assert matched_targets(logits, targets, [[0, 1]]).tolist() == [1, 0, 2, 3]
    assert matched_targets(logits, targets, []).tolist() == [0, 1, 2, 3]
    assert matched_targets(logits, targets, [[2, 3]]).tolist() == [0, 1, 2, 3]   # already the cheapest
    assert matched_targets(logits, targets, [[0, 1], [2, 3]]).tolist() == [1, 0, 2, 3]


def _losses(model, masks):
    sample = Sample(image=random_image(64, 64), turns=[("Please segment all red objects.", "Sure, [SEG] and [SEG].")],
                    masks=masks, task="gres")
    torch.manual_seed(5)                                                      # the point sampling
    out = model(**model.processor.collate([model.processor(sample)]))
    return float(out.losses["mask_bce"]), float(out.losses["mask_dice"])


def test_with_matching_the_list_loss_does_not_depend_on_the_order_of_its_targets():
    a, b = box_mask(64, 64, 4, 24, 4, 24), box_mask(64, 64, 36, 60, 30, 62)
    for on in (False, True):
        model = tiny_model(mask_set_matching=on).train()
        same = _losses(model, [a, b]) == _losses(model, [b, a])
        assert same == on


def test_matching_is_kept_by_save_and_load(tmp_path):
    model = tiny_model(mask_set_matching=True)
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path)
    assert loaded.config.mask_set_matching and loaded.list_joiners == model.list_joiners
