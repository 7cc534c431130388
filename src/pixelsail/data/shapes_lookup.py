"""Option look-ups in the multiple choice's layout: training text for the letter of an MCQ answer.

"Which letters are red and blue? (A) blue (B) green (C) yellow (D) red. Answer with the options' letters."
-> "They are red (D), blue (A)."                                           (several words asked: dense)
"Options: (A) blue (B) red (C) green. Answer with the option's letter." -> "It is red (B)."   (one: no word named)

A multiple-choice answer "It is red (D)." needs, once per sample, to find its word among the listed options and copy
the letter written before it; the shipped model never learned that (the letter given the right word is a guess,
docs/TRAINING.md sessions 11-17). Session 17 measured these look-ups as a share of the recipe's mix (not learned,
and the other tasks lost) and as a first stage (a look-up from a word named in the question is learned but does not
carry over to the multiple choice; from the answer's own word, the single form here, not learned in 32,000 samples).
The options come from the multiple choice's own vocabularies (colours, shapes, sides, prompt tags). Without an image
the samples are short; ``with_image`` puts the split's scene in front, so the text sits where a multiple choice's
does, after the vision block.
"""
from __future__ import annotations

import numpy as np

from pixelsail.data.llava import text_only_image
from pixelsail.data.registry import register_dataset
from pixelsail.data.sample import Sample
from pixelsail.data.shapes_language import _pick
from pixelsail.data.shapes_scene import COLOR_NAMES, SHAPES, generate_scene, make_rng
from pixelsail.data.shapes_tasks import MCQ_LETTERS, listed_options
from pixelsail.tokens import DEFAULT_NUM_VP_TOKENS, vp_token

# the option vocabularies of the shapes multiple choice: colour, shape, side and "which is larger" questions
OPTION_VOCABULARIES: tuple[tuple[str, ...], ...] = (
    tuple(COLOR_NAMES), tuple(SHAPES), ("left", "right"), tuple(vp_token(k) for k in range(DEFAULT_NUM_VP_TOKENS)))


def option_lookup_text(rng: np.random.Generator, max_asked: int = len(MCQ_LETTERS)) -> tuple[str, str]:
    """One look-up (question, answer): up to four options, one to ``max_asked`` of them asked, in a random order.

    Several asked is the denser signal but has a shortcut: the last letter of "all four" follows by elimination,
    so a model that never looks a word up still scores about 40 % of those letters (session 17)."""
    if max_asked < 1:
        raise ValueError(f"max_asked must be >= 1, got {max_asked}")
    vocab = _pick(rng, OPTION_VOCABULARIES)
    options = [str(o) for o in rng.choice(vocab, size=min(len(MCQ_LETTERS), len(vocab)), replace=False)]
    order = rng.permutation(len(options))
    asked = [options[i] for i in order[:int(rng.integers(1, min(max_asked, len(options)) + 1))]]
    if len(asked) == 1:
        return _single_lookup(rng, options, asked[0])
    words = ", ".join(asked[:-1]) + " and " + asked[-1]
    # "They are red (D), blue (A).": every asked word space-led, as in the options
    letters = ", ".join(f"{o} ({MCQ_LETTERS[options.index(o)]})" for o in asked)
    return (f"Which letters are {words}? {listed_options(options)}. Answer with the options' letters.",
            f"They are {letters}.")


# openings of different lengths before a single look-up's options
PREAMBLES: tuple[str, ...] = ("", "Options:", "Here are the options.", "Look at the options below.",
                              "Read the options below and pick one of them.")


def _single_lookup(rng: np.random.Generator, options: list[str], word: str) -> tuple[str, str]:
    """"Here are the options. (A) blue (B) red (C) green. Answer with the option's letter." -> "It is red (B)."

    The question names no word: any option is a right answer, and the letter must be looked up from the word the
    answer has just written, as in a multiple choice, whose word comes from the image. Asked in the question
    ("Which is red?"), the word let the stages learn a look-up from the question's side that did not carry over to
    the multiple choice (session 17). Two to four of the options are kept behind a preamble of random length, so
    the options move from question to question and no place stands for a letter."""
    keep = sorted(rng.choice(len(options), size=int(rng.integers(2, len(options) + 1)), replace=False))
    kept = [options[i] for i in keep]
    if word not in kept:
        kept[int(rng.integers(len(kept)))] = word
    preamble = str(_pick(rng, PREAMBLES))
    question = f"{listed_options(kept)}. Answer with the option's letter."
    return (f"{preamble} {question}" if preamble else question), f"It is {word} ({MCQ_LETTERS[kept.index(word)]})."


class ShapesLookupDataset:
    """Map-style dataset of option look-ups, text-only or after a scene (``with_image``); ``ds[i]`` depends only on
    (split, seed, image_size, with_image, i)."""

    def __init__(self, split: str = "train", size: int = 10000, seed: int = 0, with_image: bool = False,
                 image_size: int = 128, max_asked: int = len(MCQ_LETTERS)):
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        if max_asked < 1:
            raise ValueError(f"max_asked must be >= 1, got {max_asked}")
        self.max_asked = int(max_asked)
        self.split, self.size, self.seed = split, int(size), int(seed)
        self.with_image, self.image_size = bool(with_image), int(image_size)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for ShapesLookupDataset of size {self.size}")
        turn = option_lookup_text(make_rng(self.seed, self.split, int(index), 7), self.max_asked)
        if self.with_image:
            scene = generate_scene(self.split, int(index), self.seed, self.image_size)
            return Sample(image=scene.image, turns=[turn], task="vqa", image_id=scene.image_id,
                          meta={"source": "shapes_lookup"})
        return Sample(image=text_only_image(), turns=[turn], task="vqa", image_id=f"text:lookup:{self.split}:{index}",
                      meta={"text_only": True, "source": "shapes_lookup"})


@register_dataset("shapes_lookup")
def build_shapes_lookup(**kwargs) -> ShapesLookupDataset:
    from pixelsail.data.shapes_render import refuse_for_training

    refuse_for_training(str(kwargs.get("split", "train")))   # its scenes are the split's (with_image)
    return ShapesLookupDataset(**kwargs)
