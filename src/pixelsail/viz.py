"""Pictures a person can read: masks over images, visual prompts, captioned grids."""
from __future__ import annotations

import textwrap
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# distinct, saturated colours for overlays (RGB)
MASK_COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 56, 56), (56, 160, 255), (255, 214, 0), (0, 200, 120), (200, 80, 255),
    (255, 140, 0), (0, 220, 220), (255, 80, 180), (140, 255, 60), (120, 120, 255),
)


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    return image


def _check_mask(mask: np.ndarray, shape: tuple[int, int], name: str) -> np.ndarray:
    mask = np.asarray(mask).astype(bool)
    if mask.shape != shape:
        raise ValueError(f"{name} has shape {mask.shape}, image is {shape}")
    return mask


def mask_boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with at least one 4-neighbour outside it (the image border counts as outside)."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def contrasting_colors(image: np.ndarray, masks: Sequence[np.ndarray],
                       palette: Sequence[tuple[int, int, int]] = MASK_COLORS) -> list[tuple[int, int, int]]:
    """One palette colour per mask: of the colours not yet taken, the one farthest (in RGB) from the mean colour of
    the pixels the mask covers. A red overlay on a red object showed only its outline; each mask now stands out
    from what it covers, and the masks of one answer stay told apart (the palette repeats after its 10 colours)."""
    image = _check_image(image)
    chosen: list[tuple[int, int, int]] = []
    for i, mask in enumerate(masks):
        mask = _check_mask(mask, image.shape[:2], f"mask {i}")
        free = [c for c in palette if c not in chosen] or list(palette)
        if not mask.any():
            chosen.append(free[0])
            continue
        mean = image[mask].astype(np.float32).mean(axis=0)
        chosen.append(max(free, key=lambda c: float(((np.asarray(c, np.float32) - mean) ** 2).sum())))
    return chosen


def overlay_masks(image: np.ndarray, masks: Sequence[np.ndarray], colors: Sequence[tuple[int, int, int]] | None = None,
                  alpha: float = 0.5, outline: bool = True) -> np.ndarray:
    """Blend each mask's colour into the image (later masks on top); optionally draw each mask's outline opaque.
    Without ``colors`` each mask gets the palette colour that contrasts most with what it covers."""
    image = _check_image(image)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    colors = list(colors) if colors is not None else contrasting_colors(image, masks)
    if len(colors) < len(masks):
        raise ValueError(f"{len(masks)} masks but only {len(colors)} colours")
    out = image.astype(np.float32)
    checked = [_check_mask(m, image.shape[:2], f"mask {i}") for i, m in enumerate(masks)]
    for mask, color in zip(checked, colors):
        out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(color, dtype=np.float32)
    if outline:
        for mask, color in zip(checked, colors):
            out[mask_boundary(mask)] = color
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def draw_prompts(image: np.ndarray, prompts: Mapping[int, np.ndarray], colors: Sequence[tuple[int, int, int]] | None = None,
                 alpha: float = 0.25, labels: bool = True) -> np.ndarray:
    """Show visual prompts {k: mask}: a light fill, an outline and the tag ``vp_k`` just above the region (below it
    when the region touches the top; over its top-left corner only when neither fits), so the tag does not hide a
    small marked object."""
    image = _check_image(image)
    keys = sorted(prompts)
    out = overlay_masks(image, [prompts[k] for k in keys], colors=colors, alpha=alpha, outline=True)
    if not labels:
        return out
    colors = list(colors) if colors is not None else [MASK_COLORS[i % len(MASK_COLORS)] for i in range(len(keys))]
    pil = Image.fromarray(out)
    draw = ImageDraw.Draw(pil)
    font = ImageFont.load_default()
    for k, color in zip(keys, colors):
        rows, cols = np.nonzero(prompts[k])
        if rows.size == 0:
            continue
        text = f"vp_{k}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        width, height = right - left + 3, bottom - top + 3                 # with the 1 px dark frame
        x = min(int(cols.min()), max(pil.width - width, 0)) - left + 1
        if rows.min() >= height:
            y = int(rows.min()) - height                                   # above
        elif rows.max() + 1 + height <= pil.height:
            y = int(rows.max()) + 1                                        # below
        else:
            y = int(rows.min())                                            # over the region: no room outside
        y += 1 - top
        left, top, right, bottom = draw.textbbox((x, y), text, font=font)
        draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=(0, 0, 0))
        draw.text((x, y), text, fill=tuple(color), font=font)
    return np.array(pil)


def image_grid(images: Sequence[np.ndarray | Image.Image], captions: Sequence[str] | None = None, ncols: int = 4,
               tile_size: int | None = None, wrap: int | None = None, pad: int = 6) -> Image.Image:
    """Tiles in rows of ``ncols`` with each caption wrapped and rendered under its tile (PIL's default font).

    ``tile_size`` resizes every tile to that width (keeping aspect); ``wrap`` is the caption width in characters
    (default: what fits under the tile).
    """
    if not images:
        raise ValueError("image_grid needs at least one image")
    if captions is not None and len(captions) != len(images):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    tiles = [im if isinstance(im, Image.Image) else Image.fromarray(_check_image(im)) for im in images]
    tiles = [t.convert("RGB") for t in tiles]
    if tile_size is not None:
        tiles = [t.resize((tile_size, max(1, round(t.height * tile_size / t.width))), Image.NEAREST) for t in tiles]
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    char_w = max(1, measure.textbbox((0, 0), "abcdefghij", font=font)[2] // 10)
    line_h = measure.textbbox((0, 0), "Ag", font=font)[3] + 2
    tile_w = max(t.width for t in tiles)
    tile_h = max(t.height for t in tiles)
    width_chars = wrap or max(8, tile_w // char_w)
    wrapped = [[] for _ in tiles] if captions is None else [
        [line for para in str(c).splitlines() or [""] for line in (textwrap.wrap(para, width_chars) or [""])]
        for c in captions]
    caption_h = max(len(lines) for lines in wrapped) * line_h
    cell_w, cell_h = tile_w + pad, tile_h + caption_h + pad
    nrows = (len(tiles) + ncols - 1) // ncols
    ncols_used = min(ncols, len(tiles))
    sheet = Image.new("RGB", (ncols_used * cell_w + pad, nrows * cell_h + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (tile, lines) in enumerate(zip(tiles, wrapped)):
        x0 = pad + (i % ncols) * cell_w
        y0 = pad + (i // ncols) * cell_h
        sheet.paste(tile, (x0, y0))
        for j, line in enumerate(lines):
            draw.text((x0, y0 + tile.height + 1 + j * line_h), line, fill=(0, 0, 0), font=font)
    return sheet
