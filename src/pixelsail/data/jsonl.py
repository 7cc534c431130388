"""pixelsail's own data format: JSON Lines, one image and its annotations per line (spec: docs/DATA.md).

::

    {"id": "kitchen-001",
     "image": "images/kitchen.jpg",
     "masks": {"kettle": [[x0, y0, x1, y1, x2, y2, ...]], "cup": {"size": [H, W], "counts": "..."}},
     "prompts": {"<vp_0>": "kettle", "<vp_1>": {"box": [x0, y0, x1, y1]}, "<vp_2>": {"point": [x, y]}},
     "expressions": [{"text": "the red kettle", "masks": ["kettle"]}, {"text": "the dog", "masks": []}],
     "turns": [{"q": "What is next to <vp_0>?", "a": "A cup [SEG:cup]."}],
     "task": "vt_res"}

``image`` is relative to the JSONL file. ``masks`` are COCO polygons or RLE. ``expressions`` become referring
samples ("Please segment {text}." -> one ``[SEG]`` per listed mask, "No target." for none). In ``turns``,
``[SEG:name]`` is a ``[SEG]`` whose target is mask ``name`` (``[SEG:a+b]``: the union of a and b); a bare ``[SEG]`` is
an error. Every ``<vp_k>`` in a turn needs a prompt, except in a turn whose answer is exactly
"<vp_k> is not in the image." (an absent-prompt question). A record with both ``expressions`` and ``turns`` yields
two samples.

:func:`parse_record` checks a record completely and collects every :class:`Problem`; the dataset raises them,
``pixelsail data validate`` reports them.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from pixelsail.data.annotations import (FormatError, RecordDataset, absent_prompt_answer, choose,
                                        decode_segmentation, load_rgb, seg_answer, union)
from pixelsail.data.registry import register_dataset
from pixelsail.data.sample import TASKS, Sample
from pixelsail.prompts import box_to_mask, point_to_mask
from pixelsail.tokens import DEFAULT_NUM_VP_TOKENS, PHRASE_START, SEG, vp_indices, vp_token

RECORD_FIELDS = ("id", "image", "masks", "prompts", "expressions", "turns", "task", "meta")
SEG_REF = re.compile(r"\[SEG:([^\]]*)\]")
_BARE_SEG = re.compile(r"\[SEG\]")
_VP_KEY = re.compile(r"^<vp_(\d+)>$")
_ANY_VP = re.compile(r"<vp_(\d+)>")


@dataclass
class Problem:
    line: int
    kind: str
    message: str
    record_id: str | None = None

    def __str__(self) -> str:
        rid = f" (id {self.record_id!r})" if self.record_id is not None else ""
        return f"line {self.line}{rid}: [{self.kind}] {self.message}"


@dataclass
class JsonlRecord:
    id: str
    image_path: str                 # as written in the record: the sample's image_id
    image: np.ndarray
    masks: dict[str, np.ndarray]
    prompts: dict[int, np.ndarray]
    expressions: list[tuple[str, list[str]]] = field(default_factory=list)
    turns: list[tuple[str, str]] = field(default_factory=list)      # answers still hold [SEG:name]
    task: str | None = None
    meta: dict = field(default_factory=dict)


class _Collector:
    def __init__(self, line: int, record_id: str | None):
        self.line, self.record_id, self.problems = line, record_id, []

    def add(self, kind: str, message: str) -> None:
        self.problems.append(Problem(self.line, kind, message, self.record_id))


def parse_record(obj: Any, *, line: int, base_dir: Path, num_vp_tokens: int = DEFAULT_NUM_VP_TOKENS
                 ) -> tuple[JsonlRecord | None, list[Problem]]:
    """Check one decoded JSON line completely; the record is returned only when there is no problem."""
    if not isinstance(obj, dict):
        out = _Collector(line, None)
        out.add("schema", f"a record must be a JSON object, got {type(obj).__name__}")
        return None, out.problems
    record_id = obj.get("id")
    out = _Collector(line, None if record_id is None else str(record_id))
    unknown = sorted(set(obj) - set(RECORD_FIELDS))
    if unknown:
        out.add("schema", f"unknown field(s) {unknown}; known: {list(RECORD_FIELDS)}")
    image = _image(obj, base_dir, out)
    mask_specs = obj.get("masks", {})
    if not isinstance(mask_specs, dict):
        out.add("schema", "'masks' must be an object {name: polygons | RLE}")
        mask_specs = {}
    masks = _masks(mask_specs, image, out)
    prompts = _prompts(obj.get("prompts", {}), set(mask_specs), masks, image, num_vp_tokens, out)
    expressions = _expressions(obj.get("expressions"), set(mask_specs), out)
    turns = _turns(obj.get("turns"), set(mask_specs), set(prompts), num_vp_tokens, out)
    if obj.get("expressions") is None and obj.get("turns") is None:
        out.add("schema", "a record needs 'expressions' or 'turns' (or both)")
    task = obj.get("task")
    if task is not None and task not in TASKS:
        out.add("schema", f"unknown task {task!r}; expected one of {list(TASKS)}")
    meta = obj.get("meta", {})
    if not isinstance(meta, dict):
        out.add("schema", "'meta' must be an object")
    if out.problems or image is None:
        return None, out.problems
    rid = str(record_id) if record_id is not None else f"line{line}"
    return JsonlRecord(rid, obj["image"], image, masks, prompts, expressions, turns, task, meta), out.problems


def _image(obj: dict, base_dir: Path, out: _Collector) -> np.ndarray | None:
    rel = obj.get("image")
    if not isinstance(rel, str) or not rel.strip():
        out.add("schema", "missing 'image' (a path relative to the JSONL file)")
        return None
    try:
        return load_rgb(base_dir / rel, f"image {rel!r}")
    except FormatError as e:
        out.add(e.kind, str(e))
        return None


def _masks(specs: dict, image: np.ndarray | None, out: _Collector) -> dict[str, np.ndarray]:
    masks = {}
    if image is None:
        return masks
    h, w = image.shape[:2]
    for name, seg in specs.items():
        try:
            m = decode_segmentation(seg, h, w, f"mask {name!r}", check_bounds=True)
        except FormatError as e:
            out.add(e.kind, str(e))
            continue
        if not m.any():
            out.add("mask_empty", f"mask {name!r} covers no pixel")
            continue
        masks[name] = m
    return masks


def _prompts(specs: Any, names: set[str], masks: dict[str, np.ndarray], image: np.ndarray | None,
             num_vp_tokens: int, out: _Collector) -> dict[int, np.ndarray | None]:
    """k -> prompt mask (None when it could not be drawn because the image or its mask is broken)."""
    if not isinstance(specs, dict):
        out.add("schema", "'prompts' must be an object {\"<vp_k>\": mask name | {\"box\": ...} | {\"point\": ...}}")
        return {}
    prompts: dict[int, np.ndarray | None] = {}
    for key, value in specs.items():
        m = _VP_KEY.match(str(key))
        if not m:
            out.add("bad_prompt", f"prompt key {key!r} is not of the form '<vp_k>'")
            continue
        k = int(m.group(1))
        if k >= num_vp_tokens:
            out.add("vp_out_of_range", f"prompt {key} is out of range: the model has <vp_0>..<vp_{num_vp_tokens - 1}>")
            continue
        prompts[k] = None
        if isinstance(value, str):
            if value not in names:
                out.add("unknown_mask", f"prompt {key} refers to mask {value!r}, which is not in 'masks'")
            else:
                prompts[k] = masks.get(value)
        elif isinstance(value, dict) and len(value) == 1 and ("box" in value or "point" in value):
            if image is None:
                continue
            h, w = image.shape[:2]
            try:
                prompts[k] = box_to_mask(value["box"], h, w) if "box" in value else point_to_mask(value["point"], h, w)
            except (ValueError, TypeError) as e:
                out.add("bad_prompt", f"prompt {key}: {e}")
        else:
            out.add("bad_prompt", f"prompt {key} must be a mask name, {{\"box\": [x0, y0, x1, y1]}} or "
                                  f"{{\"point\": [x, y]}}, got {json.dumps(value)[:80]}")
    return prompts


def _text(value: Any, what: str, out: _Collector) -> str | None:
    if not isinstance(value, str) or not value.strip():
        out.add("empty_text", f"{what} is empty or not a string")
        return None
    return value.strip()


def _is_nonempty_list(specs: Any, error: str, out: _Collector) -> bool:
    """False for an absent field (None) and, with a schema problem, for anything but a non-empty list."""
    if specs is not None and (not isinstance(specs, list) or not specs):
        out.add("schema", error)
    return isinstance(specs, list) and bool(specs)


def _expressions(specs: Any, names: set[str], out: _Collector) -> list[tuple[str, list[str]]]:
    error = "'expressions' must be a non-empty list of {\"text\": ..., \"masks\": [names]}"
    if not _is_nonempty_list(specs, error, out):
        return []
    result = []
    for j, e in enumerate(specs):
        if not isinstance(e, dict) or not isinstance(e.get("masks"), list):
            out.add("schema", f"expression {j} must be {{\"text\": str, \"masks\": [mask names]}}")
            continue
        text = _text(e.get("text"), f"expression {j} text", out)
        unknown = [n for n in e["masks"] if n not in names]
        for n in unknown:
            out.add("unknown_mask", f"expression {j} refers to mask {n!r}, which is not in 'masks'")
        if text is not None and not unknown:
            result.append((text, list(e["masks"])))
    return result


def _turns(specs: Any, names: set[str], prompted: set[int], num_vp_tokens: int, out: _Collector
           ) -> list[tuple[str, str]]:
    if not _is_nonempty_list(specs, "'turns' must be a non-empty list of {\"q\": ..., \"a\": ...}", out):
        return []
    result = []
    for j, t in enumerate(specs):
        if not isinstance(t, dict) or set(t) != {"q", "a"}:
            out.add("schema", f"turn {j} must be {{\"q\": str, \"a\": str}}")
            continue
        q, a = _text(t["q"], f"turn {j} question", out), _text(t["a"], f"turn {j} answer", out)
        if q is None or a is None:
            continue
        ok = True
        if SEG in q or SEG_REF.search(q):
            out.add("seg_in_question", f"turn {j}: the question contains [SEG]; masks belong in answers")
            ok = False
        bare = len(_BARE_SEG.findall(a))
        if bare:
            out.add("seg_without_mask", f"turn {j}: {bare} bare [SEG] in the answer; write [SEG:mask_name]")
            ok = False
        for ref in SEG_REF.findall(a):
            for n in ref.split("+"):
                if n not in names:
                    out.add("unknown_mask", f"turn {j}: [SEG:{ref}] refers to mask {n!r}, which is not in 'masks'")
                    ok = False
        for k in sorted({int(x) for x in _ANY_VP.findall(q + " " + a)}):
            if k >= num_vp_tokens:
                out.add("vp_out_of_range", f"turn {j}: {vp_token(k)} is out of range: the model has "
                                           f"<vp_0>..<vp_{num_vp_tokens - 1}>")
                ok = False
            elif k not in prompted and a != absent_prompt_answer(k):
                out.add("vp_without_prompt", f"turn {j}: {vp_token(k)} has no entry in 'prompts'")
                ok = False
        if ok:
            result.append((q, a))
    return result


def resolve_seg_refs(answer: str, masks: dict[str, np.ndarray]) -> tuple[str, list[np.ndarray]]:
    """``[SEG:name]`` -> ``[SEG]`` plus that mask (``a+b``: union), in order of appearance."""
    targets: list[np.ndarray] = []

    def repl(m: re.Match) -> str:
        parts = [masks[n] for n in m.group(1).split("+")]
        targets.append(union(parts, *parts[0].shape))
        return SEG

    return SEG_REF.sub(repl, answer), targets


def infer_task(turns: list[tuple[str, str]]) -> str:
    n_seg = sum(a.count(SEG) for _, a in turns)
    asks_vp = any(vp_indices(q) for q, _ in turns)
    if n_seg and asks_vp:
        return "vt_res"
    if n_seg and any(PHRASE_START in a for _, a in turns):
        return "gcg"
    if n_seg:
        return "res" if all(a.count(SEG) == 1 for _, a in turns) else "gres"
    return "vp_qa" if asks_vp else "vqa"


def _renumber_vp(text: str, mapping: dict[int, int]) -> str:
    return _ANY_VP.sub(lambda m: vp_token(mapping[int(m.group(1))]), text)


@dataclass
class _Item:
    line: int
    obj: dict
    kind: str           # "expressions" | "turns"


class JsonlDataset(RecordDataset):
    """Samples of a pixelsail JSONL file; a broken record raises a :class:`FormatError` listing all its problems."""

    def __init__(self, path: str | Path, *, max_objects: int | None = 5, shuffle_vp: bool = True,
                 num_vp_tokens: int = DEFAULT_NUM_VP_TOKENS, seed: int = 0):
        self.path = Path(path)
        self.max_objects = max_objects
        self.shuffle_vp = shuffle_vp
        self.num_vp_tokens = num_vp_tokens
        items, seen = [], {}
        for line, obj, error in read_jsonl(self.path):
            if error is not None:
                raise FormatError(f"{self.path}:{line}: {error}", "json")
            rid = obj.get("id") if isinstance(obj, dict) else None
            if rid is not None:
                if rid in seen:
                    raise FormatError(f"{self.path}:{line}: duplicate id {rid!r} (first on line {seen[rid]})",
                                      "duplicate_id")
                seen[rid] = line
            kinds = [k for k in ("expressions", "turns") if isinstance(obj, dict) and obj.get(k) is not None]
            items.extend(_Item(line, obj, k) for k in (kinds or ["turns"]))
        super().__init__(items, seed=seed, salt=str(self.path))

    def build(self, item: _Item, rng: np.random.Generator) -> Sample:
        rec, problems = parse_record(item.obj, line=item.line, base_dir=self.path.parent,
                                     num_vp_tokens=self.num_vp_tokens)
        if rec is None:
            listing = "\n  ".join(str(p) for p in problems)
            raise FormatError(f"{self.path}:{item.line}: invalid record ({len(problems)} problem(s)):\n  {listing}",
                              problems[0].kind if problems else "format")
        if item.kind == "expressions":
            turns, masks = [], []
            for j in choose(rng, len(rec.expressions), self.max_objects):
                text, names = rec.expressions[j]
                turns.append((f"Please segment {text}.", seg_answer(len(names))))
                masks.extend(rec.masks[n] for n in names)
            task = rec.task or ("res" if all(a.count(SEG) == 1 for _, a in turns) else "gres")
            sample = Sample(rec.image, turns, masks, task=task, image_id=rec.image_path,
                            meta={**rec.meta, "source": "jsonl", "id": rec.id, "line": item.line})
        else:
            turns, masks = [], []
            for q, a in rec.turns:
                a, targets = resolve_seg_refs(a, rec.masks)
                turns.append((q, a))
                masks.extend(targets)
            prompts = dict(rec.prompts)
            if self.shuffle_vp:
                used = sorted(set(prompts) | {k for q, a in turns for k in vp_indices(q + " " + a)})
                mapping = dict(zip(used, rng.choice(self.num_vp_tokens, len(used), replace=False).tolist()))
                turns = [(_renumber_vp(q, mapping), _renumber_vp(a, mapping)) for q, a in turns]
                prompts = {mapping[k]: m for k, m in prompts.items()}
            sample = Sample(rec.image, turns, masks, prompts=prompts, task=rec.task or infer_task(turns),
                            image_id=rec.image_path, meta={**rec.meta, "source": "jsonl", "id": rec.id,
                                                           "line": item.line})
        sample.validate()
        return sample


def read_jsonl(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    """(line number, decoded object, None) per non-blank line, or (line, None, error) for a malformed one."""
    if not path.is_file():
        raise FormatError(f"JSONL file not found: {path}", "file_missing")
    with open(path, encoding="utf-8", errors="replace") as f:
        for line, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                yield line, json.loads(raw), None
            except json.JSONDecodeError as e:
                yield line, None, f"malformed JSON ({e.msg} at column {e.colno})"


@register_dataset("jsonl")
def jsonl(path: str, max_objects: int | None = 5, shuffle_vp: bool = True,
          num_vp_tokens: int = DEFAULT_NUM_VP_TOKENS, seed: int = 0) -> JsonlDataset:
    return JsonlDataset(path, max_objects=max_objects, shuffle_vp=shuffle_vp, num_vp_tokens=num_vp_tokens,
                        seed=seed)
