"""The shapes world: seeded scenes of coloured shapes with exact masks, and samples for every task.

Scenes are :mod:`pixelsail.data.shapes_scene`, the expressions :mod:`pixelsail.data.shapes_language`, the questions
and answers :mod:`pixelsail.data.shapes_tasks`; this module gathers their public names and holds the datasets
(``shapes``, ``shapes_echo``) and the tokenizer corpus.

A scene is a textured grey background with 2-6 flat-coloured shapes painted in order, so later shapes occlude
earlier ones. Each object keeps its full (unoccluded) mask and its *visible* mask. An object is either visible
(enough pixels, see :func:`compose_scene`) or fully hidden; a hidden object is never the target or the subject of
any expression. Everything is deterministic in (split, index, seed): the random stream is seeded from all three,
so splits share no scene.

The language is deliberately small and regular so a tiny model can learn it in minutes on a CPU:

* attributes: size (small/large, by full area), colour (:data:`COLORS`), shape (:data:`SHAPES`);
* relations between visible centroids: "left of", "right of", "above", "below";
* positions: a 3x3 grid of the visible centroid (:data:`POSITIONS`).
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Mapping, Sequence

import numpy as np

from pixelsail.data.llava import text_only_image
from pixelsail.data.registry import register_dataset
from pixelsail.data.sample import Sample
# the scene and task modules' public names, gathered here: ``pixelsail.data.shapes`` is the shapes world's API
from pixelsail.data.shapes_scene import (  # noqa: F401
    BACKGROUND_MAX_SPREAD, COLOR_NAMES, COLORS, LARGE_AREA, LARGE_MIN_AREA, POSITIONS, RELATIONS, SHAPES, SIZES,
    SMALL_AREA, ObjectSpec, Scene, ShapeObject, compose_scene, generate_scene, make_rng, random_specs, scene_and_rng,
    shape_mask, shape_window, split_code, textured_background, unit_area_and_extent)
from pixelsail.data.shapes_language import (  # noqa: F401
    Referral, attribute_referrals, describe, matches, multi_referrals, no_target_referral, reading_order,
    relation_holds, relation_referrals, seg_answer, unique_descriptions)
from pixelsail.data.shapes_tasks import (  # noqa: F401
    ANSWER_STYLES, CAPTION_QUESTIONS, GCG_QUESTIONS, MCQ_LETTERS, PROMPT_KINDS, RELATION_RATE, RES_TEMPLATES,
    SHAPES_TASKS, TASK_BUILDERS, VP_QA_KINDS, VT_RES_KINDS, check_answer_style, check_relation_rate, gcg_answer,
    listed_options, make_gcg, make_gres, make_region_caption, make_res, make_sample, make_vp_mcq, make_vp_qa,
    make_vt_res, mcq_question, prompt_mask_for, prompt_objects, region_caption, spell_out, target_name, vt_res_options)
from pixelsail.tokens import (DEFAULT_NUM_VP_TOKENS, MCQ_INSTRUCTION, NO_TARGET_ANSWER, PHRASE_END, PHRASE_START, SEG,
                              vp_token)


# ----------------------------------------------------------------------------------------------------------------
# dataset


def _task_weights(tasks: Mapping[str, float] | Sequence[str] | None) -> tuple[list[str], np.ndarray]:
    if tasks is None:
        tasks = {t: 1.0 for t in SHAPES_TASKS}
    elif not isinstance(tasks, Mapping):
        tasks = {t: 1.0 for t in tasks}
    for t, w in tasks.items():
        if t not in TASK_BUILDERS:
            raise ValueError(f"unknown shapes task {t!r}; expected one of {SHAPES_TASKS}")
        if not (float(w) >= 0):
            raise ValueError(f"task weight for {t!r} must be >= 0, got {w!r}")
    names = [t for t, w in tasks.items() if float(w) > 0]
    if not names:
        raise ValueError("at least one task needs a positive weight")
    weights = np.array([float(tasks[t]) for t in names])
    return names, weights / weights.sum()


class ShapesDataset:
    """Map-style dataset of shapes-world Samples; ``ds[i]`` depends only on (split, seed, image_size, tasks, i)."""

    def __init__(self, split: str = "train", tasks: Mapping[str, float] | Sequence[str] | None = None,
                 image_size: int = 128, size: int = 10000, seed: int = 0, answer_style: str = "short",
                 relation_rate: float = RELATION_RATE):
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        check_answer_style(answer_style)   # at construction, not at the first sample
        check_relation_rate(relation_rate)
        self.relation_rate = float(relation_rate)
        self.split, self.image_size, self.size, self.seed = split, int(image_size), int(size), int(seed)
        self.answer_style = answer_style
        self.task_names, self.task_probs = _task_weights(tasks)

    def __len__(self) -> int:
        return self.size

    def task_of(self, index: int) -> str:
        rng = make_rng(self.seed, self.split, index, 2)
        return self.task_names[int(rng.choice(len(self.task_names), p=self.task_probs))]

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for ShapesDataset of size {self.size}")
        return make_sample(self.split, int(index), self.task_of(index), self.seed, self.image_size,
                           answer_style=self.answer_style, relation_rate=self.relation_rate)


def _trainable_split(kwargs: Mapping) -> None:
    """Registry datasets feed training mixtures: a held-out rendering split (``*_perturbed``) is refused there."""
    from pixelsail.data.shapes_render import refuse_for_training

    refuse_for_training(str(kwargs.get("split", "train")))


@register_dataset("shapes")
def build_shapes(**kwargs) -> ShapesDataset:
    _trainable_split(kwargs)
    return ShapesDataset(**kwargs)


ECHO_TASKS: tuple[str, ...] = ("res", "gres", "vt_res", "vp_qa", "vp_mcq")


class ShapesEchoDataset:
    """Text-only samples for a language warm-up: a shapes question answered by repeating what it refers to.

    "Please segment the red circle left of the blue star." -> "Sure, [SEG] the red circle left of the blue star."
    "What colour is <vp_3>? ..." -> "<vp_3>."

    A model trained from scratch behind an image prefix is slow to learn that an answer token should look back at
    the question (docs/TRAINING.md); without the image it learns that copy in a few dozen steps, and keeps it when
    the images come. The [SEG] here is a plain token: it learns to attend to the expression it will stand for.
    """

    def __init__(self, split: str = "train", tasks: Mapping[str, float] | Sequence[str] | None = None,
                 size: int = 10000, seed: int = 0, image_size: int = 128):
        self.source = ShapesDataset(split, tasks=tasks if tasks is not None else {t: 1.0 for t in ECHO_TASKS},
                                    image_size=image_size, size=size, seed=seed)
        bad = [t for t in self.source.task_names if t not in ECHO_TASKS]
        if bad:
            raise ValueError(f"shapes_echo cannot echo task(s) {bad}; it echoes {ECHO_TASKS}")

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Sample:
        sample = self.source[index]
        question = sample.turns[0][0]
        expression = sample.meta.get("expression")
        if expression:
            answer = f"Sure, {SEG} {expression}."
        else:
            tags = re.findall(r"<vp_\d+>", question)
            answer = f"{tags[0]}." if tags else NO_TARGET_ANSWER
        return Sample(image=text_only_image(), turns=[(question, answer)], task="vqa",
                      image_id=f"text:{sample.image_id}", meta={"text_only": True, "source": "shapes_echo"})


@register_dataset("shapes_echo")
def build_shapes_echo(**kwargs) -> ShapesEchoDataset:
    _trainable_split(kwargs)
    return ShapesEchoDataset(**kwargs)


# ----------------------------------------------------------------------------------------------------------------
# tokenizer corpus


def vocabulary_sentences() -> list[str]:
    """Sentences that together use every word and template the generator can emit."""
    out = [NO_TARGET_ANSWER, seg_answer(1), seg_answer(2), seg_answer(3), MCQ_INSTRUCTION]
    out += [t.format("x") for t in RES_TEMPLATES + CAPTION_QUESTIONS] + list(GCG_QUESTIONS)
    for size in SIZES:
        for color in COLORS:
            for shape in SHAPES:
                out.append(f"the {size} {color} {shape} and all {size} {color} {shape}s")
    out += [f"all {size} objects, all {color} objects" for size in SIZES for color in COLORS]
    out += [f"{rel} the {pos}" for rel in RELATIONS for row in POSITIONS for pos in row]
    out += [f"{vp_token(k)}: is not in the image. What colour shape Is small or large? Where is "
            f"Which is larger, or left right of Segment the object with the same colour as shape as "
            f"partly covered by a There is {PHRASE_START} {PHRASE_END}" for k in range(DEFAULT_NUM_VP_TOKENS)]
    out += [" ".join(f"({letter})" for letter in MCQ_LETTERS)]
    return out


def shapes_text_corpus(n: int = 2000, seed: int = 0) -> list[str]:
    """Text for training a tokenizer: :func:`vocabulary_sentences` (every word the generator can emit) plus the
    questions and answers of ``n`` samples (realistic word frequencies for BPE merges)."""
    return list(_text_corpus(max(int(n), 0), int(seed)))


@lru_cache(maxsize=4)
def _text_corpus(n: int, seed: int) -> tuple[str, ...]:
    ds = ShapesDataset("train", size=n, seed=seed, image_size=64)
    texts = vocabulary_sentences()
    for i in range(len(ds)):
        for q, a in ds[i].turns:
            texts += [q, a]
    return tuple(texts)
