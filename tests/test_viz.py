"""Overlays, prompt drawings and captioned grids."""
import numpy as np
import pytest
from PIL import Image

from pixelsail.viz import MASK_COLORS, contrasting_colors, draw_prompts, image_grid, mask_boundary, overlay_masks


def test_overlay_blends_inside_the_mask_only():
    image = np.full((3, 3, 3), 100, dtype=np.uint8)
    mask = np.zeros((3, 3), dtype=bool)
    mask[1, 1] = True
    out = overlay_masks(image, [mask], colors=[(200, 0, 0)], alpha=0.5, outline=False)
    assert out.dtype == np.uint8
    assert out[1, 1].tolist() == [150, 50, 50]
    assert (out[~mask] == 100).all()


def test_outline_is_opaque_on_the_mask_border():
    image = np.zeros((5, 5, 3), dtype=np.uint8)
    mask = np.zeros((5, 5), dtype=bool)
    mask[1:4, 1:4] = True
    out = overlay_masks(image, [mask], colors=[(0, 255, 0)], alpha=0.0, outline=True)
    assert mask_boundary(mask).sum() == 8 and not mask_boundary(mask)[2, 2]
    assert out[1, 1].tolist() == [0, 255, 0] and out[2, 2].tolist() == [0, 0, 0]


def test_default_colours_contrast_with_what_each_mask_covers():
    image = np.zeros((8, 16, 3), dtype=np.uint8)
    image[:, :8] = (250, 50, 50)     # a red object on the left, a yellow one on the right
    image[:, 8:] = (250, 210, 10)
    left, right = np.zeros((8, 16), bool), np.zeros((8, 16), bool)
    left[:, :8], right[:, 8:] = True, True
    red_first = contrasting_colors(image, [left, right, left])
    assert len(set(red_first)) == 3 and all(c in MASK_COLORS for c in red_first)
    for k, region in enumerate((left, right)):   # the farthest of the colours the earlier masks left free
        mean = image[region].mean(axis=0)
        gap = ((np.asarray(red_first[k]) - mean) ** 2).sum()
        assert all(gap >= ((np.asarray(c) - mean) ** 2).sum() for c in MASK_COLORS if c not in red_first[:k])
    assert red_first[0] != MASK_COLORS[0]   # not the palette's red over a red object
    out = overlay_masks(image, [left], alpha=1.0, outline=False)
    assert out[0, 0].tolist() == list(red_first[0])
    assert contrasting_colors(image, [np.zeros((8, 16), bool)]) == [MASK_COLORS[0]]   # an empty mask: the first


def test_overlay_errors():
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"mask 0 has shape \(3, 3\)"):
        overlay_masks(image, [np.ones((3, 3), bool)])
    with pytest.raises(ValueError, match="uint8"):
        overlay_masks(image.astype(float), [])
    with pytest.raises(ValueError, match="only 0 colours"):
        overlay_masks(image, [np.ones((4, 4), bool)], colors=[])


def test_draw_prompts_outlines_and_tags_each_region():
    image = np.full((40, 40, 3), 200, dtype=np.uint8)
    region = np.zeros((40, 40), dtype=bool)
    region[20:30, 5:35] = True
    out = draw_prompts(image, {3: region}, colors=[(255, 0, 0)], alpha=0.0)
    assert out[25, 34].tolist() == [255, 0, 0] and out[29, 30].tolist() == [255, 0, 0]   # outline
    assert (out[5:20, 5:25] == 0).all(axis=2).any()     # black label box just above the region's corner
    assert (out[21:29, 6:34] == 200).all()              # the region's inside stays visible
    assert (out[:4] == 200).all() and (out[31:] == 200).all()   # nothing drawn far away


def test_prompt_tags_never_hide_a_small_region_when_there_is_room_outside():
    image = np.full((64, 64, 3), 200, dtype=np.uint8)
    for rows, cols in ((slice(0, 4), slice(60, 64)), (slice(58, 64), slice(0, 5)), (slice(30, 34), slice(62, 64))):
        region = np.zeros((64, 64), dtype=bool)
        region[rows, cols] = True
        out = draw_prompts(image, {0: region}, colors=[(255, 0, 0)], alpha=0.0)
        assert not (out[region] == 0).all(axis=1).any(), (rows, cols)   # no label pixel on the region
        assert (out == 0).all(axis=2).sum() > 20                         # but a label is drawn


def test_image_grid_layout_and_captions():
    tiles = [np.full((10, 12, 3), v, dtype=np.uint8) for v in (0, 80, 160)]
    sheet = image_grid(tiles, ["first tile", "", "third"], ncols=2, pad=6)
    assert isinstance(sheet, Image.Image)
    arr = np.asarray(sheet)
    assert sheet.width == 2 * (12 + 6) + 6
    assert (arr[6:16, 6:18] == 0).all() and (arr[6:16, 24:36] == 80).all()
    caption_h = (sheet.height - 6) // 2 - 10 - 6
    assert (arr[16:16 + caption_h, 6:18] < 128).any(), "caption text under tile 0"
    assert (arr[16:16 + caption_h, 24:36] == 255).all(), "no text under the tile with an empty caption"
    with pytest.raises(ValueError, match="3 images but 2 captions"):
        image_grid(tiles, ["a", "b"])
