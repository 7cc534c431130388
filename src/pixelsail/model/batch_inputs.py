"""A training batch -> decoder inputs, computed per group of images that share a patch grid, never per sample.

The samples of a batch differ in their images (grid, visual prompts) and text, but the work on them is the same:
embed every image's patches, add the prompt injections, place the results on the <vpatch> tokens, and give every
token its 3-axis position. Each of these runs once per distinct grid (usually one per batch) as a batched tensor
op; the only Python loops left run over grids and over the prompted images' small index bookkeeping.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def vision_positions(grid: tuple[int, int], device: torch.device | None = None) -> tuple[torch.Tensor, int]:
    """(3, 2 + gh*gw) positions of ``<vision> patches </vision>`` and the first free 1-D position after them.

    <vision> sits at 0 on every axis, patch (r, c) at (t=1, h=1+r, w=1+c), </vision> one past the largest row/column.
    """
    gh, gw = grid
    rows = torch.arange(gh, device=device).repeat_interleave(gw) + 1
    cols = torch.arange(gw, device=device).repeat(gh) + 1
    end = 1 + max(gh, gw)
    t = torch.cat([torch.zeros(1, dtype=torch.long, device=device), torch.ones(gh * gw, dtype=torch.long, device=device),
                   torch.full((1,), end, device=device)])
    h = torch.cat([torch.zeros(1, dtype=torch.long, device=device), rows, torch.full((1,), end, device=device)])
    w = torch.cat([torch.zeros(1, dtype=torch.long, device=device), cols, torch.full((1,), end, device=device)])
    return torch.stack([t, h, w]), end + 1


def text_positions(start: int, length: int, device: torch.device | None = None) -> torch.Tensor:
    return torch.arange(start, start + length, device=device).expand(3, length)


@dataclass
class ImageGroup:
    """The rows of a batch whose images share one patch grid."""

    grid: tuple[int, int]
    rows: list[int]

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]


def grid_groups(images: list) -> list[ImageGroup]:
    """Group the batch rows that have an image by patch grid (text-only rows, ``None``, belong to none)."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        if image is not None:
            groups.setdefault(tuple(image.grid), []).append(i)
    return [ImageGroup(grid, rows) for grid, rows in groups.items()]


def vision_lengths(images: list) -> torch.Tensor:
    """(B,) tokens of each row's ``<vision> patches </vision>`` block (0 for a text-only row)."""
    return torch.tensor([0 if im is None else im.grid[0] * im.grid[1] + 2 for im in images], dtype=torch.long)


def batch_positions(images: list, seq_len: int, device: torch.device | None = None) -> torch.Tensor:
    """(3, B, L) positions: the vision block's 3-axis ones, then 1-D text positions from one past the block."""
    b = len(images)
    lens = vision_lengths(images)
    vision = torch.zeros(3, b, seq_len, dtype=torch.long)
    text_start = torch.zeros(b, dtype=torch.long)   # 1-D position of each row's first text token
    for group in grid_groups(images):
        pos, start = vision_positions(group.grid)
        rows = torch.tensor(group.rows)
        vision[:, rows, :pos.shape[1]] = pos[:, None]
        text_start[rows] = start
    t = torch.arange(seq_len)
    text = (text_start[:, None] + t[None] - lens[:, None]).expand(3, b, seq_len)
    return torch.where(t[None, None] < lens[None, :, None], vision, text).to(device)


def first_question_ends(input_ids: torch.Tensor, vision_lens: torch.Tensor, turn_end_id: int) -> torch.Tensor:
    """(B,) one past the first end-of-turn after each row's vision block: the block and the first question, what
    ``vision_reads_question`` lets the patches see (0 for a text-only row; the whole row when no turn ends)."""
    seq_len = input_ids.shape[1]
    lens = vision_lens.to(input_ids.device)
    t = torch.arange(seq_len, device=input_ids.device)[None]
    ends = (input_ids == turn_end_id) & (t >= lens[:, None])                        # (B, L)
    first = torch.where(ends.any(1), ends.long().argmax(1) + 1, torch.full_like(lens, seq_len))
    return torch.where(lens > 0, first, torch.zeros_like(lens))


def vp_token_index(input_ids: torch.Tensor, vp_ids: torch.Tensor) -> torch.Tensor:
    """input_ids (B, L), vp_ids (num_vp,) the ids of <vp_0>.. -> (B, L) the k of each <vp_k> token, -1 elsewhere."""
    hit = input_ids[..., None] == vp_ids                                        # (B, L, num_vp)
    return torch.where(hit.any(-1), hit.long().argmax(-1), torch.full_like(input_ids, -1))


__all__ = ["ImageGroup", "batch_positions", "first_question_ends", "grid_groups", "text_positions", "vision_lengths",
           "vision_positions", "vp_token_index"]
