"""Visual prompts (masks, boxes, points, scribbles) as (H, W) bool masks.

Every prompt reaches the model as a mask; boxes, points and scribbles are rasterised here so that the data
generator, the predictor and the web demo agree on what a box or a click covers.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw


def _check_size(h: int, w: int) -> None:
    if int(h) <= 0 or int(w) <= 0:
        raise ValueError(f"image size must be positive, got h={h}, w={w}")


def _as_numbers(values: Sequence, n: int, what: str) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be {n} numbers, got {values!r}") from None
    if len(out) != n or not all(np.isfinite(out)):
        raise ValueError(f"{what} must be {n} finite numbers, got {values!r}")
    return out


def box_to_mask(box: Sequence[float], h: int, w: int) -> np.ndarray:
    """Pixels of the box (x0, y0, x1, y1) in pixel coordinates, x1/y1 exclusive, clipped to the image.

    A box must overlap the image and have positive width and height.
    """
    _check_size(h, w)
    x0, y0, x1, y1 = _as_numbers(box, 4, "box (x0, y0, x1, y1)")
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box {tuple(box)} is empty: need x0 < x1 and y0 < y1")
    c0, r0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
    c1, r1 = min(w, int(np.ceil(x1))), min(h, int(np.ceil(y1)))
    if c1 <= c0 or r1 <= r0:
        raise ValueError(f"box {tuple(box)} lies outside the {w}x{h} image")
    mask = np.zeros((h, w), dtype=bool)
    mask[r0:r1, c0:c1] = True
    return mask


def point_to_mask(point: Sequence[float], h: int, w: int, radius: float = 3.0) -> np.ndarray:
    """A disc of ``radius`` pixels around the point (x, y); the point must lie inside the image."""
    _check_size(h, w)
    x, y = _as_numbers(point, 2, "point (x, y)")
    if not (0 <= x < w and 0 <= y < h):
        raise ValueError(f"point {tuple(point)} lies outside the {w}x{h} image")
    if radius < 0:
        raise ValueError(f"point radius must be >= 0, got {radius}")
    rows, cols = np.ogrid[:h, :w]
    mask = (cols + 0.5 - x) ** 2 + (rows + 0.5 - y) ** 2 <= radius**2
    mask[int(y), int(x)] = True
    return mask


def scribble_to_mask(points: Sequence[Sequence[float]], h: int, w: int, width: int = 5) -> np.ndarray:
    """A polyline through ``points`` [(x, y), ...] drawn ``width`` pixels wide; at least one point must be inside."""
    _check_size(h, w)
    pts = [_as_numbers(p, 2, f"scribble point {i}") for i, p in enumerate(points)]
    if not pts:
        raise ValueError("scribble needs at least one point")
    if not any(0 <= x < w and 0 <= y < h for x, y in pts):
        raise ValueError(f"scribble lies entirely outside the {w}x{h} image")
    if width < 1:
        raise ValueError(f"scribble width must be >= 1, got {width}")
    canvas = Image.new("1", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    if len(pts) > 1:
        draw.line(pts, fill=1, width=int(width), joint="curve")
    r = width / 2
    for x, y in pts:
        draw.ellipse((x - r, y - r, x + r, y + r), fill=1)
    return np.array(canvas, dtype=bool)


def as_prompt_mask(prompt, h: int, w: int, point_radius: float = 3.0) -> np.ndarray:
    """Turn a mask (bool or 0/1 array of shape (h, w)), a box (x0, y0, x1, y1) or a point (x, y) into a bool mask."""
    _check_size(h, w)
    arr = np.asarray(prompt)
    if arr.ndim == 2:
        if arr.shape != (h, w):
            raise ValueError(f"prompt mask has shape {arr.shape}, image is {(h, w)}")
        if arr.dtype != bool:
            if not np.isin(arr, (0, 1)).all():
                raise ValueError("prompt mask must be boolean or contain only 0 and 1")
            arr = arr.astype(bool)
        if not arr.any():
            raise ValueError("prompt mask is empty")
        return arr.copy()
    if arr.ndim == 1 and arr.shape[0] == 4:
        return box_to_mask(arr, h, w)
    if arr.ndim == 1 and arr.shape[0] == 2:
        return point_to_mask(arr, h, w, radius=point_radius)
    raise ValueError(
        f"cannot read a visual prompt of shape {arr.shape}: give an (H, W) mask, a box (x0, y0, x1, y1) or a point (x, y)")
