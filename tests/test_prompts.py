"""Visual prompts as masks: boxes, points, scribbles and ready masks, with clear errors for bad input."""
import numpy as np
import pytest

from pixelsail.prompts import as_prompt_mask, box_to_mask, point_to_mask, scribble_to_mask


def test_box_covers_exactly_its_pixels():
    m = box_to_mask((1, 2, 4, 5), 6, 6)
    expected = np.zeros((6, 6), dtype=bool)
    expected[2:5, 1:4] = True
    assert np.array_equal(m, expected)


def test_fractional_box_covers_every_touched_pixel_and_clips_to_the_image():
    m = box_to_mask((0.5, 0.5, 2.2, 1.0), 4, 4)
    assert np.argwhere(m).tolist() == [[0, 0], [0, 1], [0, 2]]
    clipped = box_to_mask((-3, -3, 2, 2), 4, 4)
    assert np.argwhere(clipped).tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]


@pytest.mark.parametrize("box, message", [
    ((5, 5, 9, 9), "outside"), ((2, 2, 2, 3), "empty"), ((1, 2, 3), "4 finite numbers"),
    ((0, 0, float("nan"), 2), "finite"), (("a", 0, 1, 1), "must be 4 numbers"),
])
def test_bad_boxes_are_named(box, message):
    with pytest.raises(ValueError, match=message):
        box_to_mask(box, 4, 4)


def test_point_disc_radius():
    assert np.argwhere(point_to_mask((2.5, 1.5), 4, 5, radius=0)).tolist() == [[1, 2]]
    plus = point_to_mask((2.5, 2.5), 5, 5, radius=1)
    assert sorted(map(tuple, np.argwhere(plus).tolist())) == [(1, 2), (2, 1), (2, 2), (2, 3), (3, 2)]
    with pytest.raises(ValueError, match="outside the 5x5 image"):
        point_to_mask((5, 0), 5, 5)
    with pytest.raises(ValueError, match="radius"):
        point_to_mask((1, 1), 5, 5, radius=-1)


def test_scribble_follows_its_polyline():
    m = scribble_to_mask([(1.5, 3.5), (6.5, 3.5)], 8, 8, width=1)
    assert m[3, 1:7].all()
    assert not m[:2].any() and not m[6:].any()
    with pytest.raises(ValueError, match="entirely outside"):
        scribble_to_mask([(20, 20), (30, 30)], 8, 8)
    with pytest.raises(ValueError, match="at least one point"):
        scribble_to_mask([], 8, 8)


def test_as_prompt_mask_accepts_masks_boxes_and_points():
    zero_one = np.zeros((4, 4), dtype=np.uint8)
    zero_one[1, 2] = 1
    got = as_prompt_mask(zero_one, 4, 4)
    assert got.dtype == bool and np.argwhere(got).tolist() == [[1, 2]]
    assert np.array_equal(as_prompt_mask((0, 0, 2, 1), 4, 4), box_to_mask((0, 0, 2, 1), 4, 4))
    assert np.array_equal(as_prompt_mask([1.5, 1.5], 4, 4, point_radius=0), point_to_mask((1.5, 1.5), 4, 4, 0))


@pytest.mark.parametrize("prompt, message", [
    (np.full((4, 4), 2), "only 0 and 1"), (np.zeros((3, 4), bool), r"shape \(3, 4\)"),
    (np.zeros((4, 4), bool), "empty"), ((1, 2, 3), "cannot read a visual prompt"),
])
def test_as_prompt_mask_errors(prompt, message):
    with pytest.raises(ValueError, match=message):
        as_prompt_mask(prompt, 4, 4)
