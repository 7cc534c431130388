"""Each ``[SEG]`` of a list knows its place in the list (not in the paper; ``seg_list_ordinal: true``).

"Please segment all red objects." is answered "Sure, [SEG], [SEG] and [SEG].": three tokens with one embedding,
whose masks must each take a different object. The ladder's multi-target lists fail mainly by one mask spreading
over several targets (docs/TRAINING.md, session 26): the queries have not settled which object each takes. DETR
gives each of its object queries its own learned vector so that they start apart; this module does the same for
the ``[SEG]``s of one list, a learned vector per ordinal (first, second, ...) added to each ``[SEG]``'s input
embedding. The vectors start at zero, so at initialisation the model is the paper's. A ``[SEG]``'s ordinal is read
from the tokens before it only (the ``[SEG]``s before it with nothing but the list's commas and "and" between), so
training (whole sequences) and generation (one token at a time) mark every token the same way.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

MAX_ORDINALS = 8   # a longer list's later [SEG]s share the last vector


def seg_ordinals(ids: Sequence[int], seg_id: int, joiners: frozenset[int]) -> list[int]:
    """Per token of ``ids``: how many ``[SEG]``s of the same list stand before it if it is a ``[SEG]``, else -1.
    A list is a run of ``[SEG]``s with only ``joiners`` between them ("," " " "and")."""
    out, before, joined = [], 0, False
    for i in ids:
        if i == seg_id:
            before = before + 1 if joined else 0
            out.append(before)
            joined = True
        else:
            out.append(-1)
            joined = joined and i in joiners
    return out


class SegOrdinalEmbedding(nn.Module):
    """A learned vector per place in a list of ``[SEG]``s, added to those tokens' embeddings."""

    def __init__(self, *, hidden_size: int, max_ordinals: int = MAX_ORDINALS):
        super().__init__()
        self.embed = nn.Embedding(max_ordinals, hidden_size)
        nn.init.zeros_(self.embed.weight)

    def forward(self, embeds: torch.Tensor, ordinals: torch.Tensor) -> torch.Tensor:
        """embeds (..., L, C) + each ``[SEG]``'s ordinal vector; ordinals (..., L) from :func:`seg_ordinals`."""
        is_seg = ordinals >= 0
        index = ordinals.clamp(0, self.embed.num_embeddings - 1)
        return embeds + self.embed(index).to(embeds.dtype) * is_seg[..., None].to(embeds.dtype)


__all__ = ["MAX_ORDINALS", "SegOrdinalEmbedding", "seg_ordinals"]
