"""Where a ``[SEG]`` query may read the expression from: the question's own token states (not in the paper).

In the paper the mask query is an MLP of the ``[SEG]`` token's final hidden state: a pretrained LLM has already
moved the expression into that position. A decoder trained from scratch has not, and learning that attention route
from the mask loss alone is slow (docs/TRAINING.md measures it). :class:`QuestionPool` gives the query a second,
direct input: multi-head attention from the ``[SEG]`` state over the final states of the question the answer
replies to. Its query projection starts at zero, so at initialisation it is the mean of the question's states (a
bag of words that already tells colours apart) and it learns where to look from there.
"""
from __future__ import annotations

import torch
from torch import nn

# config.seg_query_pool: off, final states, input embeddings, or one pool over each
POOL_SOURCES = ("", "hidden", "embedding", "embedding+hidden")


def pool_sources(value: str) -> tuple[str, ...]:
    """The contexts the query pools over, in the order their read-outs are concatenated: "embedding+hidden" ->
    ("embedding", "hidden"); "" -> ()."""
    if value not in POOL_SOURCES:
        raise ValueError(f"seg_query_pool must be one of {POOL_SOURCES}, got {value!r}")
    return tuple(value.split("+")) if value else ()


def question_key_mask(input_ids: torch.Tensor, turn_end_id: int, text_start: torch.Tensor, seg_b: torch.Tensor,
                      seg_t: torch.Tensor, seg_id: int | None = None) -> torch.Tensor:
    """(M, L) bool: for the ``[SEG]`` at (seg_b[m], seg_t[m]), the tokens of the user turn its answer replies to.

    input_ids (B, L); text_start (B,) first text position of each sequence (after its vision block). A user turn
    is what lies between the previous turn's ``<|im_end|>`` and its own, so the question tokens are the text
    positions with one ``<|im_end|>`` fewer before them than the ``[SEG]`` has. With ``seg_id`` (the ``[SEG]`` token's
    id) the answer's own words since the previous ``[SEG]`` count too: in a grounded conversation ("a <p> red
    circle </p> [SEG], a <p> blue star </p> [SEG]") each mask belongs to the phrase just before it.
    """
    ends = input_ids == turn_end_id
    ends_before = torch.cumsum(ends.long(), dim=1) - ends.long()               # (B, L) <|im_end|> strictly before
    pos = torch.arange(input_ids.shape[1], device=input_ids.device)[None]        # (1, L)
    turn = ends_before[seg_b, seg_t][:, None]                                    # (M, 1)
    inside = (ends_before[seg_b] == turn - 1) & ~ends[seg_b]
    if seg_id is not None:
        segs = input_ids == seg_id
        segs_upto = torch.cumsum(segs.long(), dim=1)                             # (B, L) [SEG]s at or before
        since_previous = segs_upto[seg_b] == segs_upto[seg_b, seg_t][:, None] - 1
        inside = inside | ((ends_before[seg_b] == turn) & since_previous & ~segs[seg_b])
    return inside & (pos >= text_start[seg_b][:, None]) & (pos < seg_t[:, None])


class QuestionPool(nn.Module):
    """``[SEG]`` state (M, C) attends over its question's states (M, L, C) -> (M, C)."""

    def __init__(self, *, hidden_size: int, num_heads: int = 4, max_positions: int = 64):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        # where a word sits in its question (0 = first token of the turn), so that "the red circle left of the blue
        # star" is not the same bag as "the blue star left of the red circle"; zero at the start
        self.position = nn.Embedding(max_positions, hidden_size)
        nn.init.zeros_(self.position.weight)
        self.q = nn.Linear(hidden_size, hidden_size, bias=False)
        self.k = nn.Linear(hidden_size, hidden_size, bias=False)
        self.v = nn.Linear(hidden_size, hidden_size, bias=False)
        nn.init.zeros_(self.q.weight)  # uniform attention at the start: the mean of the question's states

    def forward(self, seg_states: torch.Tensor, context: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        m, length, c = context.shape
        h, d = self.num_heads, c // self.num_heads
        rank = (key_mask.long().cumsum(dim=1) - 1).clamp(0, self.position.num_embeddings - 1)   # (M, L)
        context = context + self.position(rank) * key_mask[..., None]
        q = self.q(seg_states).view(m, h, 1, d)                                   # (M, H, 1, D)
        k = self.k(context).view(m, length, h, d).transpose(1, 2)                 # (M, H, L, D)
        v = self.v(context).view(m, length, h, d).transpose(1, 2)
        empty = ~key_mask.any(dim=1)                                              # no question: read nothing
        mask = (key_mask | empty[:, None])[:, None, None, :]                      # (M, 1, 1, L)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (M, H, 1, D)
        out = out.reshape(m, c)
        return out.masked_fill(empty[:, None], 0.0)
