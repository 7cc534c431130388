"""The shapes world: seeded scenes of coloured shapes with exact masks, and samples for every task.

A scene is a textured grey background with 2-6 flat-coloured shapes painted in order, so later shapes occlude
earlier ones. Each object keeps its full (unoccluded) mask and its *visible* mask. An object is either visible
(enough pixels, see :func:`compose_scene`) or fully hidden; a hidden object is never the target or the subject of
any expression. Everything is deterministic in (split, index, seed): the random stream is seeded from all three,
so splits share no scene.

The language is deliberately small and regular so a tiny model can learn it in minutes on a CPU:

* attributes: size (small/large, by full area), colour (:data:`COLORS`), shape (:data:`SHAPES`);
* relations between visible centroids: "left of", "right of", "above", "below";
* positions: a 3x3 grid of the visible centroid (:data:`POSITIONS`).
"""
from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Callable, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from pixelsail.data.llava import text_only_image
from pixelsail.data.registry import register_dataset
from pixelsail.data.sample import Sample
from pixelsail.prompts import box_to_mask, point_to_mask
from pixelsail.tokens import DEFAULT_NUM_VP_TOKENS, NO_TARGET_ANSWER, PHRASE_END, PHRASE_START, SEG, vp_token

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
SHAPES_TASKS: tuple[str, ...] = ("res", "gres", "vp_qa", "vp_mcq", "region_caption", "vt_res", "gcg")
MCQ_LETTERS = "ABCD"

# full-area ranges as fractions of image area; the gap between them makes the size class unambiguous
SMALL_AREA = (0.012, 0.025)
LARGE_AREA = (0.05, 0.10)
LARGE_MIN_AREA = 0.035
# an object is visible if it shows at least this many pixels (at 128x128; scaled by area) and this share of itself
MIN_VISIBLE_PIXELS_128 = 25
MIN_VISIBLE_SHARE = 0.2
# a region caption says "partly covered by X" when X hides at least this many of its pixels (at 128x128)
OCCLUSION_MIN_PIXELS_128 = 12
# a relation or left/right question is only asked when every compared centroid differs by this share of the image
RELATION_MARGIN = 0.06
ABSENT_PROMPT_RATE = 0.05
LARGER_MIN_RATIO = 1.5
BACKGROUND_MAX_SPREAD = 24     # max - min over RGB of any background pixel (objects are far more saturated)

RES_TEMPLATES = ("Please segment {}.", "Segment {}.", "Can you segment {}?")
CAPTION_QUESTIONS = ("Describe {} in detail.", "Please describe {}.")
GCG_QUESTIONS = ("Describe the image and segment each object.", "What is in the image? Answer with grounded phrases.")
VT_RES_KINDS = ("colour", "shape")


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
def _unit_area_and_extent(shape: str) -> tuple[float, float]:
    if shape == "circle":
        return float(np.pi), 1.0
    pts = np.asarray(unit_polygon(shape))
    x, y = pts[:, 0], pts[:, 1]
    area = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
    return area, float(np.abs(pts).max())


def shape_window(shape: str, cx: float, cy: float, radius: float, image_size: int) -> tuple[slice, slice]:
    """(rows, cols) slices of the image that contain every pixel of the shape."""
    reach = radius * _unit_area_and_extent(shape)[1]
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
        unit_area, extent = _unit_area_and_extent(shape)
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
    return specs, full


def _scene_and_rng(split: str, index: int, seed: int, image_size: int, attempt: int, plain: bool = False
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
    return _scene_and_rng(split, index, seed, image_size, attempt, plain)[0]


# ----------------------------------------------------------------------------------------------------------------
# language


ATTRIBUTES = ("size", "color", "shape")
# attribute subsets an expression may use, most natural first
DESCRIPTOR_KEYS: tuple[tuple[str, ...], ...] = (
    ("shape",), ("color", "shape"), ("size", "shape"), ("size", "color", "shape"), ("color",), ("size", "color"),
    ("size",),
)


def describe(attrs: Mapping[str, str], plural: bool = False) -> str:
    """"small red circle", "red object", "large triangles", ..."""
    noun = attrs.get("shape", "object")
    words = [attrs[k] for k in ("size", "color") if k in attrs] + [noun + ("s" if plural else "")]
    return " ".join(words)


def matches(obj: ShapeObject, attrs: Mapping[str, str]) -> bool:
    return all(getattr(obj, k) == v for k, v in attrs.items())


def attributes_of(obj: ShapeObject, keys: Sequence[str]) -> dict[str, str]:
    return {k: getattr(obj, k) for k in keys}


def relation_holds(a: ShapeObject, b: ShapeObject, relation: str) -> bool:
    (ax, ay), (bx, by) = a.centroid, b.centroid
    return {"left of": ax < bx, "right of": ax > bx, "above": ay < by, "below": ay > by}[relation]


def _relation_gap(a: ShapeObject, b: ShapeObject, relation: str) -> float:
    (ax, ay), (bx, by) = a.centroid, b.centroid
    return abs(ax - bx) if relation in ("left of", "right of") else abs(ay - by)


def reading_order(objects: Sequence[ShapeObject]) -> list[ShapeObject]:
    """Top-to-bottom, then left-to-right, by visible centroid."""
    return sorted(objects, key=lambda o: (o.centroid[1], o.centroid[0]))


def seg_answer(n: int) -> str:
    """"Sure, [SEG]." / "Sure, [SEG] and [SEG]." / "Sure, [SEG], [SEG] and [SEG]."; "No target." for n = 0."""
    if n == 0:
        return NO_TARGET_ANSWER
    segs = [SEG] * n
    listed = segs[0] if n == 1 else ", ".join(segs[:-1]) + " and " + segs[-1]
    return f"Sure, {listed}."


def unique_descriptions(target: ShapeObject, visible: Sequence[ShapeObject]) -> list[dict[str, str]]:
    out = []
    for keys in DESCRIPTOR_KEYS:
        attrs = attributes_of(target, keys)
        if [o for o in visible if matches(o, attrs)] == [target]:
            out.append(attrs)
    return out


def _pick(rng: np.random.Generator, items: Sequence):
    return items[int(rng.integers(len(items)))]


@dataclass
class Referral:
    """An expression and the visible objects it denotes."""

    expression: str
    targets: list[ShapeObject]
    kind: str               # "attribute" | "relation" | "multi" | "no_target"


def attribute_referrals(scene: Scene) -> list[Referral]:
    """Every (target, minimal-ish unique description) pair of the scene."""
    vis = scene.visible_objects
    return [Referral("the " + describe(a), [t], "attribute") for t in vis for a in unique_descriptions(t, vis)]


def relation_referrals(scene: Scene) -> list[Referral]:
    """"the triangle left of the blue square": the anchor is named uniquely, the relation singles out the target
    among at least two candidates, and every candidate is clearly on one side of the anchor."""
    vis = scene.visible_objects
    margin = RELATION_MARGIN * scene.image_size
    out = []
    for anchor in vis:
        anchor_descs = unique_descriptions(anchor, vis)
        if not anchor_descs:
            continue
        anchor_desc = anchor_descs[0]
        for keys in DESCRIPTOR_KEYS[:4]:
            groups: dict[tuple, list[ShapeObject]] = {}
            for o in vis:
                if o is not anchor:
                    groups.setdefault(tuple(attributes_of(o, keys).items()), []).append(o)
            for attrs, cands in groups.items():
                if len(cands) < 2:
                    continue
                for rel in RELATIONS:
                    if any(_relation_gap(c, anchor, rel) < margin for c in cands):
                        continue
                    hits = [c for c in cands if relation_holds(c, anchor, rel)]
                    if len(hits) == 1:
                        expr = f"the {describe(dict(attrs))} {rel} the {describe(anchor_desc)}"
                        out.append(Referral(expr, hits, "relation"))
    return out


def multi_referrals(scene: Scene) -> list[Referral]:
    """"all green objects" for every attribute combination shared by at least two visible objects."""
    vis = scene.visible_objects
    seen: dict[str, Referral] = {}
    for keys in DESCRIPTOR_KEYS:
        for o in vis:
            attrs = attributes_of(o, keys)
            expr = "all " + describe(attrs, plural=True)
            if expr not in seen:
                hits = [v for v in vis if matches(v, attrs)]
                if len(hits) >= 2:
                    seen[expr] = Referral(expr, reading_order(hits), "multi")
    return list(seen.values())


def no_target_referral(scene: Scene, rng: np.random.Generator) -> Referral:
    """An expression that matches no visible object, often one that matches a hidden one or a near miss."""
    vis = scene.visible_objects
    hidden = [o for o in scene.objects if not o.visible]
    for _ in range(50):
        keys = _pick(rng, DESCRIPTOR_KEYS[:5])
        if hidden and rng.random() < 0.5:
            attrs = attributes_of(_pick(rng, hidden), keys)
        else:
            attrs = {"size": str(_pick(rng, SIZES)), "color": str(_pick(rng, list(COLORS))),
                     "shape": str(_pick(rng, SHAPES))}
            attrs = {k: attrs[k] for k in keys}
        if not any(matches(o, attrs) for o in vis):
            plural = rng.random() < 0.3
            return Referral(("all " if plural else "the ") + describe(attrs, plural=plural), [], "no_target")
    # every colour/shape combination is present: fall back to a full description, which cannot all be present
    for size in SIZES:
        for color in COLORS:
            for shape in SHAPES:
                attrs = {"size": size, "color": color, "shape": shape}
                if not any(matches(o, attrs) for o in vis):
                    return Referral("the " + describe(attrs), [], "no_target")
    raise AssertionError("unreachable: more visible objects than attribute combinations")


# ----------------------------------------------------------------------------------------------------------------
# visual prompts


PROMPT_KINDS = ("mask", "box", "point")


def prompt_mask_for(obj: ShapeObject, kind: str, rng: np.random.Generator, image_size: int) -> np.ndarray:
    if kind == "mask":
        return obj.mask.copy()
    if kind == "box":
        return box_to_mask(obj.bbox, image_size, image_size)
    if kind == "point":
        interior = obj.mask.copy()
        interior[1:-1, 1:-1] &= (obj.mask[:-2, 1:-1] & obj.mask[2:, 1:-1] & obj.mask[1:-1, :-2] & obj.mask[1:-1, 2:])
        rows, cols = np.nonzero(interior if interior.any() else obj.mask)
        j = int(rng.integers(rows.size))
        return point_to_mask((cols[j] + 0.5, rows[j] + 0.5), image_size, image_size, radius=max(2.0, image_size / 48))
    raise ValueError(f"unknown prompt kind {kind!r}; expected one of {PROMPT_KINDS}")


@dataclass
class _Prompting:
    ids: list[int]
    prompts: dict[int, np.ndarray]
    meta: dict


def _prompt_objects(objs: Sequence[ShapeObject], rng: np.random.Generator, image_size: int,
                    n_ids: int = DEFAULT_NUM_VP_TOKENS) -> _Prompting:
    ids = [int(k) for k in rng.choice(n_ids, size=len(objs), replace=False)]
    kinds = [str(_pick(rng, PROMPT_KINDS)) for _ in objs]
    prompts = {k: prompt_mask_for(o, kind, rng, image_size) for k, o, kind in zip(ids, objs, kinds)}
    meta = {"prompt_objects": {k: o.index for k, o in zip(ids, objs)},
            "prompt_kinds": dict(zip(ids, kinds))}
    return _Prompting(ids, prompts, meta)


# ----------------------------------------------------------------------------------------------------------------
# samples, one builder per task; each returns None when the scene cannot support the task


def _sample(scene: Scene, task: str, question: str, reply: str, masks: Sequence[np.ndarray] = (),
            prompts: Mapping[int, np.ndarray] | None = None, **meta) -> Sample:
    base = {"split": scene.meta.get("split", ""), "index": scene.meta.get("index", 0),
            "seed": scene.meta.get("seed", 0), "attempt": scene.meta.get("attempt", 0),
            "ref_id": f"{scene.image_id}-{task}", "no_target": False, "target_ids": []}
    base.update(meta)
    return Sample(image=scene.image, turns=[(question, reply)], masks=[m.copy() for m in masks],
                  prompts=dict(prompts or {}), task=task, image_id=scene.image_id, meta=base)


def _referral_sample(scene: Scene, task: str, ref: Referral, rng: np.random.Generator) -> Sample:
    question = _pick(rng, RES_TEMPLATES).format(ref.expression)
    return _sample(scene, task, question, seg_answer(len(ref.targets)), [t.mask for t in ref.targets],
                   expression=ref.expression, expression_kind=ref.kind, no_target=not ref.targets,
                   target_ids=[t.index for t in ref.targets])


def make_res(scene: Scene, rng: np.random.Generator) -> Sample | None:
    relations = relation_referrals(scene)
    pool = relations if relations and rng.random() < 0.4 else attribute_referrals(scene)
    if not pool:
        return None
    return _referral_sample(scene, "res", _pick(rng, pool), rng)


def make_gres(scene: Scene, rng: np.random.Generator) -> Sample | None:
    multi = multi_referrals(scene)
    if multi and rng.random() < 0.65:
        ref = _pick(rng, multi)
    else:
        ref = no_target_referral(scene, rng)
    return _referral_sample(scene, "gres", ref, rng)


def _absent_prompt_sample(scene: Scene, task: str, rng: np.random.Generator, question_for: Callable[[str], str]):
    vis = scene.visible_objects
    present = _prompt_objects([_pick(rng, vis)], rng, scene.image_size)
    absent = int(_pick(rng, [k for k in range(DEFAULT_NUM_VP_TOKENS) if k not in present.ids]))
    tag = vp_token(absent)
    return _sample(scene, task, question_for(tag), f"{tag} is not in the image.", prompts=present.prompts,
                   absent_prompt=absent, **present.meta)


VP_QA_KINDS = ("colour", "shape", "size", "what", "where")


def make_vp_qa(scene: Scene, rng: np.random.Generator) -> Sample | None:
    vis = scene.visible_objects
    if not vis:
        return None
    kind = str(_pick(rng, VP_QA_KINDS))
    questions = {"colour": "What colour is {}?", "shape": "What shape is {}?", "size": "Is {} small or large?",
                 "what": "What is {}?", "where": "Where is {}?"}
    if rng.random() < ABSENT_PROMPT_RATE:
        return _absent_prompt_sample(scene, "vp_qa", rng, questions[kind].format)
    obj = _pick(rng, vis)
    p = _prompt_objects([obj], rng, scene.image_size)
    tag = vp_token(p.ids[0])
    value = {"colour": obj.color, "shape": obj.shape, "size": obj.size, "what": "a " + obj.phrase(),
             "where": "in the " + obj.position}[kind]
    return _sample(scene, "vp_qa", questions[kind].format(tag), f"{tag}: {value}.", prompts=p.prompts,
                   question_kind=kind, target_ids=[obj.index], **p.meta)


def mcq_question(stem: str, options: Sequence[str]) -> str:
    listed = " ".join(f"({MCQ_LETTERS[i]}) {o}" for i, o in enumerate(options))
    return f"{stem} {listed}. Answer with the option's letter."


def make_vp_mcq(scene: Scene, rng: np.random.Generator) -> Sample | None:
    vis = scene.visible_objects
    if not vis:
        return None
    margin = RELATION_MARGIN * scene.image_size
    pairs_larger = [(a, b) for a in vis for b in vis if a.area >= LARGER_MIN_RATIO * b.area]
    pairs_side = [(a, b) for a in vis for b in vis if a is not b and abs(a.centroid[0] - b.centroid[0]) >= margin]
    kinds = ["colour", "shape"] + (["larger"] if pairs_larger else []) + (["side"] if pairs_side else [])
    kind = str(_pick(rng, kinds))
    if kind in ("colour", "shape"):
        obj = _pick(rng, vis)
        p = _prompt_objects([obj], rng, scene.image_size)
        tag = vp_token(p.ids[0])
        correct = obj.color if kind == "colour" else obj.shape
        pool = [c for c in (COLORS if kind == "colour" else SHAPES) if c != correct]
        options = [str(c) for c in rng.choice(pool, size=3, replace=False)] + [correct]
        stem = f"What colour is {tag}?" if kind == "colour" else f"What shape is {tag}?"
        target_ids = [obj.index]
    elif kind == "larger":
        big, small = _pick(rng, pairs_larger)
        p = _prompt_objects([big, small], rng, scene.image_size)
        options = [vp_token(k) for k in p.ids]
        correct = options[0]
        stem = f"Which is larger, {options[0]} or {options[1]}?" if rng.random() < 0.5 else \
            f"Which is larger, {options[1]} or {options[0]}?"
        target_ids = [big.index, small.index]
    else:
        a, b = _pick(rng, pairs_side)
        p = _prompt_objects([a, b], rng, scene.image_size)
        ta, tb = (vp_token(k) for k in p.ids)
        options = ["left", "right"]
        correct = "left" if a.centroid[0] < b.centroid[0] else "right"
        stem = f"Is {ta} left or right of {tb}?"
        target_ids = [a.index, b.index]
    order = rng.permutation(len(options))
    options = [options[i] for i in order]
    letter = MCQ_LETTERS[options.index(correct)]
    return _sample(scene, "vp_mcq", mcq_question(stem, options), f"({letter}) {correct}.", prompts=p.prompts,
                   question_kind=kind, answer=f"({letter})", choices=options, correct=correct,
                   target_ids=target_ids, **p.meta)


def occluders(scene: Scene, obj: ShapeObject) -> list[ShapeObject]:
    """Objects hiding at least the threshold number of ``obj``'s pixels, most hiding first."""
    min_px = _scaled_pixels(OCCLUSION_MIN_PIXELS_128, scene.image_size)
    counts = [(int((obj.full_mask & o.mask).sum()), o) for o in scene.objects[obj.index + 1:]]
    return [o for n, o in sorted(counts, key=lambda c: (-c[0], c[1].index)) if n >= min_px]


def region_caption(scene: Scene, obj: ShapeObject) -> str:
    """"a large blue square in the top left, partly covered by a red circle and a green star"."""
    text = f"a {obj.phrase()} in the {obj.position}"
    covering = [f"a {o.phrase(with_size=False)}" for o in occluders(scene, obj)]
    if covering:
        listed = covering[0] if len(covering) == 1 else ", ".join(covering[:-1]) + " and " + covering[-1]
        text += f", partly covered by {listed}"
    return text


def make_region_caption(scene: Scene, rng: np.random.Generator) -> Sample | None:
    vis = scene.visible_objects
    if not vis:
        return None
    template = _pick(rng, CAPTION_QUESTIONS)
    if rng.random() < ABSENT_PROMPT_RATE:
        return _absent_prompt_sample(scene, "region_caption", rng, template.format)
    obj = _pick(rng, vis)
    p = _prompt_objects([obj], rng, scene.image_size)
    tag = vp_token(p.ids[0])
    return _sample(scene, "region_caption", template.format(tag), f"{tag}: {region_caption(scene, obj)}.",
                   prompts=p.prompts, target_ids=[obj.index], caption=region_caption(scene, obj), **p.meta)


def make_vt_res(scene: Scene, rng: np.random.Generator) -> Sample | None:
    """"Segment the object with the same colour as <vp_k>." when exactly one other visible object qualifies."""
    vis = scene.visible_objects
    options = []
    for kind in VT_RES_KINDS:
        attr = "color" if kind == "colour" else "shape"
        for o in vis:
            same = [v for v in vis if v is not o and getattr(v, attr) == getattr(o, attr)]
            if len(same) == 1:
                options.append((kind, o, same[0]))
    if not options:
        return None
    kind, anchor, target = _pick(rng, options)
    p = _prompt_objects([anchor], rng, scene.image_size)
    tag = vp_token(p.ids[0])
    question = f"Segment the object with the same {kind} as {tag}."
    return _sample(scene, "vt_res", question, seg_answer(1), [target.mask], prompts=p.prompts,
                   expression=f"the object with the same {kind} as {tag}", vt_kind=kind,
                   target_ids=[target.index], **p.meta)


def gcg_answer(objects: Sequence[ShapeObject]) -> str:
    """"There is a <p> large red circle </p> [SEG], a <p> small blue star </p> [SEG] and ..."."""
    parts = [f"a {PHRASE_START} {o.phrase()} {PHRASE_END} {SEG}" for o in objects]
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"There is {listed}."


def make_gcg(scene: Scene, rng: np.random.Generator) -> Sample | None:
    vis = reading_order(scene.visible_objects)
    if not vis:
        return None
    return _sample(scene, "gcg", _pick(rng, GCG_QUESTIONS), gcg_answer(vis), [o.mask for o in vis],
                   target_ids=[o.index for o in vis])


TASK_BUILDERS: dict[str, Callable[[Scene, np.random.Generator], Sample | None]] = {
    "res": make_res, "gres": make_gres, "vp_qa": make_vp_qa, "vp_mcq": make_vp_mcq,
    "region_caption": make_region_caption, "vt_res": make_vt_res, "gcg": make_gcg,
}


def make_sample(split: str, index: int, task: str, seed: int = 0, image_size: int = 128,
                max_attempts: int = 50, plain: bool = False) -> Sample:
    """A ``task`` sample for scene ``index`` of ``split``; scenes that cannot support the task are re-drawn."""
    if task not in TASK_BUILDERS:
        raise ValueError(f"unknown shapes task {task!r}; expected one of {SHAPES_TASKS}")
    for attempt in range(max_attempts):
        # the sample draws from where the scene's stream stopped: the scene never depends on the task
        scene, rng = _scene_and_rng(split, index, seed, image_size, attempt, plain)
        sample = TASK_BUILDERS[task](scene, rng)
        if sample is not None:
            return sample
    raise RuntimeError(f"no scene for task {task!r} at {split}[{index}] after {max_attempts} attempts")


# ----------------------------------------------------------------------------------------------------------------
# dataset


def _task_weights(tasks: Mapping[str, float] | Sequence[str] | None) -> tuple[list[str], np.ndarray]:
    if tasks is None:
        tasks = {t: 1.0 for t in SHAPES_TASKS}
    elif not isinstance(tasks, Mapping):
        tasks = {t: 1.0 for t in tasks}
    for t, w in tasks.items():
        if t not in TASK_BUILDERS:
            raise ValueError(f"unknown shapes task {t!r}; expected one of {SHAPES_TASKS}")
        if not (float(w) >= 0):
            raise ValueError(f"task weight for {t!r} must be >= 0, got {w!r}")
    names = [t for t, w in tasks.items() if float(w) > 0]
    if not names:
        raise ValueError("at least one task needs a positive weight")
    weights = np.array([float(tasks[t]) for t in names])
    return names, weights / weights.sum()


class ShapesDataset:
    """Map-style dataset of shapes-world Samples; ``ds[i]`` depends only on (split, seed, image_size, tasks, i)."""

    def __init__(self, split: str = "train", tasks: Mapping[str, float] | Sequence[str] | None = None,
                 image_size: int = 128, size: int = 10000, seed: int = 0):
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        self.split, self.image_size, self.size, self.seed = split, int(image_size), int(size), int(seed)
        self.task_names, self.task_probs = _task_weights(tasks)

    def __len__(self) -> int:
        return self.size

    def task_of(self, index: int) -> str:
        rng = make_rng(self.seed, self.split, index, 2)
        return self.task_names[int(rng.choice(len(self.task_names), p=self.task_probs))]

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for ShapesDataset of size {self.size}")
        return make_sample(self.split, int(index), self.task_of(index), self.seed, self.image_size)


def _trainable_split(kwargs: Mapping) -> None:
    """Registry datasets feed training mixtures: a held-out rendering split (``*_perturbed``) is refused there."""
    from pixelsail.data.shapes_render import refuse_for_training

    refuse_for_training(str(kwargs.get("split", "train")))


@register_dataset("shapes")
def build_shapes(**kwargs) -> ShapesDataset:
    _trainable_split(kwargs)
    return ShapesDataset(**kwargs)


ECHO_TASKS: tuple[str, ...] = ("res", "gres", "vt_res", "vp_qa", "vp_mcq")


class ShapesEchoDataset:
    """Text-only samples for a language warm-up: a shapes question answered by repeating what it refers to.

    "Please segment the red circle left of the blue star." -> "Sure, [SEG] the red circle left of the blue star."
    "What colour is <vp_3>? ..." -> "<vp_3>."

    A model trained from scratch behind an image prefix is slow to learn that an answer token should look back at
    the question (docs/TRAINING.md); without the image it learns that copy in a few dozen steps, and keeps it when
    the images come. The [SEG] here is a plain token: it learns to attend to the expression it will stand for.
    """

    def __init__(self, split: str = "train", tasks: Mapping[str, float] | Sequence[str] | None = None,
                 size: int = 10000, seed: int = 0, image_size: int = 128):
        self.source = ShapesDataset(split, tasks=tasks if tasks is not None else {t: 1.0 for t in ECHO_TASKS},
                                    image_size=image_size, size=size, seed=seed)
        bad = [t for t in self.source.task_names if t not in ECHO_TASKS]
        if bad:
            raise ValueError(f"shapes_echo cannot echo task(s) {bad}; it echoes {ECHO_TASKS}")

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Sample:
        sample = self.source[index]
        question = sample.turns[0][0]
        expression = sample.meta.get("expression")
        if expression:
            answer = f"Sure, {SEG} {expression}."
        else:
            tags = re.findall(r"<vp_\d+>", question)
            answer = f"{tags[0]}." if tags else NO_TARGET_ANSWER
        return Sample(image=text_only_image(), turns=[(question, answer)], task="vqa",
                      image_id=f"text:{sample.image_id}", meta={"text_only": True, "source": "shapes_echo"})


@register_dataset("shapes_echo")
def build_shapes_echo(**kwargs) -> ShapesEchoDataset:
    _trainable_split(kwargs)
    return ShapesEchoDataset(**kwargs)


# ----------------------------------------------------------------------------------------------------------------
# tokenizer corpus


def vocabulary_sentences() -> list[str]:
    """Sentences that together use every word and template the generator can emit."""
    out = [NO_TARGET_ANSWER, seg_answer(1), seg_answer(2), seg_answer(3), "Answer with the option's letter."]
    out += [t.format("x") for t in RES_TEMPLATES + CAPTION_QUESTIONS] + list(GCG_QUESTIONS)
    for size in SIZES:
        for color in COLORS:
            for shape in SHAPES:
                out.append(f"the {size} {color} {shape} and all {size} {color} {shape}s")
    out += [f"all {size} objects, all {color} objects" for size in SIZES for color in COLORS]
    out += [f"{rel} the {pos}" for rel in RELATIONS for row in POSITIONS for pos in row]
    out += [f"{vp_token(k)}: is not in the image. What colour shape Is small or large? Where is "
            f"Which is larger, or left right of Segment the object with the same colour as shape as "
            f"partly covered by a There is {PHRASE_START} {PHRASE_END}" for k in range(DEFAULT_NUM_VP_TOKENS)]
    out += [" ".join(f"({letter})" for letter in MCQ_LETTERS)]
    return out


def shapes_text_corpus(n: int = 2000, seed: int = 0) -> list[str]:
    """Text for training a tokenizer: :func:`vocabulary_sentences` (every word the generator can emit) plus the
    questions and answers of ``n`` samples (realistic word frequencies for BPE merges)."""
    return list(_text_corpus(max(int(n), 0), int(seed)))


@lru_cache(maxsize=4)
def _text_corpus(n: int, seed: int) -> tuple[str, ...]:
    ds = ShapesDataset("train", size=n, seed=seed, image_size=64)
    texts = vocabulary_sentences()
    for i in range(len(ds)):
        for q, a in ds[i].turns:
            texts += [q, a]
    return tuple(texts)
