"""benchmarks.text_lookup: the plain-decoder look-up probe builds the right questions and trains."""
from __future__ import annotations

import re

import numpy as np
import torch

from benchmarks import text_lookup


def test_adjacent_layout_puts_each_letter_right_after_its_word_and_keeps_the_answer():
    rng = np.random.default_rng(3)
    for _ in range(20):
        question, answer = text_lookup.letter_lookup_text(rng)
        q2, a2 = text_lookup.adjacent(question, answer)
        options = dict(re.findall(r"\(([A-D])\) (\S+?)(?= \(|\.$)", question))
        word, letter = re.match(r"It is (\S+) \(([A-D])\)\.$", answer).groups()
        assert options[letter] == word and a2 == f"It is {word}{letter}."
        assert q2.split("? ")[1] == ", ".join(f"{options[k]}{k}" for k in sorted(options)) + "."


def test_lookup_batches_mark_the_letter_and_learn_only_the_answer():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(text_lookup.TOKENIZER)
    for layout in text_lookup.LAYOUTS:
        ids, labels, at = text_lookup.Lookups(tok, layout).batch(np.random.default_rng(0), 8)
        rows = torch.arange(len(ids))
        assert {tok.decode([int(t)]) for t in ids[rows, at]} <= set("ABCD")
        assert torch.equal(labels[rows, at], ids[rows, at])                 # the letter is learned ...
        for i in range(len(ids)):                                            # ... and nothing but the answer
            learned = tok.decode(ids[i][labels[i] != text_lookup.IGNORE].tolist())
            assert re.fullmatch(r"It is \S+( \([A-D]\)|[A-D])\.", learned), learned


def test_token_conv_is_causal():
    conv = text_lookup.TokenConv(8, 4)
    x = torch.randn(1, 10, 8)
    y = x.clone()
    y[:, 6:] += 1.0
    assert torch.allclose(conv(x)[:, :6], conv(y)[:, :6]) and not torch.allclose(conv(x)[:, 6:], conv(y)[:, 6:])


def test_a_short_run_gives_a_curve_with_and_without_the_conv():
    for conv in (0, 3):
        curve = text_lookup.run(lr=1e-3, seed=0, samples=64, batch=16, eval_every=32, token_conv=conv,
                                log=lambda s: None)
        assert [n for n, _ in curve] == [32, 64] and all(0.0 <= a <= 100.0 for _, a in curve)
