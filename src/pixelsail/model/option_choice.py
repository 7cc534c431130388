"""A multiple choice answered with one of its options (not in the paper; ``option_decoding: true``).

A multiple choice ("What colour is <vp_3>? (A) blue (B) red (C) green. Answer with the option's letter.") is answered
"It is red (B).". The word comes from the image, the letter from where that word stands among the options. The
shapes-tiny decoder gets the word right for 70 % of the test questions and writes the letter after it by chance
(34 %), whatever it was taught (docs/TRAINING.md, sessions 11-18): free generation lets it write an option with
another option's letter, or a word that is no option at all.

With this switch generation is restricted to the answers the question allows: each option written in each of
:data:`ANSWER_FORMS`, token by token (greedy, as free generation; the next token is the best one that keeps the
answer a prefix of some allowed answer). The model still chooses - the first tokens decide the form, the option's
own tokens decide which option - and the letter is then the one that belongs to the chosen option, as a person
filling in a form would write it. The same as constrained decoding with a list of choices in common LLM serving
stacks; the evaluation labels its multiple-choice accuracy with the decoding that produced it. Questions without
"(A) ... (B) ..." options are answered freely.
"""
from __future__ import annotations

import re
from typing import Sequence

import torch

from pixelsail.model.option_marks import LETTERS
from pixelsail.tokens import MCQ_LETTER_FIRST, MCQ_OPTION_FIRST

# the answer forms the training data writes (pixelsail.tokens)
ANSWER_FORMS = (MCQ_OPTION_FIRST, MCQ_LETTER_FIRST)
_OPTION = re.compile(rf"\(([{LETTERS}])\)\s*(.+?)(?=\s*\([{LETTERS}]\)|[.?!](?:\s|$)|$)", re.S)


def parse_options(question: str) -> list[tuple[str, str]]:
    """The "(A) text (B) text ..." options of ``question`` as (letter, text) pairs; [] when it has none.

    Options must be lettered from A on, in order, with at least two of them; anything else is not read as a multiple
    choice (an empty list), so an ordinary question that happens to contain "(B)" is answered freely.
    """
    found = [(m.group(1), m.group(2).strip()) for m in _OPTION.finditer(question)]
    letters = "".join(letter for letter, _ in found)
    if len(found) < 2 or letters != LETTERS[:len(found)] or any(not text for _, text in found):
        return []
    return found


class OptionConstraint:
    """The token sequences an answer may take (every option in every form, each ending with the turn's end), and
    the greedy choice of the next token among those that keep the answer on one of them."""

    def __init__(self, candidates: Sequence[Sequence[int]]):
        if not candidates:
            raise ValueError("an option constraint needs at least one allowed answer")
        self.candidates = [list(c) for c in candidates]

    @classmethod
    def from_question(cls, processor, question: str) -> OptionConstraint | None:
        """None when ``question`` lists no options."""
        options = parse_options(question)
        if not options:
            return None
        end = processor.ids["turn_end"]
        return cls([processor.encode(form.format(option=text, letter=letter)) + [end]
                    for form in ANSWER_FORMS for letter, text in options])

    def allowed(self, answer: Sequence[int]) -> list[int]:
        """The tokens that may follow ``answer`` (the answer's token ids so far); [] when it left every candidate."""
        n, answer = len(answer), list(answer)
        return sorted({c[n] for c in self.candidates if len(c) > n and c[:n] == answer})

    def pick(self, logits: torch.Tensor, answer: Sequence[int]) -> int:
        """The highest-scoring allowed next token; logits (V,)."""
        allowed = self.allowed(answer)
        if not allowed:
            raise RuntimeError("the answer left every allowed option (constrained decoding out of step)")
        idx = torch.tensor(allowed, device=logits.device)
        return allowed[int(logits[idx].argmax())]


__all__ = ["ANSWER_FORMS", "OptionConstraint", "parse_options"]
