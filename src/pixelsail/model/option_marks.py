"""Each token of a multiple-choice option carries its option's letter (not in the paper; ``option_marks: true``).

A multiple choice ("What colour is <vp_3>? (A) blue (B) red (C) green.") is answered "It is red (B).": the word
comes from the marked region, the letter from where that word stands among the options. A decoder trained from
scratch gets the word right in 70 % of the shapes test questions and the letter after it by chance (34 %): to look
the letter up it must find the option's word in the question and read what stood two tokens *before* it, and a
4-layer model did not learn that from the answer's side in 32,000 samples of look-ups alone (docs/TRAINING.md,
session 17), while it did learn look-ups whose word the question names.

This module adds to every token inside an option (from its "(X)" to the next option, sentence end or special token)
a learned vector of the letter X (zero-initialised, so the model starts as the paper's). The question's " red" then
carries "B" in its own embedding, and the answer's letter is one content match away ("red" in the answer finds
"red" in the question). Which option a token belongs to is decided from the text *before* it only, so training
(whole sequences) and generation (one token at a time) mark every token the same way.
"""
from __future__ import annotations

import re
from typing import Sequence

import torch
from torch import nn

LETTERS = "ABCDEFGH"
_MARK = re.compile(rf"\(([{LETTERS}])\)$")   # "(B)" just read
_ENDS = frozenset(".?!\n")


class OptionMarker:
    """Token ids -> the option index (0 = "A") each token belongs to, -1 outside options.

    Works on the decoded text of each token, so it does not depend on how the tokenizer splits "(B)". Special tokens
    end an option, except those in ``transparent`` (the ``<vp_k>`` tags, which are an option's content in "Which is
    larger? (A) <vp_1> (B) <vp_2>").
    """

    def __init__(self, tokenizer, transparent: Sequence[int] = ()):
        self.pieces: list[str | None] = []   # decoded text per id; None: a special token that ends an option
        special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
        keep = set(transparent)
        for i in range(len(tokenizer)):
            if i in keep:
                self.pieces.append("")
            elif i in special:
                self.pieces.append(None)
            else:
                self.pieces.append(tokenizer.decode([i]))

    def __call__(self, ids: Sequence[int]) -> list[int]:
        out, state, tail = [], -1, ""
        for i in ids:
            out.append(state)                  # from the text before this token only
            piece = self.pieces[i] if 0 <= i < len(self.pieces) else None
            if piece is None:
                state, tail = -1, ""
                continue
            for ch in piece:
                tail = (tail + ch)[-3:]
                if ch in _ENDS:
                    state = -1
                elif ch == ")" and (m := _MARK.search(tail)):
                    state = LETTERS.index(m.group(1))
        return out


class OptionEmbedding(nn.Module):
    """A learned vector per option letter, added to the embeddings of the tokens inside that option."""

    def __init__(self, *, hidden_size: int):
        super().__init__()
        self.embed = nn.Embedding(len(LETTERS), hidden_size)
        nn.init.zeros_(self.embed.weight)

    def forward(self, embeds: torch.Tensor, options: torch.Tensor) -> torch.Tensor:
        """embeds (..., L, C) + the option vector of each token; options (..., L) from :class:`OptionMarker`."""
        inside = options >= 0
        return embeds + self.embed(options.clamp(min=0)).to(embeds.dtype) * inside[..., None].to(embeds.dtype)
