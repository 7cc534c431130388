"""option_decoding: a multiple choice is answered with one of its options and that option's own letter; other
questions are answered freely; the cached, uncached and batched paths agree; the evaluation labels the accuracy."""
from __future__ import annotations

import re

import pytest
import torch
from model_utils import random_image, tiny_model

from pixelsail.data.sample import Sample
from pixelsail.evaluate import predict_sample
from pixelsail.metrics import RESTRICTED_KEY
from pixelsail.model.batched import respond_batch
from pixelsail.model.option_choice import OptionConstraint, parse_options
from pixelsail.scoring import score_records

QUESTION = "What colour is <vp_1>? (A) blue (B) red (C) green. Answer with the option's letter."
LARGER = "Which is larger, <vp_2> or <vp_1>? (A) <vp_1> (B) <vp_2>. Answer with the option's letter."


def test_options_are_read_from_the_question_only_when_lettered_from_a_in_order():
    assert parse_options(QUESTION) == [("A", "blue"), ("B", "red"), ("C", "green")]
    assert parse_options(LARGER) == [("A", "<vp_1>"), ("B", "<vp_2>")]
    assert parse_options("Is it (A) dark red (B) light blue?") == [("A", "dark red"), ("B", "light blue")]
    assert parse_options("What colour is <vp_0>?") == []
    assert parse_options("Is plan (B) better?") == []                       # one option: not a multiple choice
    assert parse_options("(B) red (C) blue.") == []                         # not from A
    assert parse_options("(A) red (C) blue.") == []                         # a letter skipped


def test_the_next_token_is_the_best_one_that_stays_on_an_allowed_answer():
    c = OptionConstraint([[5, 7, 9], [5, 8], [6]])
    assert c.allowed([]) == [5, 6] and c.allowed([5]) == [7, 8] and c.allowed([5, 8]) == [] and c.allowed([4]) == []
    logits = torch.zeros(10)
    logits[[3, 6, 7, 8]] = torch.tensor([9.0, 1.0, 2.0, 0.5])              # token 3 is best but not allowed
    assert c.pick(logits, []) == 6
    assert c.pick(logits, [5]) == 7
    with pytest.raises(RuntimeError, match="left every allowed option"):
        c.pick(logits, [4])
    with pytest.raises(ValueError, match="at least one"):
        OptionConstraint([])


def answer_and_options(text: str, question: str) -> tuple[str, str]:
    """The option text and letter an answer wrote, in either answer form."""
    m = re.fullmatch(r"It is (.+) \(([A-H])\)\.|\(([A-H])\) (.+)\.", text)
    assert m is not None, f"not an allowed answer: {text!r}"
    return (m.group(1), m.group(2)) if m.group(1) else (m.group(4), m.group(3))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_multiple_choice_gets_an_option_with_its_own_letter_other_questions_are_free(seed):
    on = tiny_model(seed=seed, option_decoding=True).eval()
    off = tiny_model(seed=seed).eval()
    off.load_state_dict(on.state_dict())
    image = random_image(64, 64, seed=seed)
    for question in (QUESTION, LARGER):
        r = on.respond(on.prefill_image(image), question, max_new_tokens=16)
        word, letter = answer_and_options(r.text, question)
        assert dict(parse_options(question))[letter] == word and r.restricted
        free = off.respond(off.prefill_image(image), question, max_new_tokens=16)
        assert not free.restricted
        # a random tiny model answers anything when free: the switch is what made the answer an allowed one
        with pytest.raises(AssertionError, match="not an allowed answer"):
            answer_and_options(free.text, question)
    plain = "What colour is <vp_1>?"
    a = on.respond(on.prefill_image(image), plain, max_new_tokens=8)
    b = off.respond(off.prefill_image(image), plain, max_new_tokens=8)
    assert a.token_ids == b.token_ids and not a.restricted
    # an answer prefix (the V-T RES re-ask) is continued freely
    c = on.respond(on.prefill_image(image), QUESTION, max_new_tokens=8, answer_prefix="It is")
    d = off.respond(off.prefill_image(image), QUESTION, max_new_tokens=8, answer_prefix="It is")
    assert c.token_ids == d.token_ids and not c.restricted


def test_the_choice_follows_the_models_own_scores():
    model = tiny_model(option_decoding=True).eval()
    tok = model.processor.tokenizer
    logits = model.backbone.logits
    image = random_image(64, 64)
    # the first tokens choose the form; in the word-first form the option's word chooses the option, its letter follows
    for favoured, expected in (("It is red", "It is red (B)."), ("It is green", "It is green (C)."),
                               ("(A", "(A) blue.")):
        ids = tok.encode(favoured, add_special_tokens=False)
        def favour(h, ids=ids):
            out = logits(h).clone()
            out[..., ids] += 100.0
            return out
        model.backbone.logits = favour
        assert model.respond(model.prefill_image(image), QUESTION, max_new_tokens=16).text == expected


def test_cached_uncached_and_batched_answers_agree():
    model = tiny_model(seed=4, option_decoding=True).eval()
    image, other = random_image(64, 64), random_image(64, 96, seed=1)
    p, q = model.prefill_image(image), model.prefill_image(other)
    cached = model.respond(p, QUESTION, max_new_tokens=16)
    uncached = model.respond(p, QUESTION, max_new_tokens=16, use_cache=False)
    batched = respond_batch(model, [p, q, p], [QUESTION, "What colour is <vp_1>?", LARGER], max_new_tokens=16)
    assert cached.token_ids == uncached.token_ids == batched[0].token_ids
    assert batched[2].token_ids == model.respond(p, LARGER, max_new_tokens=16).token_ids
    assert [r.restricted for r in batched] == [True, False, True]


def test_the_evaluation_labels_restricted_answers():
    image = random_image(64, 64)
    sample = Sample(image=image, turns=[(QUESTION, "It is red (B).")], masks=[], task="vp_mcq",
                    meta={"answer": "(B)"})
    records = []
    for i, decoding in enumerate((True, False)):
        model = tiny_model(option_decoding=decoding).eval()
        records.append(predict_sample(model, model.prefill_image(image), sample, i, max_new_tokens=16))
    assert records[0]["decoding"] == "options" and "decoding" not in records[1]
    both = score_records(records).results["vp_mcq"]
    assert both[RESTRICTED_KEY] == 1 and both["samples"] == 2
    assert RESTRICTED_KEY not in score_records(records[1:]).results["vp_mcq"]


@pytest.mark.parametrize("style", ["short", "spelled_out"])
def test_the_answer_forms_are_the_ones_the_training_data_writes(style):
    from pixelsail.data.shapes_tasks import make_sample
    from pixelsail.model.option_choice import ANSWER_FORMS

    for index in range(6):
        sample = make_sample("train", index, "vp_mcq", answer_style=style)
        (question, answer), = sample.turns
        allowed = {form.format(option=text, letter=letter) for form in ANSWER_FORMS
                   for letter, text in parse_options(question)}
        assert answer in allowed, (question, answer)
