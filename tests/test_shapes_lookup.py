"""The option look-ups (``shapes_lookup``): right letters, deterministic, with or without a scene, in a mixture."""
from __future__ import annotations

import re

import pytest

from model_utils import tiny_model
from pixelsail.data.registry import build_dataset
from pixelsail.data.shapes_lookup import OPTION_VOCABULARIES, ShapesLookupDataset


def _parsed(question: str, answer: str) -> tuple[dict[str, str], list[str], list[tuple[str, str]]]:
    """(letter -> option, asked words, [(word, letter)] of the answer); a single look-up names no word in its
    question, the word its answer chose is the asked one."""
    answered = re.findall(r"(\S+) \(([A-D])\)", answer)
    several = re.match(r"Which letters are (.+?)\? (\(A\) .+)\. Answer with the options' letters\.$", question)
    if several:
        words, listed = several.groups()
        asked = re.split(r", | and ", words)
    else:
        listed = re.search(r"(\(A\) .+)\. Answer with the option's letter\.$", question).group(1)
        asked = [answered[0][0]]
    options = dict(re.findall(r"\(([A-D])\) (\S+?)(?= \(|$)", listed))
    return options, asked, answered


def test_every_letter_of_the_answer_is_the_one_written_before_its_word():
    ds = ShapesLookupDataset(size=200)
    counts, letters, vocabularies = set(), set(), set()
    for i in range(len(ds)):
        sample = ds[i]
        (question, answer), = sample.turns
        options, asked, answered = _parsed(question, answer)
        assert len(set(options.values())) == len(options) >= 2
        assert [w for w, _ in answered] == asked and set(asked) <= set(options.values())
        assert all(options[letter] == word for word, letter in answered)
        assert answer.startswith("It is " if len(asked) == 1 else "They are ")
        counts.add(len(asked))
        letters |= {letter for _, letter in answered}
        vocabularies |= {k for k, vocab in enumerate(OPTION_VOCABULARIES) if set(options.values()) <= set(vocab)}
        assert sample.meta["text_only"] and not sample.masks and not sample.prompts
        sample.validate()
    # one to four words asked, every letter used, options from every multiple-choice vocabulary
    assert counts == {1, 2, 3, 4} and letters == set("ABCD") and vocabularies == set(range(4))


def test_samples_depend_on_split_seed_and_index_only():
    a, b = ShapesLookupDataset(size=20), ShapesLookupDataset(size=20)
    assert [a[i].turns for i in range(20)] == [b[i].turns for i in range(20)]
    other = ShapesLookupDataset(size=20, seed=1)
    assert [a[i].turns for i in range(20)] != [other[i].turns for i in range(20)]
    assert [a[i].turns for i in range(20)] != [ShapesLookupDataset("val", size=20)[i].turns for i in range(20)]
    with pytest.raises(IndexError, match="out of range"):
        a[20]
    with pytest.raises(ValueError, match="size must be >= 0"):
        ShapesLookupDataset(size=-1)


def test_registered_for_mixtures_and_processed_as_text_without_an_image():
    ds = build_dataset("shapes_lookup", split="train", size=4)
    model = tiny_model()
    feats = model.processor(ds[0])
    assert feats["image"] is None and feats["masks"].numel() == 0
    supervised = feats["labels"][feats["labels"] >= 0]
    answer = ds[0].turns[0][1]
    assert model.processor.tokenizer.decode(supervised.tolist()).strip().startswith(answer[:6])


def test_with_image_puts_the_splits_scene_before_the_same_lookup_and_refuses_the_held_out_rendering():
    from pixelsail.data.shapes import generate_scene

    text, framed = ShapesLookupDataset(size=3), ShapesLookupDataset(size=3, with_image=True, image_size=64)
    for i in range(3):
        sample = framed[i]
        sample.validate()
        assert sample.turns == text[i].turns and not sample.meta.get("text_only")
        assert (sample.image == generate_scene("train", i, 0, 64).image).all()
    model = tiny_model()
    assert model.processor(framed[0])["image"] is not None
    with pytest.raises(ValueError, match="cannot be trained on"):
        build_dataset("shapes_lookup", split="test_perturbed", with_image=True)


def test_max_asked_one_names_no_word_and_places_the_options_anywhere():
    ds = ShapesLookupDataset(size=60, max_asked=1)
    starts, counts = set(), set()
    for i in range(len(ds)):
        (question, answer), = ds[i].turns
        options, asked, answered = _parsed(question, answer)
        assert len(asked) == 1 and answer == f"It is {asked[0]} ({answered[0][1]})."
        assert options[answered[0][1]] == asked[0]
        # the question names no word: the answer's word is where the look-up starts, as in a multiple choice
        assert f" {asked[0]}" not in question.replace(f") {asked[0]}", ")")
        starts.add(question.index("(A)"))
        counts.add(len(options))
    # the options sit at different places and number two to four: no fixed place stands for a letter
    assert len(starts) >= 4 and counts == {2, 3, 4}
    with pytest.raises(ValueError, match="max_asked must be >= 1"):
        ShapesLookupDataset(max_asked=0)
