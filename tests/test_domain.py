"""The shapes-world check: every shapes scene passes, photos and photo-like images do not; which models get it."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from pixelsail.data.shapes import generate_scene
from pixelsail.domain import SHAPES_DOMAIN, check, prompts_on_background, shapes_world_check, training_domain
from pixelsail.predictor import shipped_model_dir


def pink_noise(rng: np.random.Generator, size: int, colour: bool) -> np.ndarray:
    """1/f noise: the power spectrum of natural images, in colour (mixed channels) or grey."""
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size)))
    f[0, 0] = 1.0
    chans = []
    for _ in range(3 if colour else 1):
        spectrum = (rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) / f ** rng.uniform(.8, 1.4)
        x = np.real(np.fft.ifft2(spectrum))
        chans.append((x - x.mean()) / x.std())
    x = np.stack(chans, -1)
    x = x @ rng.normal(size=(3, 3)) * 0.5 + x.mean(-1, keepdims=True) if colour else np.repeat(x, 3, -1)
    return np.clip(x * rng.uniform(25, 60) + rng.uniform(80, 170), 0, 255).astype(np.uint8)


def gradient_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    ys, xs = np.mgrid[0:size, 0:size] / size
    img = np.stack([rng.uniform(0, 255) + rng.uniform(-120, 120) * xs + rng.uniform(-120, 120) * ys
                    for _ in range(3)], -1)
    return np.clip(img + rng.normal(0, rng.uniform(3, 20), img.shape), 0, 255).astype(np.uint8)


def colour_blobs(rng: np.random.Generator, size: int) -> np.ndarray:
    g = int(rng.integers(2, 9))
    coarse = Image.fromarray(rng.uniform(0, 255, (g, g, 3)).astype(np.uint8)).resize((size, size), Image.BICUBIC)
    return np.clip(np.asarray(coarse) + rng.normal(0, rng.uniform(2, 12), (size, size, 3)), 0, 255).astype(np.uint8)


def photo() -> np.ndarray | None:
    try:
        import matplotlib
    except ImportError:
        return None
    path = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
    return np.asarray(Image.open(path).convert("RGB")) if os.path.isfile(path) else None


def test_every_shapes_scene_passes():
    for split in ("train", "test", "test_perturbed"):
        for index in range(40):
            result = shapes_world_check(generate_scene(split, index).image)
            assert result.in_domain and result.note() == "", (split, index, result)
    assert shapes_world_check(generate_scene("val", 0, image_size=256).image).in_domain


def test_a_prompt_is_on_background_only_where_no_shape_is_under_it():
    """Measured on 200 scenes each of test and test_perturbed (runs/s24/bg_prompt_check.py): 0 of ~790 training-style
    prompts (points, boxes, scribbles, masks) on objects flagged, 1 and 3 of 200 background points missed."""
    from scipy.ndimage import binary_dilation

    from pixelsail.data.shapes import prompt_objects, scene_and_rng
    from pixelsail.prompts import point_to_mask

    flagged = missed = 0
    for split in ("test", "test_perturbed"):
        for index in range(15):
            scene, rng = scene_and_rng(split, index, 0, 128, 0, False)
            prompts = prompt_objects(scene.visible_objects, rng, scene.image_size).prompts
            flagged += len(prompts_on_background(scene.image, prompts))
            near = binary_dilation(np.any([o.mask for o in scene.objects], axis=0), iterations=4)
            ys, xs = np.nonzero(~near)
            j = int(rng.integers(len(ys)))
            point = point_to_mask((float(xs[j]), float(ys[j])), 128, 128)
            missed += prompts_on_background(scene.image, {3: point, 0: prompts[min(prompts)]}) != [3]
    assert flagged == 0 and missed <= 1
    assert prompts_on_background(generate_scene("test", 0).image, {}) == []


def test_photo_like_images_fail_with_a_sentence():
    rng = np.random.default_rng(0)
    images = [pink_noise(rng, 128, True) for _ in range(15)] + [pink_noise(rng, 128, False) for _ in range(15)]
    images += [gradient_noise(rng, 128) for _ in range(15)] + [colour_blobs(rng, 128) for _ in range(15)]
    real = photo()
    if real is not None:
        h, w = real.shape[:2]
        images.append(real)
        for _ in range(30):
            c = int(rng.integers(48, min(h, w)))
            y, x = int(rng.integers(0, h - c)), int(rng.integers(0, w - c))
            images.append(np.asarray(Image.fromarray(real[y:y + c, x:x + c]).resize((128, 128), Image.BILINEAR)))
    for i, image in enumerate(images):
        result = shapes_world_check(image)
        assert not result.in_domain, (i, result)
        assert result.note().startswith("this image looks unlike the shapes world")
    # a grey texture alone is a shapes background, but with no shape on it it is not a scene
    bare = generate_scene("test", 0).image.copy()
    for o in generate_scene("test", 0).objects:
        bare[o.mask] = 128
    assert "no flat shape" in shapes_world_check(bare).note()


def test_which_models_are_checked(tmp_path):
    if (shipped_model_dir() / "run.yaml").is_file():
        assert training_domain(shipped_model_dir()) == SHAPES_DOMAIN
    run = tmp_path / "run"
    (run / "checkpoints" / "step-5" / "model").mkdir(parents=True)
    (run / "model").mkdir()
    (run / "run.yaml").write_text("data:\n  datasets:\n    - name: shapes\n    - name: shapes_echo\n")
    assert training_domain(run / "model") == SHAPES_DOMAIN
    assert training_domain(run / "checkpoints" / "step-5" / "model") == SHAPES_DOMAIN
    (run / "run.yaml").write_text("data:\n  datasets:\n    - name: shapes\n    - name: refcoco\n")
    assert training_domain(run / "model") is None  # real images in the mix: no shapes-world check
    (run / "run.yaml").write_text("data:\n  datasets:\n    - name: distilled\n      args: {dataset: {name: refcoco}}\n")
    assert training_domain(run / "model") is None  # a distilled wrapper counts as the dataset it holds
    assert training_domain(tmp_path) is None
    assert check(None, np.zeros((8, 8, 3), np.uint8)) is None
