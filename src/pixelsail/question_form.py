"""A typed question in the form a model's training questions take, where its training domain has one.

A model trained from scratch on the shapes world has read its questions in one fixed form: a capital first letter,
"the" (or "all") before every referring expression, a final "?" on every question that asks one. Typed otherwise,
the same question reaches it as token sequences it never read, and its answers fall apart (docs/TRAINING.md,
sessions 23-24). :func:`trained_form` rewrites a question into that form and says which changes it made, so the
Predictor can ask the rewritten question and tell the person what it changed. Other domains (a real Qwen2.5
checkpoint has read every form) pass through unchanged.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from pixelsail.data.shapes import RES_TEMPLATES
from pixelsail.domain import SHAPES_DOMAIN

# a shapes training question asking for a mask: the opening of one of RES_TEMPLATES, then the expression
_SEGMENT_QUESTION = re.compile("(" + "|".join(re.escape(t.split(" {}")[0]) for t in RES_TEMPLATES) + ") (.+)")
# the words a referring expression may begin with instead of "the" (Predictor.segment_question lower-cases them)
DETERMINERS = frozenset({"the", "all", "a", "an", "each", "every", "both", "any", "this", "that", "these", "those",
                          "it", "everything", "nothing"})
# first words of a question that asks something (every such shapes training question ends with "?")
INTERROGATIVES = frozenset({"what", "where", "which", "who", "whose", "how", "is", "are", "can", "could", "does",
                            "do"})


@dataclass(frozen=True)
class TrainedForm:
    """``text``: the question as the model is asked it; the flags: which rewrites made it from the typed one."""

    text: str
    capitalised: bool = False     # the first letter was made a capital (:func:`trained_casing`)
    question_mark: bool = False   # a final "?" was added (:func:`with_question_mark`)
    article: bool = False         # "the" was put before a segment question's expression (:func:`with_article`)


def trained_form(domain: str | None, question: str) -> TrainedForm:
    """``question`` with each of the domain's rewrites applied once, in this order: casing, question mark, article."""
    cased = trained_casing(domain, question)
    marked = with_question_mark(domain, cased)
    articled = with_article(domain, marked)
    return TrainedForm(articled, capitalised=cased != question, question_mark=marked != cased,
                       article=articled != marked)


def trained_casing(domain: str | None, text: str) -> str:
    """``text`` with a capital first letter when the model was trained on ``domain``'s questions, which all begin with
    one. Why: the shapes tokenizer knows "What" as one token but splits "what" into pieces it never read in training
    ('w', 'ha', 't'); the shipped model answered 0 of 60 test visual-prompt questions right with a lower-case first
    letter and 55 capitalised (docs/TRAINING.md, session 23). Other domains, and text not starting with a letter,
    as they are."""
    if domain != SHAPES_DOMAIN or not text[:1].islower():
        return text
    return text[0].upper() + text[1:]


def with_question_mark(domain: str | None, text: str) -> str:
    """A shapes question that opens with an asking word ("Is", "What", ...) and ends without punctuation, closed
    with the "?" every such training question ends with: "Is <vp_0> small or large" -> "... small or large?"; in a
    multiple choice the "?" closes the question before its options, as in training ("Is <vp_0> left or right of
    <vp_1> (A) left (B) right" -> "... of <vp_1>? (A) left (B) right").
    Why: of 60 test visual-prompt questions typed without it the shipped model answered 48 right, 54 with it
    ("Is <vp_k> small or large" 6 of 12, 12 with it; docs/TRAINING.md, session 24). Other text as it is."""
    from pixelsail.model.option_choice import parse_options

    if domain != SHAPES_DOMAIN or text.split(" ", 1)[0].lower() not in INTERROGATIVES:
        return text
    cut = text.find("(A)") if parse_options(text) else len(text)
    stem = text[:cut].rstrip()
    if not stem or stem[-1] in ".?!,:;":
        return text
    return f"{stem}?{text[len(stem):]}"


def with_article(domain: str | None, question: str) -> str:
    """A shapes segment question whose expression lacks a determiner given the "the" every training expression
    begins with ("the red star", "all red stars"): "Please segment red star." -> "Please segment the red star.".
    Why: the shipped model's referring cIoU on 60 test expressions was 82.7 % as generated and 61.8 % typed without
    "the" (docs/TRAINING.md, session 23). Other questions and other domains as they are."""
    if domain != SHAPES_DOMAIN:
        return question
    m = _SEGMENT_QUESTION.fullmatch(question)
    if m is None or m.group(2).split(" ", 1)[0].lower() in DETERMINERS:
        return question
    return f"{m.group(1)} the {m.group(2)}"
