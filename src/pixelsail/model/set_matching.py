"""Order-free targets for a list of ``[SEG]`` tokens (``mask_set_matching``; not in the paper).

"Please segment all red objects." is answered "Sure, [SEG], [SEG] and [SEG].", one ``[SEG]`` per object, and the
data give the targets in reading order. Nothing in the question says which object comes first, and every evaluation
scores the union of the masks; yet with fixed targets the k-th query is right only if it has worked out which match
is k-th from the top - a comparison of places on top of the segmentation - and until then the best it can do is
the average of the candidates, which thresholds to nothing. With the switch, the ``[SEG]``s of one list (tokens
between them only the list's commas and "and") are matched one-to-one to their targets by the cheapest assignment
(Hungarian, as DETR matches its object queries to boxes), so whatever order the queries settle on is right. Single
``[SEG]``s and the phrases of a grounded conversation (each ``[SEG]`` after its own phrase) keep their targets.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from pixelsail.model.seg_ordinal import seg_ordinals


def list_joiner_ids(encode, seg_id: int) -> frozenset[int]:
    """The token ids a referring answer puts between the ``[SEG]``s of one list ("," " " "and" for the shapes BPE),
    read off the answer the datasets write for three targets; ``encode``: text -> ids (the processor's)."""
    from pixelsail.data.annotations import seg_answer

    ids = encode(seg_answer(3))
    where = [i for i, t in enumerate(ids) if t == seg_id]
    if len(where) != 3:
        raise ValueError(f"the three-target answer {seg_answer(3)!r} does not encode to three [SEG] tokens")
    return frozenset(ids[where[0] + 1:where[1]]) | frozenset(ids[where[1] + 1:where[2]])


def seg_lists(input_ids: torch.Tensor, seg_b: torch.Tensor, seg_t: torch.Tensor, seg_id: int,
              joiners: frozenset[int]) -> list[list[int]]:
    """Lists of two or more queries (indices into seg_b / seg_t, sorted by row then position): the runs of
    ``[SEG]``s that :func:`~pixelsail.model.seg_ordinal.seg_ordinals` numbers 0, 1, 2, ... (nothing but ``joiners``
    between them), so that matching and ``seg_list_ordinal`` share one definition of a list."""
    rows, cols = seg_b.tolist(), seg_t.tolist()
    ordinals = {r: seg_ordinals(input_ids[r].tolist(), seg_id, joiners) for r in set(rows)}
    lists: list[list[int]] = []
    for q, (row, col) in enumerate(zip(rows, cols)):
        if q and rows[q - 1] == row and ordinals[row][col] > 0:
            lists[-1].append(q)
        else:
            lists.append([q])
    return [members for members in lists if len(members) > 1]


@torch.no_grad()
def matched_targets(logits: torch.Tensor, targets: torch.Tensor, lists: Sequence[Sequence[int]]) -> torch.Tensor:
    """For queries' mask logits (M, h, w) and their targets as given (M, H, W), the target index (M,) each query
    is trained on: itself, except within each list of ``lists`` (local indices), where the queries take the targets
    of the assignment with the least summed Dice + BCE cost (measured at the logits' resolution)."""
    order = torch.arange(len(logits), device=logits.device)
    if not lists:
        return order
    small = F.interpolate(targets[:, None].float(), size=logits.shape[-2:], mode="area")[:, 0]   # (M, h, w)
    flat_logits, flat_targets = logits.float().flatten(1), small.flatten(1)                     # (M, h*w)
    for members in lists:
        idx = torch.as_tensor(list(members), device=logits.device)
        x, t = flat_logits[idx], flat_targets[idx]                                              # (n, P)
        p = x.sigmoid()
        dice = 1 - (2 * p @ t.T + 1) / (p.sum(-1, keepdim=True) + t.sum(-1)[None] + 1)           # (n, n)
        # mean BCE of query i's logits against target j: softplus(x) - x * t, averaged over the pixels
        bce = (F.softplus(x).sum(-1, keepdim=True) - x @ t.T) / x.shape[-1]
        queries, chosen = linear_sum_assignment((dice + bce).cpu().numpy())
        order[idx[torch.as_tensor(queries, device=idx.device)]] = idx[torch.as_tensor(chosen, device=idx.device)]
    return order
