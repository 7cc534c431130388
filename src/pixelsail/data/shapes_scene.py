"""The shapes world's scenes: seeded pictures of coloured shapes with exact masks.

A scene is a textured grey background with 2-6 flat-coloured shapes painted in order, so later shapes occlude
earlier ones. Each object keeps its full (unoccluded) mask and its *visible* mask. An object is either visible
(enough pixels, see :func:`compose_scene`) or fully hidden; a hidden object is never the target or the subject of
any expression. Touching objects never share a colour (:func:`separate_colours`; before session 10 about a quarter
of the scenes had two same-coloured objects that read as one blob). Everything is deterministic in (split, index,
seed): the random stream is seeded from all three, so splits share no scene. The questions and answers about a
scene are :mod:`pixelsail.data.shapes_tasks`.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 230),
    "yellow": (235, 205, 20),
    "purple": (150, 50, 200),
    "orange": (245, 130, 10),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
SIZES: tuple[str, ...] = ("small", "large")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
# 3x3 grid of the visible centroid: POSITIONS[row][col]
POSITIONS: tuple[tuple[str, ...], ...] = (
    ("top left", "top middle", "top right"),
    ("middle left", "center", "middle right"),
    ("bottom left", "bottom middle", "bottom right"),
)

# full-area ranges as fractions of image area; the gap between them makes the size class unambiguous
SMALL_AREA = (0.012, 0.025)
LARGE_AREA = (0.05, 0.10)
LARGE_MIN_AREA = 0.035
# an object is visible if it shows at least this many pixels (at 128x128; scaled by area) and this share of itself
MIN_VISIBLE_PIXELS_128 = 25
MIN_VISIBLE_SHARE = 0.2
BACKGROUND_MAX_SPREAD = 24     # max - min over RGB of any background pixel (objects are far more saturated)


def _scaled_pixels(base_128: int, image_size: int) -> int:
    return max(4, round(base_128 * (image_size / 128) ** 2))


def split_code(split: str) -> int:
    """A stable integer per split name, mixed into every seed so that splits never share a scene."""
    return zlib.crc32(split.encode("utf-8"))


def make_rng(seed: int, split: str, index: int, *extra: int) -> np.random.Generator:
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    return np.random.default_rng([int(seed), split_code(split), int(index), *extra])


# ----------------------------------------------------------------------------------------------------------------
# geometry


@lru_cache(maxsize=None)
def unit_polygon(shape: str) -> tuple[tuple[float, float], ...]:
    """Vertices of the shape with "radius" 1 around the origin (y down). Circles are drawn analytically."""
    if shape == "square":
        return ((-1, -1), (1, -1), (1, 1), (-1, 1))
    if shape == "diamond":
        return ((0, -1.25), (1.25, 0), (0, 1.25), (-1.25, 0))
    if shape == "triangle":
        return tuple((float(np.cos(a)), float(np.sin(a))) for a in np.deg2rad([-90, 30, 150]))
    if shape == "star":
        angles = np.deg2rad(-90 + 36 * np.arange(10))
        radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.5)
        return tuple((float(r * np.cos(a)), float(r * np.sin(a))) for r, a in zip(radii, angles))
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


@lru_cache(maxsize=None)
def unit_area_and_extent(shape: str) -> tuple[float, float]:
    if shape == "circle":
        return float(np.pi), 1.0
    pts = np.asarray(unit_polygon(shape))
    x, y = pts[:, 0], pts[:, 1]
    area = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
    return area, float(np.abs(pts).max())


def shape_window(shape: str, cx: float, cy: float, radius: float, image_size: int) -> tuple[slice, slice]:
    """(rows, cols) slices of the image that contain every pixel of the shape."""
    reach = radius * unit_area_and_extent(shape)[1]
    s = image_size
    x0, y0 = max(0, int(np.floor(cx - reach)) - 1), max(0, int(np.floor(cy - reach)) - 1)
    x1, y1 = min(s, int(np.ceil(cx + reach)) + 2), min(s, int(np.ceil(cy + reach)) + 2)
    return slice(y0, max(y0, y1)), slice(x0, max(x0, x1))


def shape_mask(shape: str, cx: float, cy: float, radius: float, image_size: int,
               window: tuple[slice, slice] | None = None) -> np.ndarray:
    """(S, S) bool raster of the shape centred at (cx, cy) (pixel units, pixel centres at +0.5).

    Only ``window`` (default :func:`shape_window`) is rasterised: this runs a few times per generated sample."""
    rows, cols = window or shape_window(shape, cx, cy, radius, image_size)
    mask = np.zeros((image_size, image_size), dtype=bool)
    if rows.stop == rows.start or cols.stop == cols.start:
        return mask
    if shape == "circle":
        ys, xs = np.ogrid[rows, cols]
        mask[rows, cols] = (xs + 0.5 - cx) ** 2 + (ys + 0.5 - cy) ** 2 <= radius**2
        return mask
    canvas = Image.new("L", (cols.stop - cols.start, rows.stop - rows.start), 0)
    ImageDraw.Draw(canvas).polygon(
        [(cx - cols.start + radius * x, cy - rows.start + radius * y) for x, y in unit_polygon(shape)], fill=1)
    mask[rows, cols] = np.asarray(canvas).view(bool)
    return mask


def size_class(full_area: int, image_size: int) -> str:
    return "large" if full_area >= LARGE_MIN_AREA * image_size**2 else "small"


# ----------------------------------------------------------------------------------------------------------------
# scenes


@dataclass
class ObjectSpec:
    """What to paint: shape, colour, centre (x, y) in pixels and radius (see :func:`unit_polygon`)."""

    shape: str
    color: str
    center: tuple[float, float]
    radius: float


@dataclass
class ShapeObject:
    """One painted object. ``mask`` is what is visible after later objects were painted over it."""

    index: int              # paint order within the scene (0 = bottom)
    shape: str
    color: str
    size: str               # "small" / "large", by full area
    center: tuple[float, float]
    radius: float
    full_mask: np.ndarray   # (H, W) bool, unoccluded
    mask: np.ndarray        # (H, W) bool, visible
    position: str = ""      # cell of POSITIONS holding the visible centroid; "" when hidden
    window: tuple[slice, slice] = (slice(None), slice(None))   # rows/cols holding full_mask (for speed)

    @cached_property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask[self.window]))

    @property
    def visible(self) -> bool:
        return self.area > 0

    def _pixels(self) -> tuple[np.ndarray, np.ndarray]:
        rows, cols = np.nonzero(self.mask[self.window])
        return rows + (self.window[0].start or 0), cols + (self.window[1].start or 0)

    @cached_property
    def centroid(self) -> tuple[float, float]:
        """(x, y) mean of the visible pixel centres."""
        rows, cols = self._pixels()
        return float(cols.mean() + 0.5), float(rows.mean() + 0.5)

    @cached_property
    def bbox(self) -> tuple[int, int, int, int]:
        """Visible box (x0, y0, x1, y1), x1/y1 exclusive."""
        rows, cols = self._pixels()
        return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1

    def phrase(self, with_size: bool = True) -> str:
        return f"{self.size} {self.color} {self.shape}" if with_size else f"{self.color} {self.shape}"


@dataclass
class Scene:
    image: np.ndarray                     # (H, W, 3) uint8
    objects: list[ShapeObject]            # paint order, hidden ones included
    image_size: int
    image_id: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def visible_objects(self) -> list[ShapeObject]:
        return [o for o in self.objects if o.visible]


def textured_background(image_size: int, rng: np.random.Generator) -> np.ndarray:
    """A low-saturation grey texture: smooth blobs plus pixel noise, a faint tint, never a palette colour."""
    s = image_size
    coarse = rng.normal(0, 18, size=(6, 6)).astype(np.float32) + np.float32(rng.uniform(95, 165))
    smooth = np.asarray(Image.fromarray(coarse).resize((s, s), Image.BILINEAR))
    grey = (np.clip(smooth, 20, 230).astype(np.int16) + rng.integers(-9, 10, size=(s, s), dtype=np.int16)).astype(np.uint8)
    tint = rng.integers(0, 17, size=3)
    # (S, S) grey -> (S, S, 3) with a per-channel offset; grey lies in [11, 239] so nothing wraps
    return np.dstack([grey + np.uint8(t) for t in tint]) - np.uint8(8)


def _visible_masks(full_masks: Sequence[np.ndarray]) -> list[np.ndarray]:
    covered = np.zeros_like(full_masks[0])
    visible: list[np.ndarray] = [None] * len(full_masks)  # type: ignore[list-item]
    for i in range(len(full_masks) - 1, -1, -1):
        visible[i] = full_masks[i] & ~covered
        covered |= full_masks[i]
    return visible


def compose_scene(specs: Sequence[ObjectSpec], image_size: int, background: np.ndarray, image_id: str = "",
                  full_masks: Sequence[np.ndarray] | None = None) -> Scene:
    """Paint ``specs`` in order over ``background``.

    Objects left with a sliver (some pixels, but fewer than the visibility threshold) are dropped, because no
    expression could fairly name or exclude them; objects hidden completely stay in the scene as hidden objects.
    ``full_masks`` are the specs' rasters when the caller already has them (see :func:`shape_mask`).
    """
    if background.shape != (image_size, image_size, 3):
        raise ValueError(f"background has shape {background.shape}, expected {(image_size, image_size, 3)}")
    for spec in specs:
        if spec.shape not in SHAPES:
            raise ValueError(f"unknown shape {spec.shape!r}; expected one of {SHAPES}")
        if spec.color not in COLORS:
            raise ValueError(f"unknown colour {spec.color!r}; expected one of {tuple(COLORS)}")
    min_px = _scaled_pixels(MIN_VISIBLE_PIXELS_128, image_size)
    kept = list(specs)
    full = list(full_masks) if full_masks is not None else \
        [shape_mask(s.shape, s.center[0], s.center[1], s.radius, image_size) for s in kept]
    if len(full) != len(kept):
        raise ValueError(f"{len(kept)} specs but {len(full)} full masks")
    while True:
        vis = _visible_masks(full) if kept else []
        counts = [(np.count_nonzero(f), np.count_nonzero(v)) for f, v in zip(full, vis)]
        sliver = [i for i, (nf, nv) in enumerate(counts) if 0 < nv and (nv < min_px or nv < MIN_VISIBLE_SHARE * nf)]
        if not sliver:
            break
        kept = [s for i, s in enumerate(kept) if i not in sliver]
        full = [f for i, f in enumerate(full) if i not in sliver]
    image = background.copy()
    objects = []
    for i, (spec, f, v) in enumerate(zip(kept, full, vis)):
        window = shape_window(spec.shape, spec.center[0], spec.center[1], spec.radius, image_size)
        image[window][v[window]] = COLORS[spec.color]
        obj = ShapeObject(index=i, shape=spec.shape, color=spec.color,
                          size=size_class(int(np.count_nonzero(f)), image_size), center=spec.center,
                          radius=spec.radius, full_mask=f, mask=v, window=window)
        if obj.visible:
            x, y = obj.centroid
            obj.position = POSITIONS[min(2, int(3 * y / image_size))][min(2, int(3 * x / image_size))]
        objects.append(obj)
    return Scene(image=image, objects=objects, image_size=image_size, image_id=image_id)


def _touches(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether masks a and b (H, W) overlap or are 8-neighbours somewhere."""
    grown = a.copy()
    grown[1:] |= a[:-1]
    grown[:-1] |= a[1:]
    grown[:, 1:] |= grown[:, :-1].copy()
    grown[:, :-1] |= grown[:, 1:].copy()
    return bool((grown & b).any())


def separate_colours(specs: Sequence[ObjectSpec], full: Sequence[np.ndarray]) -> list[ObjectSpec]:
    """``specs`` (in painting order, with their full masks) where no object touches a visible earlier object of its
    own colour: such an object takes the next palette colour after its own that none of those it touches has.

    Two touching objects of one colour read as one blob: nobody could tell where the small blue circle ends and the
    large blue star begins, yet each would be named and segmented on its own. Deterministic (draws nothing from the
    generator), so scenes without such a contact are unchanged."""
    out: list[ObjectSpec] = []
    visible: list[np.ndarray] = []
    for spec, mask in zip(specs, full):
        taken = {o.color for o, v in zip(out, visible) if v.any() and _touches(mask, v)}
        start = COLOR_NAMES.index(spec.color)
        free = [COLOR_NAMES[(start + k) % len(COLOR_NAMES)] for k in range(len(COLOR_NAMES))]
        free = [c for c in free if c not in taken]
        out.append(spec if not free or free[0] == spec.color else replace(spec, color=free[0]))
        for v in visible:
            v &= ~mask
        visible.append(mask.copy())
    return out


def random_specs(rng: np.random.Generator, image_size: int, n_objects: int
                 ) -> tuple[list[ObjectSpec], list[np.ndarray]]:
    """Random shapes placed so that, where possible, every earlier object keeps half of itself visible.

    Returns the specs and their full masks."""
    specs: list[ObjectSpec] = []
    full: list[np.ndarray] = []
    visible: list[np.ndarray] = []
    s = image_size
    for _ in range(n_objects):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        color = COLOR_NAMES[int(rng.integers(len(COLOR_NAMES)))]
        lo, hi = SMALL_AREA if rng.random() < 0.5 else LARGE_AREA
        unit_area, extent = unit_area_and_extent(shape)
        radius = float(np.sqrt(rng.uniform(lo, hi) * s * s / unit_area))
        margin = min(radius * extent, s / 2 - 1)
        keep = [np.count_nonzero(v) - 0.5 * np.count_nonzero(f) for v, f in zip(visible, full)]
        for _attempt in range(12):
            center = (float(rng.uniform(margin, s - margin)), float(rng.uniform(margin, s - margin)))
            window = shape_window(shape, center[0], center[1], radius, s)
            mask = shape_mask(shape, center[0], center[1], radius, s, window)
            if all(np.count_nonzero(v[window] & mask[window]) <= k for v, k in zip(visible, keep)):
                break
        specs.append(ObjectSpec(shape, color, center, radius))
        full.append(mask)
        for v in visible:
            v[window] &= ~mask[window]
        visible.append(mask.copy())
    return separate_colours(specs, full), full


def scene_and_rng(split: str, index: int, seed: int, image_size: int, attempt: int, plain: bool = False
                   ) -> tuple[Scene, np.random.Generator]:
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32, got {image_size}")
    rng = make_rng(seed, split, index, 0, attempt)
    background = textured_background(image_size, rng)
    specs, full = random_specs(rng, image_size, int(rng.integers(2, 7)))
    from pixelsail.data import shapes_render  # imported here: it builds on this module

    look = None
    if shapes_render.is_perturbed_split(split):  # a held-out rendering: resized objects, other pixels
        look, specs, full = shapes_render.perturb_specs(split, index, seed, attempt, specs, image_size)
        specs = separate_colours(specs, full)       # resized objects may touch where the originals did not
    scene = compose_scene(specs, image_size, background, full_masks=full,
                          image_id=f"shapes-{split}-{seed}-{index}" + (f"-{attempt}" if attempt else ""))
    scene.meta.update(split=split, index=index, seed=seed, attempt=attempt)
    if look is not None and not plain:
        shapes_render.repaint(scene, look)
    return scene, rng


def generate_scene(split: str = "train", index: int = 0, seed: int = 0, image_size: int = 128,
                   attempt: int = 0, plain: bool = False) -> Scene:
    """The scene number ``index`` of ``split`` (``attempt`` > 0 gives fresh scenes for the same index).

    ``plain`` draws a ``*_perturbed`` split's scene with the ordinary renderer (same objects and masks)."""
    return scene_and_rng(split, index, seed, image_size, attempt, plain)[0]
