"""The visual prompts in the per-pixel mask features (not in the paper; ``mask_prompts: true``).

"Segment the object with the same colour as <vp_0>" asks for the *other* red object: the marked one must be left
out. The paper's model knows which patches a prompt covers only at its input (visual-prompt injection adds the tag's
embedding to them); the masks are drawn from the mask features, which the shapes-world measurements show keep
colour, shape and size but drop whatever the masks did not ask for. The shipped model's visual-text masks put 43 %
of their pixels on the marked object (docs/TRAINING.md, session 13).

This module adds to every pixel's mask feature, for each prompt whose patch-level coverage contains the pixel, a
learned vector shared by all prompts plus one of its tag ``<vp_k>`` (both zero-initialised, so the model starts as
the paper's): a query can then push a marked object's pixels out of its mask, or pull them in, by its component
along those vectors. The shared part learns from every prompted mask; a tag's own part (tags are drawn at random
in training) from a sixteenth of them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PromptMaps(nn.Module):
    """G images sharing a patch grid -> (G, mask_dim, h, w): the sum of ``shared + embed[k]`` over the prompts
    covering each pixel's patch (nearest-neighbour from the patch grid to the mask-feature size)."""

    def __init__(self, *, num_vp_tokens: int, mask_dim: int):
        super().__init__()
        self.shared = nn.Parameter(torch.zeros(mask_dim))
        self.embed = nn.Embedding(num_vp_tokens, mask_dim)
        nn.init.zeros_(self.embed.weight)

    def forward(self, images: list, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
        """images: G :class:`~pixelsail.processing.ImageInputs` (or None for rows without an image)."""
        dev, dtype = self.embed.weight.device, self.embed.weight.dtype
        gh, gw = grid
        out = torch.zeros(len(images), gh * gw, self.embed.embedding_dim, device=dev, dtype=dtype)   # (G, N, D)
        for j, image in enumerate(images):
            if image is not None and image.prompt_ids.numel():
                cover = image.prompt_cover.to(dev, dtype)                                     # (K, N)
                out[j] = cover.T @ (self.embed(image.prompt_ids.to(dev)) + self.shared)     # (N, K) @ (K, D)
        maps = out.transpose(1, 2).reshape(len(images), -1, gh, gw)                           # (G, D, gh, gw)
        return F.interpolate(maps, size=tuple(size), mode="nearest")                          # (G, D, h, w)
