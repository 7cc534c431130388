"""PerBench readers: the three JSON files of the paper's benchmark -> :class:`Sample` s.

Formats (JSON lists, masks as COCO RLE):

* detailed object description: ``{image_name, object_annotations: [{segmentation, caption}]}``
  -> one ``region_caption`` sample per object, the object as ``<vp_0>``;
* visual-prompt multiple choice: ``{image_name, mcqs: [{object, question, answer}]}`` where ``object`` is one RLE,
  a list of RLEs (``<vp_0>``, ``<vp_1>``, ...) or a mapping tag -> RLE whose tags appear in the question
  -> one ``vp_mcq`` sample per question, ``meta["answer"]`` is the string that must occur in the output;
* visual-text referring segmentation: ``{image_name, question, answer, segmentations: {tag: rle}}``; tags in the
  question become visual prompts (renamed ``<vp_0>``, ``<vp_1>``, ... in order of appearance), tags in the answer
  are the target masks (each replaced by ``[SEG]``) -> one ``vt_res`` sample per record.

Which format a file has is read from its records, so a directory of the three files loads with one call.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from pixelsail.data.annotations import decode_segmentation
from pixelsail.data.region import describe_question
from pixelsail.data.registry import register_dataset
from pixelsail.data.sample import Sample
from pixelsail.imageio import load_image
from pixelsail.tokens import SEG, vp_token

FORMATS = ("caption", "mcq", "vtres")


def detect_format(records: list, path: Path) -> str:
    if not isinstance(records, list) or not records:
        raise ValueError(f"{path}: expected a non-empty JSON list of PerBench records")
    first = records[0]
    if not isinstance(first, dict):
        raise ValueError(f"{path}: record 0 is a {type(first).__name__}, expected an object")
    if "object_annotations" in first:
        return "caption"
    if "mcqs" in first:
        return "mcq"
    if "segmentations" in first:
        return "vtres"
    raise ValueError(f"{path}: record 0 has keys {sorted(first)}; expected 'object_annotations' (caption), "
                     "'mcqs' (multiple choice) or 'segmentations' (V-T RES)")


def _field(rec: dict, key: str, where: str) -> Any:
    if key not in rec:
        raise ValueError(f"{where}: missing field {key!r}")
    return rec[key]


def _tag_pattern(tags: list[str]) -> re.Pattern:
    # longest first, so "<obj1>" never matches inside "<obj10>"
    return re.compile("|".join(re.escape(t) for t in sorted(tags, key=len, reverse=True)))


def _tag_occurrences(text: str, tags: list[str]) -> list[str]:
    """Every occurrence of a tag in ``text``, in order."""
    return [m.group(0) for m in _tag_pattern(tags).finditer(text)] if tags else []


def _tags_in_order(text: str, tags: list[str]) -> list[str]:
    """The distinct tags that occur in ``text``, in order of first occurrence."""
    return list(dict.fromkeys(_tag_occurrences(text, tags)))


def _replace_tags(text: str, mapping: dict[str, str]) -> str:
    if not mapping:
        return text
    return _tag_pattern(list(mapping)).sub(lambda m: mapping[m.group(0)], text)


class PerBenchDataset:
    """All samples of one PerBench JSON file (format detected), images read lazily from ``image_dir``."""

    def __init__(self, path: str | Path, image_dir: str | Path | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"PerBench file not found: {self.path}")
        try:
            records = json.loads(self.path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{self.path}: not valid JSON ({e})") from None
        self.format = detect_format(records, self.path)
        self.image_dir = Path(image_dir) if image_dir is not None else _default_image_dir(self.path)
        # (record index, item index within the record or -1)
        self.items: list[tuple[int, int]] = []
        for r, rec in enumerate(records):
            where = f"{self.path} record {r}"
            if not isinstance(rec, dict):
                raise ValueError(f"{where}: expected an object")
            _field(rec, "image_name", where)
            if self.format == "caption":
                self.items += [(r, j) for j in range(len(_field(rec, "object_annotations", where)))]
            elif self.format == "mcq":
                self.items += [(r, j) for j in range(len(_field(rec, "mcqs", where)))]
            else:
                for key in ("question", "answer", "segmentations"):
                    _field(rec, key, where)
                self.items.append((r, -1))
        self.records = records

    def __len__(self) -> int:
        return len(self.items)

    def image_key(self, i: int) -> str:
        return str(self.records[self.items[i][0]]["image_name"])

    def __getitem__(self, i: int) -> Sample:
        r, j = self.items[i]
        rec = self.records[r]
        where = f"{self.path} record {r}" + (f" item {j}" if j >= 0 else "")
        image_path = self.image_dir / rec["image_name"]
        if not image_path.exists():
            raise FileNotFoundError(f"{where}: image {image_path} not found")
        image = load_image(image_path)
        h, w = image.shape[:2]
        meta = {"record": r, "item": j, "image_name": rec["image_name"], "source": self.path.name}
        if self.format == "caption":
            obj = rec["object_annotations"][j]
            mask = _mask(_field(obj, "segmentation", where), (h, w), where)
            caption = str(_field(obj, "caption", where))
            return Sample(image=image, turns=[(describe_question(0), f"{vp_token(0)}: {caption}")],
                          prompts={0: mask}, task="region_caption", image_id=rec["image_name"],
                          meta={**meta, "references": [caption]})
        if self.format == "mcq":
            q = rec["mcqs"][j]
            question, prompts = _mcq_prompts(_field(q, "object", where), str(_field(q, "question", where)),
                                             (h, w), where)
            answer = str(_field(q, "answer", where))
            return Sample(image=image, turns=[(question, answer)], prompts=prompts, task="vp_mcq",
                          image_id=rec["image_name"], meta={**meta, "answer": answer})
        return _vtres_sample(rec, image, meta, where)


def _mask(rle: Any, shape: tuple[int, int], where: str) -> np.ndarray:
    if not isinstance(rle, dict):
        raise ValueError(f"{where}: masks must be COCO RLE objects, got {type(rle).__name__}")
    return decode_segmentation(rle, shape[0], shape[1], where)


def _mcq_prompts(obj: Any, question: str, shape: tuple[int, int], where: str
                 ) -> tuple[str, dict[int, np.ndarray]]:
    if isinstance(obj, dict) and "counts" in obj:
        return question, {0: _mask(obj, shape, where)}
    if isinstance(obj, list):
        return question, {k: _mask(o, shape, where) for k, o in enumerate(obj)}
    if isinstance(obj, dict):
        tags = _tags_in_order(question, list(obj))
        mapping = {t: vp_token(k) for k, t in enumerate(tags)}
        return _replace_tags(question, mapping), {k: _mask(obj[t], shape, where) for k, t in enumerate(tags)}
    raise ValueError(f"{where}: 'object' must be an RLE, a list of RLEs or a mapping tag -> RLE")


def _vtres_sample(rec: dict, image: np.ndarray, meta: dict, where: str) -> Sample:
    shape = image.shape[:2]
    segs = rec["segmentations"]
    if not isinstance(segs, dict):
        raise ValueError(f"{where}: 'segmentations' must map tag -> RLE")
    question, answer = str(rec["question"]), str(rec["answer"])
    q_tags = _tags_in_order(question, list(segs))
    occurrences = _tag_occurrences(answer, list(segs))  # one [SEG] and one target mask per occurrence
    if not occurrences:
        raise ValueError(f"{where}: the answer {answer!r} names none of the tags {sorted(segs)}")
    a_tags = list(dict.fromkeys(occurrences))
    prompt_map = {t: vp_token(k) for k, t in enumerate(q_tags)}
    turn = (_replace_tags(question, prompt_map), _replace_tags(answer, {t: SEG for t in a_tags}))
    # the targets the authors' script stacks: tags (substring test, in the mapping's order) found in the answer
    # but not in the question; scored as masks[authors_targets[0]] against its first predicted mask
    authors_targets = [occurrences.index(t) for t in segs if t not in question and t in occurrences]
    return Sample(image=image, turns=[turn],
                  masks=[_mask(segs[t], shape, where) for t in occurrences],
                  prompts={k: _mask(segs[t], shape, where) for k, t in enumerate(q_tags)},
                  task="vt_res", image_id=rec["image_name"],
                  meta={**meta, "answer_tags": a_tags, "authors_targets": authors_targets})


def _default_image_dir(path: Path) -> Path:
    for d in (path.parent / "images", path.parent):
        if d.is_dir():
            return d
    return path.parent


class PerBench:
    """The PerBench files of a directory (or one file) as one dataset, files in name order."""

    def __init__(self, path: str | Path, image_dir: str | Path | None = None):
        path = Path(path)
        if path.is_dir():
            files = sorted(p for p in path.glob("*.json"))
            if not files:
                raise FileNotFoundError(f"no PerBench *.json files in {path}")
        elif path.is_file():
            files = [path]
        else:
            raise FileNotFoundError(f"PerBench path not found: {path}")
        self.parts = [PerBenchDataset(f, image_dir) for f in files]
        self._offsets = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def _locate(self, i: int) -> tuple[PerBenchDataset, int]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        p = int(np.searchsorted(self._offsets, i, side="right")) - 1
        return self.parts[p], i - int(self._offsets[p])

    def image_key(self, i: int) -> str:
        part, j = self._locate(i)
        return part.image_key(j)

    def __getitem__(self, i: int) -> Sample:
        part, j = self._locate(i)
        return part[j]


@register_dataset("perbench")
def perbench(path: str, image_dir: str | None = None) -> PerBench:
    return PerBench(path, image_dir)
