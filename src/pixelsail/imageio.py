"""Turn whatever a user hands us (a path, bytes, a PIL image, an array) into one (H, W, 3) uint8 RGB array.

Everything user-facing (Predictor, CLI, web) goes through :func:`load_image`, so every mode PIL can decode is
normalised the same way and every bad input fails with one :class:`ImageInputError` that says what is wrong.
The pixel cap is checked from the header, before any pixel is decoded, so a decompression bomb costs nothing.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 4096 * 4096

ImageSource = Union[str, Path, bytes, bytearray, io.IOBase, Image.Image, np.ndarray]


class ImageInputError(ValueError):
    """An image the caller gave cannot be used; the message says why."""


def load_image(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Return ``source`` as a C-contiguous (H, W, 3) uint8 RGB array.

    Accepts a file path, encoded bytes / a binary file object, a ``PIL.Image`` or a numpy array of shape (H, W),
    (H, W, 1), (H, W, 3) or (H, W, 4) with dtype uint8, uint16, bool or float in [0, 1]. Transparency is
    composited on white; EXIF orientation is applied; 16-bit data is scaled to 8 bits.
    """
    if isinstance(source, np.ndarray):
        return _from_array(source, max_pixels, "array")
    if isinstance(source, Image.Image):
        _check_size(source.size, max_pixels, "image")
        return _from_pil(source, "image")
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise ImageInputError(f"image file not found: {path}")
        if not path.is_file():
            raise ImageInputError(f"not a file: {path}")
        with open(path, "rb") as f:
            return _decode(f, max_pixels, str(path))
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageInputError("empty image data (0 bytes)")
        return _decode(io.BytesIO(bytes(source)), max_pixels, "uploaded data")
    if isinstance(source, io.IOBase) or hasattr(source, "read"):
        return _decode(source, max_pixels, getattr(source, "name", "stream"))
    raise ImageInputError(f"cannot read an image from a {type(source).__name__}; "
                          "give a path, bytes, a PIL image or a numpy array")


def _check_size(size: tuple[int, int], max_pixels: int, what: str) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise ImageInputError(f"{what} is empty ({w}x{h} pixels)")
    if w * h > max_pixels:
        raise ImageInputError(f"{what} is too large: {w}x{h} = {w * h:,} pixels, the limit is {max_pixels:,}")


def _decode(stream, max_pixels: int, what: str) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(stream)
            _check_size(img.size, max_pixels, what)
            img.load()
    except ImageInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageInputError(f"{what} is too large to decode safely ({e}); the limit is {max_pixels:,} pixels"
                              ) from None
    except UnidentifiedImageError:
        raise ImageInputError(f"{what} is not an image (unrecognised or unsupported format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageInputError(f"{what} is truncated or corrupt: {e}") from None
    return _from_pil(img, what)


def _from_pil(img: Image.Image, what: str) -> np.ndarray:
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block must not make an otherwise fine image unusable
        pass
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _from_array(np.asarray(img), None, what)
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        rgba = np.asarray(img.convert("RGBA"))
        return _composite_on_white(rgba)
    if mode != "RGB":
        try:
            img = img.convert("RGB")
        except (ValueError, OSError) as e:
            raise ImageInputError(f"{what} has colour mode {mode!r}, which cannot be converted to RGB ({e})") from None
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """(H, W, 4) uint8 -> (H, W, 3) uint8: alpha-blend over a white background."""
    rgb = rgba[..., :3].astype(np.float32)
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    out = rgb * alpha + 255.0 * (1.0 - alpha)
    return np.ascontiguousarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def _from_array(arr: np.ndarray, max_pixels: int | None, what: str) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[2] not in (1, 3, 4) and arr.shape[2] > 4:
        raise ImageInputError(f"{what} has shape {arr.shape}, which looks channels-first; "
                              "give (H, W, 3) (e.g. arr.transpose(1, 2, 0))")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ImageInputError(f"{what} has shape {arr.shape}; expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)")
    h, w = arr.shape[:2]
    if max_pixels is not None:
        _check_size((w, h), max_pixels, what)
    elif h == 0 or w == 0:
        raise ImageInputError(f"{what} is empty ({w}x{h} pixels)")
    arr = _to_uint8(arr, what)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 4:
        arr = _composite_on_white(arr)
    return np.ascontiguousarray(arr)


def _to_uint8(arr: np.ndarray, what: str) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if arr.dtype == np.uint16 or (arr.dtype.kind in "iu" and arr.dtype.itemsize >= 2):
        # 16-bit data (uint16 arrays, PIL "I;16"/"I" from 16-bit PNG/TIFF): full range 0..65535
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 65535:
            raise ImageInputError(f"{what} has integer values in [{lo}, {hi}]; expected 8-bit (0..255) or "
                                  "16-bit (0..65535) data")
        return np.rint(arr.astype(np.float64) / 257.0).astype(np.uint8)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise ImageInputError(f"{what} contains NaN or infinite values")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise ImageInputError(f"{what} is a float image with values in [{lo:g}, {hi:g}]; "
                                  "float images must be in [0, 1]")
        return np.rint(arr.astype(np.float64) * 255.0).astype(np.uint8)
    raise ImageInputError(f"{what} has unsupported dtype {arr.dtype}; use uint8, uint16, bool or float in [0, 1]")
