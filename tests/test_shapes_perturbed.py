"""The held-out rendering split (``test_perturbed``): other pixels, the same objects and language, never trained on."""
from __future__ import annotations

import colorsys
import hashlib
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from pixelsail.cli import app
from pixelsail.config import DataConfig, DatasetSpec
from pixelsail.data import shapes as sw
from pixelsail.data import shapes_render as sr
from pixelsail.data.mixture import Mixture
from pixelsail.data.registry import build_dataset
from pixelsail.data.shapes import (
    BACKGROUND_MAX_SPREAD, COLORS, LARGE_AREA, LARGE_MIN_AREA, SHAPES_TASKS, SMALL_AREA, ShapesDataset,
    generate_scene, make_sample,
)
from pixelsail.evaluate import build_eval_dataset

S = 128
SPLIT = "test_perturbed"


def look_of(scene) -> sr.Look:
    m = scene.meta
    return sr.draw_look(m["split"], m["index"], m["seed"], m["attempt"])


def near_any_mask(scene) -> np.ndarray:
    """Pixels inside or next to (8-neighbourhood) any visible mask: where antialiased edges may mix colours."""
    covered = np.any([o.mask for o in scene.objects], axis=0)
    return ~sr.interior(~covered)


def test_pixels_differ_from_the_plain_rendering_but_objects_and_language_do_not():
    for index in range(12):
        bent, plain = generate_scene(SPLIT, index), generate_scene(SPLIT, index, plain=True)
        assert np.abs(bent.image.astype(int) - plain.image.astype(int)).mean() > 5
        assert [(o.shape, o.color, o.size, o.position) for o in bent.objects] == \
               [(o.shape, o.color, o.size, o.position) for o in plain.objects]
        assert all(np.array_equal(a.mask, b.mask) for a, b in zip(bent.objects, plain.objects))
    for index, task in enumerate(SHAPES_TASKS * 2):
        bent, plain = make_sample(SPLIT, index, task), make_sample(SPLIT, index, task, plain=True)
        assert bent.turns == plain.turns and bent.meta.get("target_ids") == plain.meta.get("target_ids")
        assert len(bent.masks) == len(plain.masks) and all(map(np.array_equal, bent.masks, plain.masks))
        assert bent.prompts.keys() == plain.prompts.keys()
        assert not np.array_equal(bent.image, plain.image)


def test_masks_match_the_painted_objects_for_both_edge_kinds():
    kinds = set()
    for index in range(40):
        scene = generate_scene(SPLIT, index)
        look = look_of(scene)
        kinds.add(look.antialias)
        img = scene.image.astype(int)
        for o in scene.objects:
            inside = sr.interior(o.mask) if look.antialias else o.mask
            assert (img[inside] == look.colors[o.color]).all(), (index, o.color, look.antialias)
        # away from every mask there is only (low-saturation) background: no paint leaks beyond a one-pixel rim
        spread = img.max(axis=2) - img.min(axis=2)
        assert spread[~near_any_mask(scene)].max() <= BACKGROUND_MAX_SPREAD
        if not look.antialias:
            covered = np.any([o.mask for o in scene.objects], axis=0)
            assert spread[~covered].max() <= BACKGROUND_MAX_SPREAD
        else:  # the rim really is blended: some boundary pixels are neither object colour nor background
            flat = np.any([(img == look.colors[o.color]).all(axis=2) for o in scene.objects], axis=0)
            assert (near_any_mask(scene) & ~flat & (spread > BACKGROUND_MAX_SPREAD)).any()
    assert kinds == {True, False}
    obj = max(scene.visible_objects, key=lambda o: o.area)  # a mask moved by a pixel no longer matches
    shifted = sr.interior(np.roll(obj.mask, 2, axis=1))
    assert not (img[shifted] == look.colors[obj.color]).all(axis=1).all()


def _hue(rgb) -> float:
    return 360.0 * colorsys.rgb_to_hsv(*(c / 255 for c in rgb))[0]


def test_looks_stay_within_their_bounds():
    factors, greys, changed = [], [], 0
    for index in range(150):
        look = sr.draw_look(SPLIT, index, 0, 0)
        factors.append(look.area_factor)
        greys.append(look.grey)
        for name, rgb in look.colors.items():
            base = np.array(COLORS[name])
            gap = abs(_hue(rgb) - _hue(base)) % 360
            assert min(gap, 360 - gap) <= sr.MAX_HUE_SHIFT_DEG
            assert np.abs(np.array(rgb) - base).max() <= sr.COLOR_OFFSET + 0.15 * 255 + 1
            nearest = min(COLORS, key=lambda n: np.sum((np.array(COLORS[n]) - np.array(rgb)) ** 2))
            assert nearest == name
            changed += rgb != COLORS[name]
    assert changed > 0.9 * 150 * len(COLORS)
    assert sr.AREA_FACTOR[0] <= min(factors) < 0.85 and 1.2 < max(factors) <= sr.AREA_FACTOR[1]
    assert all(g < 95 or g > 165 for g in greys)  # never the training backgrounds' grey level (95-165)
    # the factor range keeps the size classes apart: resized small objects stay small, large ones large
    assert SMALL_AREA[1] * sr.AREA_FACTOR[1] < LARGE_MIN_AREA <= LARGE_AREA[0] * sr.AREA_FACTOR[0]


def test_resized_objects_keep_their_size_class_and_stay_in_the_image():
    for index in range(40):
        scene = generate_scene(SPLIT, index)
        for o in scene.objects:
            share = o.full_mask.sum() / S**2
            lo, hi = SMALL_AREA if o.size == "small" else LARGE_AREA
            assert 0.9 * lo * sr.AREA_FACTOR[0] <= share <= 1.1 * hi * sr.AREA_FACTOR[1], (index, o.size, share)
    # a shape drawn touching the border and then grown is moved inward, not cut off
    for shape in ("square", "diamond", "circle"):
        reach = 10.0 * sw.unit_area_and_extent(shape)[1]
        spec = sw.ObjectSpec(shape, "red", (reach, S - reach), 10.0)
        (grown,), (mask,) = sr.resize_specs([spec], 1.25, S)
        assert grown.radius == pytest.approx(10.0 * 1.25**0.5) and grown.center[0] > reach
        cx, cy = grown.center  # the same shape on a canvas with room around it: at most the rasteriser's edge
        roomy = sw.shape_mask(shape, cx + 16, cy + 16, grown.radius, S + 32)  # column more (left unmoved: ~50 px)
        assert roomy.sum() - mask.sum() <= 2 * grown.radius + 2, shape


def test_deterministic():
    a, b = ShapesDataset(SPLIT, size=6), ShapesDataset(SPLIT, size=6)
    for i in range(6):
        assert a[i].image.tobytes() == b[i].image.tobytes() and a[i].turns == b[i].turns
    assert generate_scene(SPLIT, 3).image.tobytes() == generate_scene(SPLIT, 3).image.tobytes()
    assert ShapesDataset(SPLIT, size=1, seed=1)[0].image.tobytes() != a[0].image.tobytes()


def test_shares_no_scene_with_the_other_splits():
    def digests(split: str) -> set[str]:
        return {hashlib.sha1(generate_scene(split, i, plain=True).image.tobytes()).hexdigest() for i in range(150)}

    held_out = digests(SPLIT)
    assert len(held_out) == 150
    for split in ("train", "val", "test"):
        assert not held_out & digests(split), split


def test_training_mixtures_refuse_it_and_evaluation_takes_it():
    for name in ("shapes", "shapes_echo"):
        with pytest.raises(ValueError, match="evaluation only and cannot be trained on"):
            build_dataset(name, split=SPLIT, size=2)
    with pytest.raises(ValueError, match="'val_perturbed' is a held-out rendering"):
        Mixture.from_config(DataConfig(datasets=[DatasetSpec("shapes", args={"split": "val_perturbed"})]))
    assert len(build_dataset("shapes", split="test", size=2)) == 2
    ds = build_eval_dataset("shapes", None, split=SPLIT, shapes_size=3)
    assert ds[0].image.tobytes() == make_sample(SPLIT, 0, ds.task_of(0)).image.tobytes()


def test_cli_preview_and_scene_use_the_split(tmp_path):
    runner = CliRunner()
    png = tmp_path / "p.png"
    res = runner.invoke(app, ["shapes", "preview", "--split", SPLIT, "--n", "2", "-o", str(png)])
    assert res.exit_code == 0, res.output
    assert png.is_file() and f"split {SPLIT!r}" in res.output
    res = runner.invoke(app, ["shapes", "scene", "--split", SPLIT, "--index", "1", "-o", str(tmp_path / "s.png")])
    assert res.exit_code == 0, res.output
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(tmp_path / "s.png")), generate_scene(SPLIT, 1).image)
    assert json.dumps(generate_scene(SPLIT, 1).meta["look"])  # the look is recorded, JSON-ready
