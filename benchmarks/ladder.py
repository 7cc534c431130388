"""The grounding ladder's rungs: shapes-world tasks from easiest to hardest, each a sample builder and a metric.

A rung turns a shapes scene into one :class:`~pixelsail.data.sample.Sample` (or ``None`` when the scene cannot
support it). Mask rungs are scored by cIoU of the teacher-forced ``[SEG]`` masks; answer rungs by teacher-forced
exact match of the whole answer; the grounded-conversation rung scores each ``[SEG]``'s mask against its own object. ``meta["oracle"]`` holds, per target mask, the (colour, shape, size) ids an oracle
query may use; ``Rung.oracle_keys`` says which of the three the oracle of that rung embeds (``None``: no oracle).
"""
from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from pixelsail.data.sample import Sample
from pixelsail.data.shapes import (
    COLOR_NAMES, GCG_QUESTIONS, MCQ_LETTERS, SHAPES, SIZES, Scene, ShapeObject, gcg_answer, listed_options,
    make_vp_mcq, make_vp_qa, multi_referrals, no_target_referral, prompt_objects, reading_order, relation_referrals,
    scene_and_rng, seg_answer, spell_out,
)
from pixelsail.data.shapes_lookup import OPTION_VOCABULARIES, option_lookup_text
from pixelsail.tokens import vp_token

# draws of a multiple choice on one scene before giving up on a question of the wanted kind (each kind is a quarter)
MCQ_KIND_TRIES = 24
ATTR_KEYS = ("color", "shape", "size")


def attribute_ids(obj: ShapeObject) -> tuple[int, int, int]:
    return COLOR_NAMES.index(obj.color), SHAPES.index(obj.shape), SIZES.index(obj.size)


class AttributeOracle(nn.Module):
    """Per-target (colour, shape, size) ids -> a mask query: the sum of one learned vector per embedded attribute
    (``keys``, a subset of :data:`ATTR_KEYS`): the best query a language side could hand the mask head."""

    def __init__(self, mask_dim: int, keys: tuple[str, ...] = ATTR_KEYS):
        super().__init__()
        sizes = {"color": len(COLOR_NAMES), "shape": len(SHAPES), "size": len(SIZES)}
        self.keys = keys
        self.tables = nn.ModuleDict({k: nn.Embedding(sizes[k], mask_dim) for k in keys})

    def forward(self, attrs: torch.Tensor) -> torch.Tensor:
        """attrs (M, 3) in ATTR_KEYS order -> (M, mask_dim)."""
        return sum(self.tables[k](attrs[:, ATTR_KEYS.index(k)]) for k in self.keys)


def _unique(obj: ShapeObject, visible: list[ShapeObject], keys: tuple[str, ...]) -> bool:
    return [o for o in visible if all(getattr(o, k) == getattr(obj, k) for k in keys)] == [obj]


# where a single-target rung's predicted pixels fall, relative to its target (:func:`destination_map`)
DESTINATIONS = ("target", "same colour", "same shape", "other objects", "background")


def destination_map(scene: Scene, target: ShapeObject) -> np.ndarray:
    """(H, W) uint8 index into :data:`DESTINATIONS`: the target's visible pixels, those of other objects with its
    colour, with its shape (not its colour), of the remaining objects, and the background. What a mask that missed
    got wrong: on the colour+shape rung, pixels on same-colour objects mean the shape word was not followed."""
    out = np.full(target.mask.shape, DESTINATIONS.index("background"), dtype=np.uint8)
    for o in scene.visible_objects:
        kind = ("target" if o is target else "same colour" if o.color == target.color
                else "same shape" if o.shape == target.shape else "other objects")
        out[o.mask] = DESTINATIONS.index(kind)
    return out


# what became of a list of [SEG]s ("Sure, [SEG], [SEG] and [SEG].") against its targets (:func:`list_outcomes`)
LIST_OUTCOMES = ("targets found", "masks empty", "masks over two targets", "masks repeating another")


def list_overlaps(pred: np.ndarray, targets: list[np.ndarray], found_iou: float = 0.5
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For a list's masks ``pred`` (k, H, W) bool and its targets: the masks flattened (k, H*W) int, which targets
    are found (n,) (one-to-one assignment of masks to targets by IoU, the pair at ``found_iou`` or above) and which
    mask holds at least half of which target (k, n)."""
    from scipy.optimize import linear_sum_assignment

    flat_t = np.stack(targets).reshape(len(targets), -1).astype(np.int64)     # (n, H*W)
    flat_p = pred.reshape(len(pred), flat_t.shape[1]).astype(np.int64)        # (k, H*W)
    inter = flat_p @ flat_t.T                                                 # (k, n)
    iou = inter / np.maximum(flat_p.sum(1)[:, None] + flat_t.sum(1)[None] - inter, 1)
    found = np.zeros(len(targets), dtype=bool)
    if len(pred):
        rows, cols = linear_sum_assignment(-iou)
        found[cols[iou[rows, cols] >= found_iou]] = True
    return flat_p, found, inter / np.maximum(flat_t.sum(1)[None], 1) >= 0.5


def list_outcomes(pred: np.ndarray, targets: list[np.ndarray], found_iou: float = 0.5) -> np.ndarray:
    """Counts (6,) for one multi-target sample, ``pred`` (k, H, W) bool its [SEG]s' masks: targets found (one-to-one
    assignment of masks to targets by IoU, the pair at ``found_iou`` or above), targets, empty masks, masks holding
    at least half of each of two targets or more, masks at ``found_iou`` IoU or above with an earlier mask, masks.
    A union cIoU below the oracle's says only that pixels are missing or extra; these say whether a list lost an
    object to an empty mask, to one mask spread over several objects, or to two masks on the same object."""
    flat_p, found_targets, holds_half = list_overlaps(pred, targets, found_iou)
    found = int(found_targets.sum())
    empty = int((flat_p.sum(1) == 0).sum())
    spanning = int((holds_half.sum(1) >= 2).sum())
    pair_inter = flat_p @ flat_p.T
    pair_iou = pair_inter / np.maximum(flat_p.sum(1)[:, None] + flat_p.sum(1)[None] - pair_inter, 1)
    repeating = int(sum((pair_iou[k, :k] >= found_iou).any() for k in range(len(pred)) if flat_p[k].any()))
    return np.array([found, len(targets), empty, spanning, repeating, len(pred)], dtype=np.int64)


def list_shares(counts: np.ndarray) -> list[float]:
    """:data:`LIST_OUTCOMES` in percent from summed :func:`list_outcomes` counts (targets found per target, the
    rest per mask)."""
    found, targets, empty, spanning, repeating, masks = (int(c) for c in counts)
    return [round(100.0 * found / max(targets, 1), 1)] + [round(100.0 * c / max(masks, 1), 1)
                                                          for c in (empty, spanning, repeating)]


def _seg_sample(scene: Scene, rung: str, question: str, targets: list[ShapeObject], answer: str | None = None,
                task: str | None = None) -> Sample:
    """A mask sample; the answer defaults to "Sure, [SEG] ..." (one [SEG] per target), the task to res / gres."""
    everything = np.any(np.stack([o.mask for o in scene.visible_objects]), axis=0)
    answer = seg_answer(len(targets)) if answer is None else answer
    return Sample(image=scene.image, turns=[(question, answer)], masks=[t.mask for t in targets],
                  task=task or ("res" if len(targets) == 1 else "gres"), image_id=scene.image_id,
                  meta={"rung": rung, "oracle": [attribute_ids(t) for t in targets], "no_target": not targets,
                        "all_objects": everything, "target_index": [t.index for t in targets]})


def _pick(rng: np.random.Generator, items: list):
    return items[int(rng.integers(len(items)))] if items else None


def _by_keys(rung: str, keys: tuple[str, ...], needs_all: bool, template: str) -> Callable:
    """A target singled out by exactly ``keys``; with ``needs_all`` no proper subset of them would do."""

    def build(scene: Scene, rng: np.random.Generator) -> Sample | None:
        vis = scene.visible_objects
        pool = [o for o in vis if _unique(o, vis, keys)]
        if needs_all:
            pool = [o for o in pool if not any(_unique(o, vis, (k,)) for k in keys)]
        obj = _pick(rng, pool)
        if obj is None:
            return None
        words = " ".join(getattr(obj, k) for k in ("size", "color", "shape") if k in keys)
        return _seg_sample(scene, rung, template.format(words), [obj])

    return build


def build_relation(scene: Scene, rng: np.random.Generator) -> Sample | None:
    ref = _pick(rng, relation_referrals(scene))
    return None if ref is None else _seg_sample(scene, "relation", f"Please segment {ref.expression}.", ref.targets)


def build_multi(scene: Scene, rng: np.random.Generator) -> Sample | None:
    ref = _pick(rng, multi_referrals(scene))
    return None if ref is None else _seg_sample(scene, "multi", f"Please segment {ref.expression}.", ref.targets)


def build_no_target(scene: Scene, rng: np.random.Generator) -> Sample | None:
    """Half the questions name nothing in the image (answer "No target."), half name one object by colour+shape."""
    if rng.random() < 0.5:
        ref = no_target_referral(scene, rng)
        if ref.targets:
            return None
        sample = _seg_sample(scene, "no_target", f"Please segment {ref.expression}.", [])
    else:
        vis = scene.visible_objects
        obj = _pick(rng, [o for o in vis if _unique(o, vis, ("color", "shape"))])
        if obj is None:
            return None
        sample = _seg_sample(scene, "no_target", f"Please segment the {obj.color} {obj.shape}.", [obj])
    sample.meta["metric_answer_only"] = True
    return sample


def build_gcg(scene: Scene, rng: np.random.Generator) -> Sample | None:
    """Grounded conversation: every visible object as a phrase followed by its [SEG], in reading order."""
    vis = reading_order(scene.visible_objects)
    if len(vis) < 2:
        return None
    return _seg_sample(scene, "gcg", _pick(rng, list(GCG_QUESTIONS)), vis, answer=gcg_answer(vis), task="gcg")


def _vp_question(rung: str, question: str, value: Callable[[ShapeObject], str]) -> Callable:
    """A question about one marked object (a box, point, scribble or mask prompt): ``question`` with its tag, answered
    "<vp_k>: <value(object)>."."""
    def build(scene: Scene, rng: np.random.Generator) -> Sample | None:
        obj = _pick(rng, scene.visible_objects)
        if obj is None:
            return None
        p = prompt_objects([obj], rng, scene.image_size)
        tag = vp_token(p.ids[0])
        return Sample(image=scene.image, turns=[(question.format(tag), f"{tag}: {value(obj)}.")], prompts=p.prompts,
                      task="vp_qa", image_id=scene.image_id, meta={"rung": rung, "oracle": []})
    return build


# "What colour is <vp_k>?" -> "<vp_k>: red."; "Where is <vp_k>?" -> "<vp_k>: in the top left." (its 3x3 cell)
build_vp_colour = _vp_question("vp_colour", "What colour is {}?", lambda o: o.color)
build_vp_where = _vp_question("vp_where", "Where is {}?", lambda o: f"in the {o.position}")


def _as_rung(name: str, make: Callable[[Scene, np.random.Generator], Sample | None]) -> Callable:
    """A task of the product's shapes mix as a rung (its own questions and answers, visual prompts included)."""
    def build(scene: Scene, rng: np.random.Generator) -> Sample | None:
        sample = make(scene, rng)
        if sample is not None:
            sample.meta.update(rung=name, oracle=[])
        return sample
    return build


def _mcq_rewritten(options_word_first: bool) -> Callable[[Scene, np.random.Generator], Sample | None]:
    """The product's multiple choice with the answer "It is red (B)." (``answer_style: spelled_out``) and, with
    ``options_word_first``, the options listed "red (A), blue (B)": the answer's "red (" then recurs in the question
    followed by the letter, the pattern an induction head copies."""
    def make(scene: Scene, rng: np.random.Generator) -> Sample | None:
        sample = make_vp_mcq(scene, rng)
        if sample is None:
            return None
        sample = spell_out(scene, sample)
        if options_word_first:
            (question, answer), = sample.turns
            stem = question[:question.index(" (A) ")]
            listed = ", ".join(f"{o} ({letter})" for letter, o in zip(MCQ_LETTERS, sample.meta["choices"]))
            sample.turns = [(f"{stem} {listed}. Answer with the option's letter.", answer)]
        return sample
    return make


def _mcq_of_kind(kind: str) -> Callable[[Scene, np.random.Generator], Sample | None]:
    """The product's multiple choice (answered word first, as shipped) of one question kind only: "larger" ("Which
    is larger, <vp_1> or <vp_2>?") or "side" ("Is <vp_1> left or right of <vp_2>?"). ``None`` where the scene has
    no pair for it."""
    word_first = _mcq_rewritten(False)

    def make(scene: Scene, rng: np.random.Generator) -> Sample | None:
        for _ in range(MCQ_KIND_TRIES):
            sample = word_first(scene, rng)
            if sample is not None and sample.meta.get("question_kind") == kind:
                return sample
        return None
    return make


def letter_lookup_text(rng: np.random.Generator) -> tuple[str, str]:
    """("Which letter is red? (A) blue (B) green (C) yellow (D) red.", "It is red (D).") with the options drawn
    from the multiple choice's vocabularies (colours, shapes, prompt tags)."""
    vocab = _pick(rng, [v for v in OPTION_VOCABULARIES if len(v) >= 4])   # colours, shapes, tags: not the sides
    options = [str(o) for o in rng.choice(vocab, size=4, replace=False)]
    word = str(_pick(rng, options))
    return (f"Which letter is {word}? {listed_options(options)}.",
            f"It is {word} ({MCQ_LETTERS[options.index(word)]}).")


def build_letter_lookup(scene: Scene, rng: np.random.Generator) -> Sample | None:
    """The look-up alone, as text (:func:`letter_lookup_text`). The image is there but never needed: the rung asks
    whether the decoder learns to find a word among the options and copy the letter before it, and after how many
    samples. The answer opens as the product's multiple choice does, "It is ...": a word at the very start of an
    answer is other tokens ("re", "d") than the same word after a space (" red") in the options."""
    return Sample(image=scene.image, turns=[letter_lookup_text(rng)], task="vp_qa", image_id=scene.image_id,
                  meta={"rung": "letter_lookup", "oracle": []})


def build_option_lookup(scene: Scene, rng: np.random.Generator) -> Sample | None:
    """The look-ups of the ``shapes_lookup`` dataset (:func:`option_lookup_text`): "Which letters are red and blue?
    (A) blue (B) green (C) yellow (D) red. Answer with the options' letters." -> "They are red (D), blue (A).", or
    with one word a question that names none ("Options: (A) blue (B) red. Answer with the option's letter." -> "It
    is red (B)."). Every letter of the answer is a look-up of the word before it among the options, the circuit an
    MCQ answer "It is red (D)." needs once per sample."""
    return Sample(image=scene.image, turns=[option_lookup_text(rng)], task="vp_qa", image_id=scene.image_id,
                  meta={"rung": "option_lookup", "oracle": []})


def _mixed_with_lookup(make: Callable, share: float) -> Callable:
    """``make``'s samples; in training (scenes of the train split) a ``share`` of them replaced by look-ups."""
    def build(scene: Scene, rng: np.random.Generator) -> Sample | None:
        if scene.meta.get("split") == "train" and rng.random() < share:
            return build_option_lookup(scene, rng)
        return make(scene, rng)
    return build


@dataclass(frozen=True)
class Rung:
    name: str
    build: Callable[[Scene, np.random.Generator], Sample | None]
    metric: str                                 # "cIoU" (teacher-forced [SEG] masks) | "accuracy" (answer exact)
    oracle_keys: tuple[str, ...] | None         # attributes the oracle query embeds; None: no oracle
    chance: float = 0.0                         # the metric of a model that ignores the expression / prompt
    per_mask: bool = False                      # cIoU of each [SEG]'s mask against its own target, not of the union
    scores_letters: bool = False                # also report the letter accuracy after "word (" (the option look-up)


RUNGS: dict[str, Rung] = {r.name: r for r in (
    Rung("colour", _by_keys("colour", ("color",), False, "Please segment the {} object."), "cIoU", ("color",)),
    Rung("shape", _by_keys("shape", ("shape",), False, "Please segment the {}."), "cIoU", ("shape",)),
    Rung("colour_shape", _by_keys("colour_shape", ("color", "shape"), True, "Please segment the {}."), "cIoU",
         ("color", "shape")),
    Rung("size_colour_shape", _by_keys("size_colour_shape", ("size", "color", "shape"), False,
                                       "Please segment the {}."), "cIoU", ("size", "color", "shape")),
    Rung("relation", build_relation, "cIoU", ("size", "color", "shape")),
    Rung("multi", build_multi, "cIoU", ("size", "color", "shape")),
    Rung("no_target", build_no_target, "accuracy", None, chance=0.5),
    Rung("gcg", build_gcg, "cIoU", ("size", "color", "shape"), per_mask=True),
    Rung("vp_colour", build_vp_colour, "accuracy", None, chance=1 / len(COLOR_NAMES)),
    Rung("vp_where", build_vp_where, "accuracy", None, chance=1 / 9),
    # the product's visual-prompt tasks as they are: five question kinds (and 5 % absent prompts); multiple choice
    # (colour / shape of one prompt out of 4 options, larger / side of two out of 2; "(B) red.")
    Rung("vp_qa", _as_rung("vp_qa", make_vp_qa), "accuracy", None, chance=1 / len(COLOR_NAMES)),
    Rung("vp_mcq", _as_rung("vp_mcq", make_vp_mcq), "accuracy", None, chance=1 / 3, scores_letters=True),
    # the same, answered word first ("It is red (B)."), and with the options listed word first too ("red (A), ...")
    Rung("vp_mcq_word_first", _as_rung("vp_mcq_word_first", _mcq_rewritten(False)), "accuracy", None, chance=1 / 3,
         scores_letters=True),
    Rung("vp_mcq_induction", _as_rung("vp_mcq_induction", _mcq_rewritten(True)), "accuracy", None, chance=1 / 3,
         scores_letters=True),
    # the two comparisons of the multiple choice alone, word first (chance: half)
    Rung("vp_larger", _as_rung("vp_larger", _mcq_of_kind("larger")), "accuracy", None, chance=1 / 2,
         scores_letters=True),
    Rung("vp_side", _as_rung("vp_side", _mcq_of_kind("side")), "accuracy", None, chance=1 / 2, scores_letters=True),
    # the look-up alone, in text (chance: a quarter of the letters)
    Rung("letter_lookup", build_letter_lookup, "accuracy", None, chance=1 / 4, scores_letters=True),
    # the dense look-up alone: one to four words asked per question, every letter of the answer a look-up
    Rung("option_lookup", build_option_lookup, "accuracy", None, chance=1 / 4, scores_letters=True),
    # the word-first multiple choice, half of its training samples replaced by dense option look-ups (scored on the
    # multiple choice alone)
    Rung("vp_mcq_lookup", _mixed_with_lookup(_as_rung("vp_mcq_lookup", _mcq_rewritten(False)), 0.5), "accuracy",
         None, chance=1 / 3, scores_letters=True),
)}


def chance_level(rung: Rung, samples: list[Sample]) -> float:
    """The rung's metric (percent) for a model that ignores the expression: for mask rungs the cIoU of masking
    every visible object (the best expression-blind mask), for answer rungs ``rung.chance``."""
    if rung.metric != "cIoU":
        return 100.0 * rung.chance
    if rung.per_mask:  # every [SEG] masks every object
        inter = sum(int(m.sum()) for s in samples for m in s.masks)
        union = sum(len(s.masks) * int(s.meta["all_objects"].sum()) for s in samples)
        return 100.0 * inter / max(union, 1)
    inter = sum(int((np.any(np.stack(s.masks), 0) & s.meta["all_objects"]).sum()) for s in samples if s.masks)
    union = sum(int(s.meta["all_objects"].sum()) for s in samples)
    return 100.0 * inter / max(union, 1)


def rung_samples(rung: Rung, split: str, count: int, image_size: int, start: int = 0,
                 keep_scene: bool = False) -> list[Sample]:
    """``count`` samples of ``rung`` from consecutive scenes of ``split`` (scenes that cannot serve are redrawn);
    ``keep_scene`` puts each sample's :class:`Scene` in ``meta["scene"]`` (for tools that read its objects)."""
    return list(itertools.islice(iter_rung_samples(rung, split, image_size, start, keep_scene), count))


def iter_rung_samples(rung: Rung, split: str, image_size: int, start: int = 0,
                      keep_scene: bool = False) -> Iterator[Sample]:
    """The samples of :func:`rung_samples`, one at a time and without end: a training run draws each batch as it
    needs it instead of holding 72,000 images (~4 GB, minutes to build) before its first step."""
    index = start
    while True:
        for attempt in range(20):
            scene, rng = scene_and_rng(split, index, 0, image_size, attempt)
            sample = rung.build(scene, rng)
            if sample is not None:
                if split != "train" and len(sample.meta.get("target_index", ())) == 1:  # (kept off the train set's memory)
                    sample.meta["destinations"] = destination_map(scene, scene.objects[sample.meta["target_index"][0]])
                if keep_scene:
                    sample.meta["scene"] = scene
                yield sample
                break
        index += 1
