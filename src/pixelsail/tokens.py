"""Special tokens and the chat layout shared by the processor, the model and the data.

A training/inference sequence is::

    <vision> <vpatch>*N </vision> <|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n{answer}<|im_end|>\n ...

The image comes first so that its (bidirectional) prefix can be cached and reused for every turn.
"""
from __future__ import annotations

import re

VISION_START = "<vision>"
VPATCH = "<vpatch>"
VISION_END = "</vision>"
SEG = "[SEG]"
PHRASE_START = "<p>"
PHRASE_END = "</p>"
TURN_START = "<|im_start|>"
TURN_END = "<|im_end|>"
PAD = "<|endoftext|>"

DEFAULT_NUM_VP_TOKENS = 16
NO_TARGET_ANSWER = "No target."
# a multiple choice's answer: option first (the spelled-out answer styles) or letter first (the paper's short answers);
# the shapes data writes these, and option decoding (model/option_choice.py) allows exactly these
MCQ_OPTION_FIRST = "It is {option} ({letter})."
MCQ_LETTER_FIRST = "({letter}) {option}."
# how the shapes data closes a multiple-choice question; the Predictor closes a user's options with it too
MCQ_INSTRUCTION = "Answer with the option's letter."

_VP_RE = re.compile(r"<vp_(\d+)>")


def seg_answer(n_targets: int) -> str:
    """The answer of a referring question with ``n_targets`` target masks, one ``[SEG]`` each: "Sure, [SEG]." /
    "Sure, [SEG] and [SEG]." / "Sure, [SEG], [SEG] and [SEG]."; "No target." for none."""
    if n_targets == 0:
        return NO_TARGET_ANSWER
    if n_targets == 1:
        return f"Sure, {SEG}."
    return f"Sure, {', '.join([SEG] * (n_targets - 1))} and {SEG}."


def vp_token(k: int) -> str:
    return f"<vp_{k}>"


def vp_tokens(num_vp_tokens: int = DEFAULT_NUM_VP_TOKENS) -> list[str]:
    return [vp_token(k) for k in range(num_vp_tokens)]


def special_tokens(num_vp_tokens: int = DEFAULT_NUM_VP_TOKENS) -> list[str]:
    """The tokens pixelsail adds to any tokenizer (each must stay a single id)."""
    return [VISION_START, VPATCH, VISION_END, SEG, PHRASE_START, PHRASE_END, *vp_tokens(num_vp_tokens)]


def vp_indices(text: str) -> list[int]:
    """The k of every ``<vp_k>`` mentioned in ``text``, in order of first appearance."""
    seen: list[int] = []
    for m in _VP_RE.finditer(text):
        k = int(m.group(1))
        if k not in seen:
            seen.append(k)
    return seen


def user_turn(text: str) -> str:
    return f"{TURN_START}user\n{text}{TURN_END}\n"


def assistant_header() -> str:
    return f"{TURN_START}assistant\n"


def assistant_turn(text: str) -> str:
    return f"{assistant_header()}{text}{TURN_END}\n"
