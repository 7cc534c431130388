"""Image -> patch grid, prompt masks -> patch coverage, conversation -> ids/labels; the one Processor."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from transformers import PreTrainedTokenizerBase

from pixelsail.config import PixelSailConfig
from pixelsail.data.sample import Sample
from pixelsail.tokens import (
    SEG, TURN_END, VISION_END, VISION_START, VPATCH, assistant_header, user_turn, vp_indices,
)

IGNORE_INDEX = -100


def target_size(height: int, width: int, patch_size: int, max_size: int) -> tuple[int, int]:
    """PAPER.md: long side -> ceil(L/P)*P capped at max_size; short side scaled and rounded up to a multiple of P."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image has an empty side: {height}x{width}")
    cap = max(patch_size, (max_size // patch_size) * patch_size)
    long_side = max(height, width)
    new_long = min(math.ceil(long_side / patch_size) * patch_size, cap)
    scale = new_long / long_side
    short = min(height, width)
    new_short = min(max(patch_size, math.ceil(short * scale / patch_size) * patch_size), cap)
    return (new_long, new_short) if height >= width else (new_short, new_long)


@dataclass
class ImageInputs:
    """One image ready for the model.

    patches:      (N, 3*P*P) float, N = grid_h*grid_w, row-major, each patch flattened as (3, P, P).
    grid:         (grid_h, grid_w).
    prompt_ids:   (K,) long, the k of each present <vp_k>, sorted by prompt area, largest first.
    prompt_cover: (K, N) bool, patch covered by the prompt (any pixel).
    orig_size:    (H, W) of the input image.
    prompt_geometry: (K, 5) float, each prompt's centre x, y, box width, height and sqrt(area), as fractions of the
                  image (:func:`prompt_geometry`); read by the model only with ``vp_geometry``.
    """

    patches: torch.Tensor
    grid: tuple[int, int]
    prompt_ids: torch.Tensor
    prompt_cover: torch.Tensor
    orig_size: tuple[int, int]
    prompt_geometry: torch.Tensor


GEOMETRY_DIM = 5   # a prompt's centre x, centre y, box width, box height, sqrt(area): fractions of the image


def prompt_geometry(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool prompt -> (5,) float32: its pixels' mean x and y, its box's width and height, and the square root
    of its area, each as a fraction of the image's width / height / area (a point prompt: a tiny box, a small area)."""
    return _geometry(*np.nonzero(mask), *mask.shape)


def _geometry(ys: np.ndarray, xs: np.ndarray, h: int, w: int) -> np.ndarray:
    """:func:`prompt_geometry` from the prompt's pixel coordinates in an (h, w) image."""
    return np.array([(xs.mean() + 0.5) / w, (ys.mean() + 0.5) / h, (xs.max() - xs.min() + 1) / w,
                     (ys.max() - ys.min() + 1) / h, np.sqrt(xs.size / (h * w))], dtype=np.float32)


class Processor:
    """Turns :class:`Sample`s into model inputs and batches them. Holds the tokenizer."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, config: PixelSailConfig):
        self.tokenizer = tokenizer
        self.config = config
        vocab = tokenizer.get_vocab()
        ids = {}
        for name, tok in (("vision_start", VISION_START), ("vpatch", VPATCH), ("vision_end", VISION_END),
                          ("seg", SEG), ("turn_end", TURN_END)):
            if tok not in vocab:
                raise ValueError(f"tokenizer lacks the special token {tok!r}; use pixelsail.tokenizer.add_pixelsail_tokens")
            ids[name] = vocab[tok]
        for k in range(config.num_vp_tokens):
            ids[f"vp_{k}"] = vocab[f"<vp_{k}>"]
        ids["pad"] = tokenizer.pad_token_id
        self.ids = ids
        self.vp_id_to_k = {ids[f"vp_{k}"]: k for k in range(config.num_vp_tokens)}
        self._mean = np.asarray(config.image_mean, dtype=np.float32)
        self._std = np.asarray(config.image_std, dtype=np.float32)

    # ------------------------------------------------------------------------------------------------ image side
    def image_inputs(self, image: np.ndarray, prompts: dict[int, np.ndarray] | None = None) -> ImageInputs:
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            got = f"{image.shape} {image.dtype}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(f"image must be an (H, W, 3) uint8 array, got {got}")
        p = self.config.patch_size
        h, w = image.shape[:2]
        th, tw = target_size(h, w, p, self.config.max_image_size)
        if (th, tw) != (h, w):
            image = np.asarray(Image.fromarray(image).resize((tw, th), Image.BICUBIC))
        x = (image.astype(np.float32) / 255.0 - self._mean) / self._std
        gh, gw = th // p, tw // p
        # (th, tw, 3) -> (gh, P, gw, P, 3) -> (gh, gw, 3, P, P) -> (N, 3*P*P)
        patches = x.reshape(gh, p, gw, p, 3).transpose(0, 2, 4, 1, 3).reshape(gh * gw, 3 * p * p)
        ids, cover, geometry = self.prompt_coverage(prompts or {}, (h, w), (gh, gw))
        return ImageInputs(torch.from_numpy(np.ascontiguousarray(patches)), (gh, gw), ids, cover, (h, w), geometry)

    def prompt_coverage(self, prompts: dict[int, np.ndarray], size: tuple[int, int],
                        grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids (K,), cover (K, N), geometry (K, 5)), largest prompt first. A patch is covered by a prompt if any
        pixel of the prompt falls in it (computed at input resolution); geometry: :func:`prompt_geometry`."""
        h, w = size
        gh, gw = grid
        row_patch = np.arange(h) * gh // h
        col_patch = np.arange(w) * gw // w
        items = []
        for k, mask in prompts.items():
            k = int(k)
            self.check_vp_index(k)
            mask = np.asarray(mask)
            if mask.shape != (h, w):
                raise ValueError(f"prompt mask for <vp_{k}> has shape {mask.shape}, image is {(h, w)}")
            mask = mask.astype(bool)
            if not mask.any():
                raise ValueError(f"prompt mask for <vp_{k}> is empty")
            cover = np.zeros((gh, gw), dtype=bool)
            ys, xs = np.nonzero(mask)
            cover[row_patch[ys], col_patch[xs]] = True
            items.append((int(ys.size), k, cover.reshape(-1), _geometry(ys, xs, h, w)))
        items.sort(key=lambda t: -t[0])
        ids = torch.tensor([k for _, k, _, _ in items], dtype=torch.long)
        if not items:
            return ids, torch.zeros(0, gh * gw, dtype=torch.bool), torch.zeros(0, GEOMETRY_DIM)
        return (ids, torch.from_numpy(np.stack([c for _, _, c, _ in items])),
                torch.from_numpy(np.stack([g for *_, g in items])))

    # ------------------------------------------------------------------------------------------------ text side
    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def vision_block_ids(self, grid: tuple[int, int]) -> list[int]:
        return [self.ids["vision_start"], *([self.ids["vpatch"]] * (grid[0] * grid[1])), self.ids["vision_end"]]

    def check_vp_index(self, k: int) -> None:
        if not 0 <= k < self.config.num_vp_tokens:
            raise ValueError(f"unknown visual prompt <vp_{k}>: this model has <vp_0>..<vp_{self.config.num_vp_tokens - 1}>")

    def check_text(self, text: str) -> None:
        for k in vp_indices(text):
            self.check_vp_index(k)

    def conversation_ids(self, turns: list[tuple[str, str]]) -> tuple[list[int], list[int]]:
        """Token ids and labels of the chat part; only answer tokens (and their end-of-turn) are supervised."""
        ids: list[int] = []
        labels: list[int] = []
        for q, a in turns:
            self.check_text(q)
            self.check_text(a)
            prompt = self.encode(user_turn(q) + assistant_header())
            answer = self.encode(a) + [self.ids["turn_end"]] + self.encode("\n")
            ids += prompt + answer
            labels += [IGNORE_INDEX] * len(prompt) + answer
        return ids, labels

    def prompt_ids(self, question: str, history: list[tuple[str, str]] = (), answer_prefix: str = "") -> list[int]:
        """Ids for generation: the history, the new question, the assistant header and an optional answer prefix."""
        ids, _ = self.conversation_ids(list(history))
        self.check_text(question)
        ids += self.encode(user_turn(question) + assistant_header())
        if answer_prefix:
            ids += self.encode(answer_prefix)
        return ids

    # ------------------------------------------------------------------------------------------------ samples
    def __call__(self, sample: Sample) -> dict:
        sample.validate()
        text_only = bool(sample.meta.get("text_only", False))
        text_ids, text_labels = self.conversation_ids(sample.turns)
        if text_only:
            image = None
            vision_ids: list[int] = []
        else:
            image = self.image_inputs(sample.image, sample.prompts)
            vision_ids = self.vision_block_ids(image.grid)
        input_ids = vision_ids + text_ids
        max_len = self.config.max_position_embeddings
        if len(input_ids) > max_len:
            raise ValueError(f"sample {sample.image_id!r} is {len(input_ids)} tokens, longer than the limit {max_len}")
        labels = [IGNORE_INDEX] * len(vision_ids) + text_labels
        feats = {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "image": image,
            "masks": self.mask_targets(sample.masks, image),
            "teacher_features": {k: torch.as_tensor(v, dtype=torch.float32)
                                 for k, v in sample.meta.get("teacher_features", {}).items()},
            "length": len(input_ids),
        }
        return feats

    def mask_targets(self, masks: list[np.ndarray], image: ImageInputs | None) -> torch.Tensor:
        """Target masks resized (nearest) to the processed image size: (M, H', W') uint8."""
        if image is None:
            if masks:
                raise ValueError("a text-only sample cannot have [SEG] masks")
            return torch.zeros(0, 1, 1, dtype=torch.uint8)
        p = self.config.patch_size
        th, tw = image.grid[0] * p, image.grid[1] * p
        out = []
        for m in masks:
            m = np.asarray(m, dtype=np.uint8)
            if m.shape != (th, tw):
                m = np.asarray(Image.fromarray(m * 255).resize((tw, th), Image.NEAREST)) > 127
            out.append(torch.from_numpy(np.ascontiguousarray(m.astype(np.uint8))))
        return torch.stack(out) if out else torch.zeros(0, th, tw, dtype=torch.uint8)

    def collate(self, features: list[dict]) -> dict:
        """Right-pad ids/labels; keep per-sample images, masks and teacher maps as lists."""
        if not features:
            raise ValueError("cannot collate an empty batch")
        longest = max(f["input_ids"].numel() for f in features)
        b = len(features)
        input_ids = torch.full((b, longest), self.ids["pad"], dtype=torch.long)
        labels = torch.full((b, longest), IGNORE_INDEX, dtype=torch.long)
        lengths = torch.zeros(b, dtype=torch.long)
        for i, f in enumerate(features):
            n = f["input_ids"].numel()
            input_ids[i, :n] = f["input_ids"]
            labels[i, :n] = f["labels"]
            lengths[i] = n
        return {
            "input_ids": input_ids,
            "labels": labels,
            "lengths": lengths,
            "images": [f["image"] for f in features],
            "masks": [f["masks"] for f in features],
            "teacher_features": [f["teacher_features"] for f in features],
        }
