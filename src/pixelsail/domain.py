"""Is this image like what the model was trained on? A cheap check for models trained on the shapes world.

A model trained only on the procedural shapes world (its ``run.yaml`` lists only ``shapes`` / ``shapes_echo``
datasets) has seen nothing but flat shapes in six palette colours on a smooth, low-saturation grey texture. Given a
photo it still answers, and the answer means nothing. :func:`shapes_world_check` measures how much of an image
that world explains:

* *background* pixels: low saturation (channel spread at most ``BACKGROUND_MAX_SPREAD`` + a little) and locally
  smooth (within :data:`GREY_ROUGHNESS` of their 3x3 neighbourhood's mean: the texture's pixel noise, not edges);
* *shape* pixels: locally flat (3x3 range at most :data:`FLAT_RANGE` per channel), with a palette colour's hue
  (within :data:`HUE_TOLERANCE_DEG`) and at least :data:`CHROMA_SHARE` of its chroma.

The image is in the domain when the explained share is at least :data:`MIN_EXPLAINED`, some shape pixels exist
(:data:`MIN_SHAPE_SHARE`: a grey texture with no coloured shape is not a shapes scene either), and the background
covers most of it at a mid-grey level (:data:`MIN_BACKGROUND_SHARE`, :data:`BACKGROUND_MEDIAN`). Only antialiased
rims and the odd sliver are unexplained in a real scene. Calibration (tests/test_domain.py re-checks a smaller
set): all 800 shapes scenes of train, val, test and test_perturbed (200 each) pass, the least explained at 0.90
(background >= 53 %, shapes >= 1.5 %); all 2,500 other images fail (1,500 random crops of matplotlib's
grace_hopper.jpg photo, 30 % of them in grey, 1/f colour and grey noise, colour gradients and colour blobs with
noise, 250 each). Not covered: JPEG-compressed scenes at quality 85 or lower often fail (ringing around shapes).
"""
from __future__ import annotations

import colorsys
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from pixelsail.config import inner_dataset
from pixelsail.data.shapes import BACKGROUND_MAX_SPREAD, COLORS

SHAPES_DOMAIN = "shapes"
SHAPES_DATASETS = frozenset({"shapes", "shapes_echo"})
CHECK_SIZE = 256                 # longer side the image is reduced to (nearest: flat colours stay flat)
GREY_SPREAD = BACKGROUND_MAX_SPREAD + 6
GREY_LEVELS = (12.0, 243.0)      # backgrounds are never near black or white (the darkest/lightest blobs clip here)
GREY_ROUGHNESS = 24.0            # |pixel - 3x3 mean| of the grey level; the texture's noise is at most ~14
FLAT_RANGE = 12                  # a shape's interior is one flat colour (slack for compression)
HUE_TOLERANCE_DEG = 14.0         # the held-out rendering shifts hues by at most 10 degrees
CHROMA_SHARE = 0.5               # ... and keeps at least 60 % of the chroma
MIN_EXPLAINED = 0.85
BACKGROUND_MEDIAN = (45.0, 235.0)  # its median grey level (measured on 800 scenes: 61-220)
MIN_BACKGROUND_SHARE = 0.4     # objects cover under half of a scene (measured: background >= 53 %)
MIN_SHAPE_SHARE = 0.004         # the topmost object alone, fully visible, covers more than 0.6 % of a scene
PROMPT_REACH = 2                # pixels around a visual prompt searched for a shape


@dataclass(frozen=True)
class DomainCheck:
    """How much of an image the training world explains, and the verdict."""

    explained: float        # share of pixels that are shapes-world background or shape colour
    shape_share: float      # share of pixels that are flat palette colour
    background_share: float  # share of pixels that are smooth grey background
    in_domain: bool
    # the visual prompts (their k) under which no shape lies, in an image in the domain (:func:`prompts_on_background`)
    background_prompts: tuple[int, ...] = ()

    def note(self) -> str:
        """One sentence for a person; empty when the image is in the domain."""
        if self.in_domain:
            return ""
        if self.explained >= MIN_EXPLAINED and self.shape_share < MIN_SHAPE_SHARE:
            what = "no flat shape in one of the six palette colours"
        elif self.explained >= MIN_EXPLAINED:
            what = "not the mid-grey textured background of its scenes"
        else:
            what = (f"only {100 * self.explained:.0f} % of it is flat shape colour or plain grey background; "
                    f"shapes scenes are at least {100 * MIN_EXPLAINED:.0f} %")
        return ("this image looks unlike the shapes world the model was trained on "
                f"({what}), so the answer is probably meaningless")


def training_domain(model_dir: str | Path) -> str | None:
    """``"shapes"`` when the run that trained the model used only shapes-world data; ``None`` when unknown or other.

    The run's ``run.yaml`` sits in the model directory (shipped models), beside it (``<run>/model``) or three levels
    up (``<run>/checkpoints/step-N/model``)."""
    import yaml

    d = Path(model_dir)
    candidates = [d / "run.yaml"] + ([d.parent / "run.yaml", d.parents[2] / "run.yaml"]
                                     if d.name == "model" and len(d.parents) > 2 else [])
    for path in candidates:
        if not path.is_file():
            continue
        try:
            run = yaml.safe_load(path.read_text()) or {}
            specs = (run.get("data") or {}).get("datasets") or []
            names = {str(inner_dataset(s).get("name")) for s in specs}   # what a `distilled` wrapper holds
        except (yaml.YAMLError, AttributeError, TypeError, OSError):
            return None
        return SHAPES_DOMAIN if names and names <= SHAPES_DATASETS else None
    return None


def _palette() -> tuple[np.ndarray, np.ndarray]:
    hues = np.array([360.0 * colorsys.rgb_to_hsv(*(c / 255 for c in rgb))[0] for rgb in COLORS.values()])
    chromas = np.array([max(rgb) - min(rgb) for rgb in COLORS.values()], dtype=float)
    return hues, chromas


def _box3(x: np.ndarray, reduce: str) -> np.ndarray:
    """3x3 mean / max / min with edge padding."""
    p = np.pad(x, [(1, 1), (1, 1)] + [(0, 0)] * (x.ndim - 2), mode="edge")
    h, w = x.shape[:2]
    views = [p[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)]
    return {"mean": lambda v: np.mean(v, axis=0), "max": lambda v: np.max(v, axis=0),
            "min": lambda v: np.min(v, axis=0)}[reduce](np.stack(views))


def _hue_deg(img: np.ndarray, mx: np.ndarray, chroma: np.ndarray) -> np.ndarray:
    r, g, b = (img[..., i] for i in range(3))
    c = np.maximum(chroma, 1e-6)
    hue = np.where(mx == r, ((g - b) / c) % 6, np.where(mx == g, (b - r) / c + 2, (r - g) / c + 4))
    return 60.0 * hue


def _pixel_kinds(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(background, shape, grey level) maps of an (H, W, 3) uint8 image reduced to at most :data:`CHECK_SIZE` on its
    longer side (see the module docstring for what each kind of pixel is)."""
    h, w = image.shape[:2]
    if max(h, w) > CHECK_SIZE:
        scale = CHECK_SIZE / max(h, w)
        image = np.asarray(Image.fromarray(image).resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                                         Image.NEAREST))
    img = image.astype(np.float32)
    mx, mn = img.max(axis=2), img.min(axis=2)
    chroma = mx - mn
    grey_level = img.mean(axis=2)
    background = ((chroma <= GREY_SPREAD) & (np.abs(grey_level - _box3(grey_level, "mean")) <= GREY_ROUGHNESS)
                  & (grey_level >= GREY_LEVELS[0]) & (grey_level <= GREY_LEVELS[1]))
    flat = (_box3(img, "max") - _box3(img, "min")).max(axis=2) <= FLAT_RANGE
    hue = _hue_deg(img, mx, chroma)
    hues, chromas = _palette()
    gap = np.abs(hue[..., None] - hues) % 360.0
    near = (np.minimum(gap, 360.0 - gap) <= HUE_TOLERANCE_DEG) & (chroma[..., None] >= CHROMA_SHARE * chromas)
    return background, flat & near.any(axis=-1) & ~background, grey_level


def shapes_world_check(image: np.ndarray, prompts: dict[int, np.ndarray] | None = None) -> DomainCheck:
    """Score an (H, W, 3) uint8 image against the shapes world (see the module docstring); with its visual
    ``prompts`` (k -> (H, W) bool region), also which of them lie on background only, when the image is in it."""
    background, shape, grey_level = _pixel_kinds(image)
    explained, shape_share, background_share = (float(x.mean()) for x in (background | shape, shape, background))
    level = float(np.median(grey_level[background])) if background.any() else 0.0
    in_domain = (explained >= MIN_EXPLAINED and shape_share >= MIN_SHAPE_SHARE
                 and background_share >= MIN_BACKGROUND_SHARE and BACKGROUND_MEDIAN[0] <= level <= BACKGROUND_MEDIAN[1])
    return DomainCheck(explained=round(explained, 4), shape_share=round(shape_share, 4),
                       background_share=round(background_share, 4), in_domain=in_domain,
                       background_prompts=tuple(_off_shapes(shape, image, prompts)) if in_domain and prompts else ())


def prompts_on_background(image: np.ndarray, prompts: dict[int, np.ndarray]) -> list[int]:
    """The visual prompts (k -> (H, W) bool region) of a shapes scene under which no shape lies, only background:
    every training prompt marks an object, so a model asked about one of these describes an object that is not
    there. A prompt is counted as on an object when a shape pixel is within :data:`PROMPT_REACH` of it (a point
    clicked on an object's antialiased rim still counts)."""
    return _off_shapes(_pixel_kinds(image)[1], image, prompts) if prompts else []


def _off_shapes(shape: np.ndarray, image: np.ndarray, prompts: dict[int, np.ndarray]) -> list[int]:
    """:func:`prompts_on_background` from the shape map of :func:`_pixel_kinds`."""
    near_shape = np.asarray(Image.fromarray(shape).resize(image.shape[1::-1], Image.NEAREST))
    for _ in range(PROMPT_REACH):
        near_shape = _box3(near_shape, "max")
    return [k for k, region in sorted(prompts.items()) if not (region & near_shape).any()]


def check(domain: str | None, image: np.ndarray, prompts: dict[int, np.ndarray] | None = None) -> DomainCheck | None:
    """The check for a model trained on ``domain`` (with ``prompts``: which lie on background only, see
    :func:`shapes_world_check`); ``None`` when there is none for it (only the shapes world)."""
    return shapes_world_check(image, prompts) if domain == SHAPES_DOMAIN else None


_WORD = re.compile(r"<vp_\d+>|\[SEG\]|([A-Za-z]+)")


def _words(text: str) -> list[str]:
    """The lower-cased words of ``text``; ``<vp_k>`` tags and ``[SEG]`` are not words."""
    return [m.group(1).lower() for m in _WORD.finditer(text) if m.group(1)]


@lru_cache(maxsize=1)
def shapes_vocabulary() -> frozenset[str]:
    """Every word the shapes generator writes in a question or an answer (lower-cased)."""
    from pixelsail.data.shapes import vocabulary_sentences

    return frozenset(w for sentence in vocabulary_sentences() for w in _words(sentence))


def unknown_words(domain: str | None, text: str) -> list[str]:
    """The words of ``text`` (in order, once each) that a model trained on ``domain`` never read: a shapes model
    asked "What color is <vp_0>?" has only ever seen "colour", and its answer ignores the word it does not know.
    [] for a domain without a word list (only the shapes world has one)."""
    if domain != SHAPES_DOMAIN:
        return []
    known = shapes_vocabulary()
    return list(dict.fromkeys(w for w in _words(text) if w not in known))
