"""MUSE-style multi-target reasoning segmentation (PixelLM's MUSE) -> samples whose answer has several ``[SEG]``.

Layout: one JSON list (or id -> record mapping) and the image folders it draws from (COCO ``train2014``,
``train2017``, ``val2017``...; a file name is looked up in each of ``image_dirs`` in turn). A record::

    {"file_name" | "image" | "image_path": "000000123456.jpg",
     "questions" | "question": "Which items would I need to make tea?"   (a list: one is drawn per sample),
     "text_answers" | "answers" | "answer": "You need the kettle [SEG] and the cup [SEG].",
     "ann_list" | "annotations": [{"segmentation": polygons | RLE, ...}, ...]}

Each ``[SEG]`` (also written ``<seg>`` or ``{seg}``) in the answer takes the next mask of ``ann_list`` in order; the
counts must match. A list of answers must be as long as the list of questions (pairs are drawn together).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pixelsail.data.annotations import (FormatError, RecordDataset, decode_segmentation, load_rgb, read_json_records,
                                        require)
from pixelsail.data.registry import register_dataset
from pixelsail.data.sample import Sample
from pixelsail.tokens import SEG

_SEG_PLACEHOLDER = re.compile(r"\[SEG\]|<seg>|\{seg\}", re.IGNORECASE)


@dataclass
class MuseRecord:
    image_name: str
    pairs: list[tuple[str, str]]      # (question, answer with [SEG]) alternatives
    segmentations: list[Any]
    where: str


def _as_list(value: Any, field: str, where: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(t, str) and t.strip() for t in items):
        raise FormatError(f"{where}: {field!r} must be a non-empty string or list of non-empty strings")
    return items


class MuseDataset(RecordDataset):
    def __init__(self, annotation_file: str | Path, image_dirs: Sequence[str | Path], *, seed: int = 0):
        self.image_dirs = [Path(d) for d in image_dirs]
        records = []
        for i, rec in enumerate(read_json_records(annotation_file, "MUSE annotation file")):
            where = f"{annotation_file}: record {rec.get('_key', i)!r}"
            questions = _as_list(require(rec, ["questions", "question"], where), "questions", where)
            answers = _as_list(require(rec, ["text_answers", "answers", "answer"], where), "answers", where)
            if len(answers) == 1:
                answers = answers * len(questions)
            if len(answers) != len(questions):
                raise FormatError(f"{where}: {len(questions)} questions but {len(answers)} answers")
            anns = require(rec, ["ann_list", "annotations"], where)
            segs = [require(a, ["segmentation"], f"{where}, ann {j}") if isinstance(a, dict) else a
                    for j, a in enumerate(anns)]
            pairs = []
            for q, a in zip(questions, answers):
                answer = _SEG_PLACEHOLDER.sub(SEG, a)
                if answer.count(SEG) != len(segs):
                    raise FormatError(f"{where}: answer has {answer.count(SEG)} [SEG] placeholders but the record "
                                      f"has {len(segs)} masks: {a[:120]!r}")
                pairs.append((q.strip(), answer.strip()))
            image = require(rec, ["file_name", "image", "image_path"], where)
            records.append(MuseRecord(image, pairs, segs, where))
        super().__init__(records, seed=seed, salt=str(annotation_file))

    def _image_path(self, rec: MuseRecord) -> Path:
        tried = [d / rec.image_name for d in self.image_dirs]
        for path in tried:
            if path.is_file():
                return path
        raise FormatError(f"{rec.where}: image {rec.image_name!r} not found; tried {', '.join(map(str, tried))}")

    def build(self, rec: MuseRecord, rng: np.random.Generator) -> Sample:
        path = self._image_path(rec)
        image = load_rgb(path, rec.where)
        h, w = image.shape[:2]
        question, answer = rec.pairs[int(rng.integers(len(rec.pairs)))]
        masks = [decode_segmentation(s, h, w, f"{rec.where}, mask {j}") for j, s in enumerate(rec.segmentations)]
        return Sample(image=image, turns=[(question, answer)], masks=masks,
                      task="res" if len(masks) == 1 else "gres", image_id=path.stem,
                      meta={"source": "muse", "no_target": not masks})


@register_dataset("muse")
def muse(annotation_file: str, image_dirs: list[str] | str, seed: int = 0) -> MuseDataset:
    return MuseDataset(annotation_file, [image_dirs] if isinstance(image_dirs, str) else image_dirs, seed=seed)
