"""The shapes world's tasks: one sample builder per task over a :mod:`~pixelsail.data.shapes_scene`, in the
language of :mod:`~pixelsail.data.shapes_language`, and the answer styles.

Each builder takes a scene and the random stream that drew it and returns a :class:`Sample`, or None when the
scene cannot support the task (:func:`make_sample` then draws the scene again).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import Callable, Mapping, Sequence

import numpy as np

from pixelsail.data.sample import Sample
from pixelsail.data.shapes_language import (RELATION_MARGIN, Referral, _pick, attribute_referrals, multi_referrals,
                                            no_target_referral, reading_order, relation_referrals, seg_answer)
from pixelsail.data.shapes_scene import COLORS, SHAPES, Scene, ShapeObject, _scaled_pixels, scene_and_rng
from pixelsail.prompts import box_to_mask, point_to_mask
from pixelsail.tokens import (DEFAULT_NUM_VP_TOKENS, MCQ_INSTRUCTION, MCQ_LETTER_FIRST, MCQ_OPTION_FIRST, PHRASE_END,
                              PHRASE_START, SEG, vp_token)

SHAPES_TASKS: tuple[str, ...] = ("res", "gres", "vp_qa", "vp_mcq", "region_caption", "vt_res", "gcg")
MCQ_LETTERS = "ABCD"
RES_TEMPLATES = ("Please segment {}.", "Segment {}.", "Can you segment {}?")
CAPTION_QUESTIONS = ("Describe {} in detail.", "Please describe {}.")
GCG_QUESTIONS = ("Describe the image and segment each object.", "What is in the image? Answer with grounded phrases.")
VT_RES_KINDS = ("colour", "shape")
# a region caption says "partly covered by X" when X hides at least this many of its pixels (at 128x128)
OCCLUSION_MIN_PIXELS_128 = 12
ABSENT_PROMPT_RATE = 0.05
LARGER_MIN_RATIO = 1.5


# ----------------------------------------------------------------------------------------------------------------
# visual prompts


PROMPT_KINDS = ("mask", "box", "point")


def prompt_mask_for(obj: ShapeObject, kind: str, rng: np.random.Generator, image_size: int) -> np.ndarray:
    if kind == "mask":
        return obj.mask.copy()
    if kind == "box":
        return box_to_mask(obj.bbox, image_size, image_size)
    if kind == "point":
        interior = obj.mask.copy()
        interior[1:-1, 1:-1] &= (obj.mask[:-2, 1:-1] & obj.mask[2:, 1:-1] & obj.mask[1:-1, :-2] & obj.mask[1:-1, 2:])
        rows, cols = np.nonzero(interior if interior.any() else obj.mask)
        j = int(rng.integers(rows.size))
        return point_to_mask((cols[j] + 0.5, rows[j] + 0.5), image_size, image_size, radius=max(2.0, image_size / 48))
    raise ValueError(f"unknown prompt kind {kind!r}; expected one of {PROMPT_KINDS}")


@dataclass
class _Prompting:
    ids: list[int]
    prompts: dict[int, np.ndarray]
    meta: dict


def prompt_objects(objs: Sequence[ShapeObject], rng: np.random.Generator, image_size: int,
                    n_ids: int = DEFAULT_NUM_VP_TOKENS) -> _Prompting:
    ids = [int(k) for k in rng.choice(n_ids, size=len(objs), replace=False)]
    kinds = [str(_pick(rng, PROMPT_KINDS)) for _ in objs]
    prompts = {k: prompt_mask_for(o, kind, rng, image_size) for k, o, kind in zip(ids, objs, kinds)}
    meta = {"prompt_objects": {k: o.index for k, o in zip(ids, objs)},
            "prompt_kinds": dict(zip(ids, kinds))}
    return _Prompting(ids, prompts, meta)


# ----------------------------------------------------------------------------------------------------------------
# samples, one builder per task; each returns None when the scene cannot support the task


def _sample(scene: Scene, task: str, question: str, reply: str, masks: Sequence[np.ndarray] = (),
            prompts: Mapping[int, np.ndarray] | None = None, **meta) -> Sample:
    base = {"split": scene.meta.get("split", ""), "index": scene.meta.get("index", 0),
            "seed": scene.meta.get("seed", 0), "attempt": scene.meta.get("attempt", 0),
            "ref_id": f"{scene.image_id}-{task}", "no_target": False, "target_ids": []}
    base.update(meta)
    return Sample(image=scene.image, turns=[(question, reply)], masks=[m.copy() for m in masks],
                  prompts=dict(prompts or {}), task=task, image_id=scene.image_id, meta=base)


def _referral_sample(scene: Scene, task: str, ref: Referral, rng: np.random.Generator) -> Sample:
    question = _pick(rng, RES_TEMPLATES).format(ref.expression)
    return _sample(scene, task, question, seg_answer(len(ref.targets)), [t.mask for t in ref.targets],
                   expression=ref.expression, expression_kind=ref.kind, no_target=not ref.targets,
                   target_ids=[t.index for t in ref.targets])


# the share of referring samples that are relations ("the circle left of the blue star") where the scene has one
RELATION_RATE = 0.4


def make_res(scene: Scene, rng: np.random.Generator, relation_rate: float = RELATION_RATE) -> Sample | None:
    relations = relation_referrals(scene)
    pool = relations if relations and rng.random() < relation_rate else attribute_referrals(scene)
    if not pool:
        return None
    return _referral_sample(scene, "res", _pick(rng, pool), rng)


def make_gres(scene: Scene, rng: np.random.Generator) -> Sample | None:
    multi = multi_referrals(scene)
    if multi and rng.random() < 0.65:
        ref = _pick(rng, multi)
    else:
        ref = no_target_referral(scene, rng)
    return _referral_sample(scene, "gres", ref, rng)


def _absent_prompt_sample(scene: Scene, task: str, rng: np.random.Generator, question_for: Callable[[str], str]):
    vis = scene.visible_objects
    present = prompt_objects([_pick(rng, vis)], rng, scene.image_size)
    absent = int(_pick(rng, [k for k in range(DEFAULT_NUM_VP_TOKENS) if k not in present.ids]))
    tag = vp_token(absent)
    return _sample(scene, task, question_for(tag), f"{tag} is not in the image.", prompts=present.prompts,
                   absent_prompt=absent, **present.meta)


VP_QA_KINDS = ("colour", "shape", "size", "what", "where")


def make_vp_qa(scene: Scene, rng: np.random.Generator) -> Sample | None:
    vis = scene.visible_objects
    if not vis:
        return None
    kind = str(_pick(rng, VP_QA_KINDS))
    questions = {"colour": "What colour is {}?", "shape": "What shape is {}?", "size": "Is {} small or large?",
                 "what": "What is {}?", "where": "Where is {}?"}
    if rng.random() < ABSENT_PROMPT_RATE:
        return _absent_prompt_sample(scene, "vp_qa", rng, questions[kind].format)
    obj = _pick(rng, vis)
    p = prompt_objects([obj], rng, scene.image_size)
    tag = vp_token(p.ids[0])
    value = {"colour": obj.color, "shape": obj.shape, "size": obj.size, "what": "a " + obj.phrase(),
             "where": "in the " + obj.position}[kind]
    return _sample(scene, "vp_qa", questions[kind].format(tag), f"{tag}: {value}.", prompts=p.prompts,
                   question_kind=kind, target_ids=[obj.index], **p.meta)


def listed_options(options: Sequence[str]) -> str:
    """"(A) red (B) blue ...": the multiple choice's option layout."""
    return " ".join(f"({MCQ_LETTERS[i]}) {o}" for i, o in enumerate(options))


def mcq_question(stem: str, options: Sequence[str]) -> str:
    return f"{stem} {listed_options(options)}. {MCQ_INSTRUCTION}"


def make_vp_mcq(scene: Scene, rng: np.random.Generator) -> Sample | None:
    vis = scene.visible_objects
    if not vis:
        return None
    margin = RELATION_MARGIN * scene.image_size
    pairs_larger = [(a, b) for a in vis for b in vis if a.area >= LARGER_MIN_RATIO * b.area]
    pairs_side = [(a, b) for a in vis for b in vis if a is not b and abs(a.centroid[0] - b.centroid[0]) >= margin]
    kinds = ["colour", "shape"] + (["larger"] if pairs_larger else []) + (["side"] if pairs_side else [])
    kind = str(_pick(rng, kinds))
    if kind in ("colour", "shape"):
        obj = _pick(rng, vis)
        p = prompt_objects([obj], rng, scene.image_size)
        tag = vp_token(p.ids[0])
        correct = obj.color if kind == "colour" else obj.shape
        pool = [c for c in (COLORS if kind == "colour" else SHAPES) if c != correct]
        options = [str(c) for c in rng.choice(pool, size=3, replace=False)] + [correct]
        stem = f"What colour is {tag}?" if kind == "colour" else f"What shape is {tag}?"
        target_ids = [obj.index]
    elif kind == "larger":
        big, small = _pick(rng, pairs_larger)
        p = prompt_objects([big, small], rng, scene.image_size)
        options = [vp_token(k) for k in p.ids]
        correct = options[0]
        stem = f"Which is larger, {options[0]} or {options[1]}?" if rng.random() < 0.5 else \
            f"Which is larger, {options[1]} or {options[0]}?"
        target_ids = [big.index, small.index]
    else:
        a, b = _pick(rng, pairs_side)
        p = prompt_objects([a, b], rng, scene.image_size)
        ta, tb = (vp_token(k) for k in p.ids)
        options = ["left", "right"]
        correct = "left" if a.centroid[0] < b.centroid[0] else "right"
        stem = f"Is {ta} left or right of {tb}?"
        target_ids = [a.index, b.index]
    order = rng.permutation(len(options))
    options = [options[i] for i in order]
    letter = MCQ_LETTERS[options.index(correct)]
    answer = MCQ_LETTER_FIRST.format(letter=letter, option=correct)
    return _sample(scene, "vp_mcq", mcq_question(stem, options), answer, prompts=p.prompts,
                   question_kind=kind, answer=f"({letter})", choices=options, correct=correct,
                   target_ids=target_ids, **p.meta)


def occluders(scene: Scene, obj: ShapeObject) -> list[ShapeObject]:
    """Objects hiding at least the threshold number of ``obj``'s pixels, most hiding first."""
    min_px = _scaled_pixels(OCCLUSION_MIN_PIXELS_128, scene.image_size)
    counts = [(int((obj.full_mask & o.mask).sum()), o) for o in scene.objects[obj.index + 1:]]
    return [o for n, o in sorted(counts, key=lambda c: (-c[0], c[1].index)) if n >= min_px]


def region_caption(scene: Scene, obj: ShapeObject) -> str:
    """"a large blue square in the top left, partly covered by a red circle and a green star"."""
    text = f"a {obj.phrase()} in the {obj.position}"
    covering = [f"a {o.phrase(with_size=False)}" for o in occluders(scene, obj)]
    if covering:
        listed = covering[0] if len(covering) == 1 else ", ".join(covering[:-1]) + " and " + covering[-1]
        text += f", partly covered by {listed}"
    return text


def make_region_caption(scene: Scene, rng: np.random.Generator) -> Sample | None:
    vis = scene.visible_objects
    if not vis:
        return None
    template = _pick(rng, CAPTION_QUESTIONS)
    if rng.random() < ABSENT_PROMPT_RATE:
        return _absent_prompt_sample(scene, "region_caption", rng, template.format)
    obj = _pick(rng, vis)
    p = prompt_objects([obj], rng, scene.image_size)
    tag = vp_token(p.ids[0])
    return _sample(scene, "region_caption", template.format(tag), f"{tag}: {region_caption(scene, obj)}.",
                   prompts=p.prompts, target_ids=[obj.index], caption=region_caption(scene, obj), **p.meta)


def vt_res_options(scene: Scene) -> list[tuple[str, ShapeObject, ShapeObject]]:
    """Every (kind, marked object, target) of "the object with the same <kind> as <vp_k>": the kinds of
    :data:`VT_RES_KINDS`, where exactly one other visible object shares the marked one's colour / shape."""
    vis = scene.visible_objects
    options = []
    for kind in VT_RES_KINDS:
        attr = "color" if kind == "colour" else "shape"
        for o in vis:
            same = [v for v in vis if v is not o and getattr(v, attr) == getattr(o, attr)]
            if len(same) == 1:
                options.append((kind, o, same[0]))
    return options


def make_vt_res(scene: Scene, rng: np.random.Generator) -> Sample | None:
    """"Segment the object with the same colour as <vp_k>." when exactly one other visible object qualifies."""
    options = vt_res_options(scene)
    if not options:
        return None
    kind, anchor, target = _pick(rng, options)
    p = prompt_objects([anchor], rng, scene.image_size)
    tag = vp_token(p.ids[0])
    question = f"Segment the object with the same {kind} as {tag}."
    return _sample(scene, "vt_res", question, seg_answer(1), [target.mask], prompts=p.prompts,
                   expression=f"the object with the same {kind} as {tag}", vt_kind=kind,
                   target_ids=[target.index], **p.meta)


def gcg_answer(objects: Sequence[ShapeObject]) -> str:
    """"There is a <p> large red circle </p> [SEG], a <p> small blue star </p> [SEG] and ..."."""
    parts = [f"a {PHRASE_START} {o.phrase()} {PHRASE_END} {SEG}" for o in objects]
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"There is {listed}."


def make_gcg(scene: Scene, rng: np.random.Generator) -> Sample | None:
    vis = reading_order(scene.visible_objects)
    if not vis:
        return None
    return _sample(scene, "gcg", _pick(rng, GCG_QUESTIONS), gcg_answer(vis), [o.mask for o in vis],
                   target_ids=[o.index for o in vis])


TASK_BUILDERS: dict[str, Callable[[Scene, np.random.Generator], Sample | None]] = {
    "res": make_res, "gres": make_gres, "vp_qa": make_vp_qa, "vp_mcq": make_vp_mcq,
    "region_caption": make_region_caption, "vt_res": make_vt_res, "gcg": make_gcg,
}


# how answers are worded: "short" is the paper's ("Sure, [SEG]." / "(B) red."); "spelled_out" writes first what the
# answer had to work out, so that the language-model loss asks for it: a visual-text referral names the value it
# copied from the marked object ("Sure, the other red object [SEG]."; the [SEG] query's pool reads those words with
# seg_query_reads_answer), and a multiple-choice answer gives the option before its letter ("It is red (B).").
# "named_target" is "spelled_out" whose referrals that had to be resolved also name what they resolved to, the way a
# plain expression would: a relation "the triangle left of the blue square" is answered "Sure, the large red triangle
# [SEG].", a visual-text referral "Sure, the other red object, the large red star [SEG]." (the grid cell is added,
# "... in the top left", where size, colour and shape do not single the target out).
# Questions, scenes and masks are the same in all styles, and all score the same (the letter; the mask).
ANSWER_STYLES = ("short", "spelled_out", "named_target")


def check_relation_rate(relation_rate: float) -> None:
    if not 0.0 <= relation_rate <= 1.0:
        raise ValueError(f"relation_rate is a share of the referring samples in [0, 1], got {relation_rate}")


def check_answer_style(answer_style: str) -> None:
    if answer_style not in ANSWER_STYLES:
        raise ValueError(f"unknown answer_style {answer_style!r}; expected one of {ANSWER_STYLES}")


def target_name(scene: Scene, target: ShapeObject) -> str:
    """"the large red star", or "the large red star in the top left" when another visible object has the same
    size, colour and shape."""
    name = f"the {target.phrase()}"
    twins = [o for o in scene.visible_objects if o is not target and o.phrase() == target.phrase()]
    return f"{name} in the {target.position}" if twins else name


def spell_out(scene: Scene, sample: Sample, answer_style: str = "spelled_out") -> Sample:
    """``sample`` with its answer in the "spelled_out" or "named_target" style (see :data:`ANSWER_STYLES`)."""
    meta = sample.meta
    named = answer_style == "named_target"
    if sample.task == "vp_mcq":
        # "It is": the option gets the question's token
        answer = MCQ_OPTION_FIRST.format(option=meta["correct"], letter=meta["answer"].strip("()"))
    elif sample.task == "vt_res":
        target = scene.objects[meta["target_ids"][0]]
        value = f"{target.color} object" if meta["vt_kind"] == "colour" else str(target.shape)
        name = f", {target_name(scene, target)}" if named else ""
        answer = f"Sure, the other {value}{name} {SEG}."
    elif named and sample.task == "res" and meta.get("expression_kind") == "relation":
        answer = f"Sure, {target_name(scene, scene.objects[meta['target_ids'][0]])} {SEG}."
    else:
        return sample
    (question, _), = sample.turns
    return replace(sample, turns=[(question, answer)])


def make_sample(split: str, index: int, task: str, seed: int = 0, image_size: int = 128,
                max_attempts: int = 50, plain: bool = False, answer_style: str = "short",
                relation_rate: float = RELATION_RATE) -> Sample:
    """A ``task`` sample for scene ``index`` of ``split``; scenes that cannot support the task are re-drawn.
    ``relation_rate``: the share of referring ("res") samples that are relations, where the scene has one."""
    if task not in TASK_BUILDERS:
        raise ValueError(f"unknown shapes task {task!r}; expected one of {SHAPES_TASKS}")
    check_answer_style(answer_style)
    check_relation_rate(relation_rate)
    build = partial(make_res, relation_rate=relation_rate) if task == "res" else TASK_BUILDERS[task]
    for attempt in range(max_attempts):
        # the sample draws from where the scene's stream stopped: the scene never depends on the task
        scene, rng = scene_and_rng(split, index, seed, image_size, attempt, plain)
        sample = build(scene, rng)
        if sample is not None:
            return sample if answer_style == "short" else spell_out(scene, sample, answer_style)
    raise RuntimeError(f"no scene for task {task!r} at {split}[{index}] after {max_attempts} attempts")
