"""Tiny models and samples shared by the model tests (no downloads, a few hundred kB of weights)."""
from __future__ import annotations

import numpy as np
import torch

from pixelsail.config import PixelSailConfig
from pixelsail.data.sample import Sample
from pixelsail.model import PixelSail
from pixelsail.tokenizer import build_tiny_tokenizer

WORDS = ("Please segment the small large red green blue circle square triangle. Sure, it is. What colour "
         "shape is this? left of right above below No target. in the image not")

_TOKENIZER = None


def tiny_tokenizer():
    global _TOKENIZER
    if _TOKENIZER is None:
        _TOKENIZER = build_tiny_tokenizer([WORDS] * 4, vocab_size=320, num_vp_tokens=16)
    return _TOKENIZER


def tiny_config(**overrides) -> PixelSailConfig:
    base = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=128, patch_size=16, mask_dim=32, mask_num_points=256, upsample_max_width=64)
    base.update(overrides)
    return PixelSailConfig(**base)


def tiny_model(seed: int = 0, **overrides) -> PixelSail:
    torch.manual_seed(seed)
    return PixelSail(tiny_config(**overrides), tiny_tokenizer())


def random_image(h: int = 64, w: int = 96, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def box_mask(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def res_sample(image: np.ndarray, mask: np.ndarray) -> Sample:
    return Sample(image=image, turns=[("Please segment the red circle.", "Sure, [SEG].")], masks=[mask], task="res")
