"""benchmarks.relation_gallery: reading a relation expression against its scene, sorting a mask by what it covers,
and the whole tool on a tiny saved model."""
from __future__ import annotations

import numpy as np
import pytest

from model_utils import tiny_model


def _relation_samples(count: int = 24, size: int = 64):
    from benchmarks.ladder import RUNGS, rung_samples

    return rung_samples(RUNGS["relation"], "val", count, size, keep_scene=True)


def test_relation_parts_find_the_anchor_and_the_wrong_candidates_and_the_target_is_the_extreme_one():
    """Every other candidate lies beyond the anchor, so the target is the candidate furthest in the relation's
    direction (the docstring's claim, checked on the generator's own samples)."""
    from benchmarks.relation_gallery import relation_parts

    for s in _relation_samples():
        parts = relation_parts(s.turns[0][0], s.meta["scene"], s.meta["target_index"][0])
        assert np.array_equal(parts.target.mask, s.masks[0])
        assert parts.others and parts.anchor is not parts.target and parts.anchor not in parts.others
        assert "shape" in parts.target_words
        axis, sign = {"left of": (0, -1), "right of": (0, 1), "above": (1, -1), "below": (1, 1)}[parts.relation]
        assert all(sign * parts.target.centroid[axis] > sign * o.centroid[axis] for o in parts.others)
        assert sign * (parts.target.centroid[axis] - parts.anchor.centroid[axis]) > 0


def test_relation_outcome_names_what_the_mask_covers():
    from benchmarks.relation_gallery import relation_outcome, relation_parts

    s = _relation_samples(1)[0]
    parts = relation_parts(s.turns[0][0], s.meta["scene"], s.meta["target_index"][0])
    target, other, anchor = parts.target.mask, parts.others[0].mask, parts.anchor.mask
    assert relation_outcome(target, parts) == "found"
    assert relation_outcome(other, parts) == "other candidate"
    assert relation_outcome(anchor, parts) == "anchor"
    assert relation_outcome(np.zeros_like(target), parts) == "empty"
    assert relation_outcome(target | other | anchor | np.ones_like(target), parts) == "spread"
    objects = np.any(np.stack([o.mask for o in s.meta["scene"].visible_objects]), 0)
    background = np.argwhere(~objects)[: 2 * int(target.sum())]
    grown = target.copy()
    grown[background[:, 0], background[:, 1]] = True          # all of the target, IoU 1/3, no other object
    assert relation_outcome(grown, parts) == "partly"
    assert relation_outcome(grown & ~target, parts) == "elsewhere"


def test_relation_parts_refuse_an_expression_without_a_relation():
    from benchmarks.relation_gallery import relation_parts

    s = _relation_samples(1)[0]
    with pytest.raises(ValueError, match="no relation word"):
        relation_parts("Please segment the red circle.", s.meta["scene"], s.meta["target_index"][0])


@pytest.mark.slow
def test_relation_gallery_runs_on_a_saved_model_with_a_box_head(tmp_path, capsys):
    from benchmarks.relation_gallery import OUTCOMES, main

    tiny_model(seg_box_weight=1.0).save_pretrained(tmp_path / "m")
    main([str(tmp_path / "m"), "--image-size", "64", "--samples", "6", "--out", str(tmp_path / "fails.png")])
    out = capsys.readouterr().out
    assert "6 relation samples" in out and all(o in out for o in ("found", "other candidate"))
    assert "the box head's centre is nearest the target in" in out
    assert (tmp_path / "fails.png").exists() or "every target found" in out
    assert len(OUTCOMES) == 7


def test_pixel_losses_split_the_union_by_what_the_extra_pixels_lie_on():
    from benchmarks.relation_gallery import pixel_losses, relation_parts, target_touched

    s = _relation_samples(1)[0]
    scene = s.meta["scene"]
    parts = relation_parts(s.turns[0][0], scene, s.meta["target_index"][0])
    target, anchor, other = parts.target.mask, parts.anchor.mask, parts.others[0].mask
    assert pixel_losses(target, parts, scene).tolist() == [target.sum(), 0, 0, 0, 0, 0]
    both = target | anchor
    got = pixel_losses(both, parts, scene)
    assert got.tolist() == [both.sum(), 0, (anchor & ~target).sum(), 0, 0, 0]
    got = pixel_losses(other, parts, scene)
    assert got[1] == target.sum() and got[3] == (other & ~target & ~anchor).sum() and got[0] == (target | other).sum()
    assert pixel_losses(~np.zeros_like(target), parts, scene)[5] > 0


def test_target_touched_means_hidden_in_part_or_bordered_by_another_object():
    from types import SimpleNamespace

    from benchmarks.relation_gallery import target_touched

    def obj(rows, cols, full=None):
        m = np.zeros((8, 8), dtype=bool)
        m[rows, cols] = True
        return SimpleNamespace(mask=m, full_mask=m if full is None else full)

    target = obj(slice(2, 4), slice(2, 4))
    assert not target_touched(target, SimpleNamespace(visible_objects=[target, obj(slice(6, 8), slice(6, 8))]))
    assert target_touched(target, SimpleNamespace(visible_objects=[target, obj(slice(2, 4), slice(4, 6))]))
    assert not target_touched(target, SimpleNamespace(visible_objects=[target, obj(slice(4, 6), slice(4, 6))]))  # corner
    hidden = obj(slice(2, 4), slice(2, 4), full=np.ones((8, 8), dtype=bool))
    assert target_touched(hidden, SimpleNamespace(visible_objects=[hidden]))
