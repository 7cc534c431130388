"""The shapes world's referring language: how an object is described and which expressions pick out what.

The language is deliberately small and regular so a tiny model can learn it in minutes on a CPU:

* attributes: size (small/large, by full area), colour (``COLORS``), shape (``SHAPES``);
* relations between visible centroids: "left of", "right of", "above", "below";
* positions: a 3x3 grid of the visible centroid (``POSITIONS``).

:mod:`~pixelsail.data.shapes_tasks` turns these expressions into samples.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from pixelsail.data.shapes_scene import COLORS, RELATIONS, SHAPES, SIZES, Scene, ShapeObject
from pixelsail.tokens import seg_answer  # noqa: F401 (seg_answer: re-exported)

# a relation or left/right question is only asked when every compared centroid differs by this share of the image
RELATION_MARGIN = 0.06


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
