"""A deterministic stand-in with PixelSail's inference API, and test images, for the predictor/CLI/web tests.

It "segments" colours by rule ("Please segment the red ..." -> pixels whose red channel dominates) and answers
"<vp_k>: red" for questions naming a prompt, so tests can state exact expected masks and answers.
"""
from __future__ import annotations

import io
import re
import struct
import time
import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from pixelsail.config import PixelSailConfig
from pixelsail.processing import Processor
from pixelsail.tokenizer import build_tiny_tokenizer
from pixelsail.tokens import NO_TARGET_ANSWER, SEG, vp_indices

COLOURS = {"red": 0, "green": 1, "blue": 2}
_TOKENIZER = None


def colour_mask(image: np.ndarray, colour: str) -> np.ndarray:
    c = COLOURS[colour]
    img = image.astype(int)
    others = [i for i in range(3) if i != c]
    return (img[..., c] > 127) & (img[..., others[0]] < 100) & (img[..., others[1]] < 100)


def dominant_colour(image: np.ndarray, region: np.ndarray) -> str:
    for name in COLOURS:
        if (colour_mask(image, name) & region).sum() * 2 > region.sum():
            return name
    return "grey"


@dataclass
class FakePrefix:
    image: np.ndarray
    prompts: dict


@dataclass
class FakeResponse:
    text: str
    masks: list = field(default_factory=list)
    mask_scores: list = field(default_factory=list)


class FakePixelSail:
    def __init__(self, num_vp_tokens: int = 4, max_position_embeddings: int = 512, prefill_seconds: float = 0.0):
        global _TOKENIZER
        self.config = PixelSailConfig(num_vp_tokens=num_vp_tokens, max_position_embeddings=max_position_embeddings,
                                      patch_size=16, max_image_size=256)
        if _TOKENIZER is None or len([t for t in _TOKENIZER.get_vocab() if t.startswith("<vp_")]) != num_vp_tokens:
            _TOKENIZER = build_tiny_tokenizer(["Please segment the red green blue circle square. What colour is it?"],
                                              vocab_size=300, num_vp_tokens=num_vp_tokens)
        self.processor = Processor(_TOKENIZER, self.config)
        self.vision_prefill_count = 0
        self.prefill_seconds = prefill_seconds
        self.questions: list[tuple[str, list]] = []

    def prefill_image(self, image, prompts=None):
        assert image.dtype == np.uint8 and image.ndim == 3
        self.vision_prefill_count += 1
        if self.prefill_seconds:
            time.sleep(self.prefill_seconds)
        return FakePrefix(image, dict(prompts or {}))

    def respond(self, prefix, question, history=(), max_new_tokens=64, answer_prefix=""):
        self.questions.append((question, list(history)))
        ks = vp_indices(question)
        if ks:
            k = ks[0]
            if k not in prefix.prompts:
                return FakeResponse(f"<vp_{k}> is not in the image.")
            return FakeResponse(f"<vp_{k}>: {dominant_colour(prefix.image, prefix.prompts[k])}.")
        m = re.search(r"segment .*?\b(red|green|blue)\b", question)
        if m:
            mask = colour_mask(prefix.image, m.group(1))
            if mask.any():
                return FakeResponse(f"Sure, {SEG}.", [mask], [0.9])
            return FakeResponse(NO_TARGET_ANSWER)
        return FakeResponse("I do not know.")


def scene() -> np.ndarray:
    """64x48 grey image with a red square rows 8..23, cols 4..19 and a blue square rows 30..41, cols 30..45."""
    img = np.full((48, 64, 3), 128, np.uint8)
    img[8:24, 4:20] = (220, 20, 20)
    img[30:42, 30:46] = (10, 20, 230)
    return img


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature + IHDR claiming width x height, then an empty IDAT: no pixel data at all."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"")
