"""LLaVA-665k-style instruction data -> ``vqa`` samples (general question answering, no masks).

Layout: one JSON list (``llava_v1_5_mix665k.json``) of ``{"id", "image"?: path relative to image_dir,
"conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": ...}, ...]}`` and the
image folders it names (``coco/train2017``, ``gqa/images``, ``ocr_vqa/images``, ``textvqa/train_images``,
``vg/VG_100K``...) under ``image_dir``.

A record without ``image`` is text-only: its Sample carries a small blank image and ``meta["text_only"] = True``,
which tells the processor to drop the vision block. The ``<image>`` tag is removed from the text: pixelsail always
places the image first.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pixelsail.data.annotations import (FormatError, RecordDataset, conversation_turns, load_rgb, read_json_records,
                                        require)
from pixelsail.data.registry import register_dataset
from pixelsail.data.sample import Sample

_IMAGE_TAG = re.compile(r"\s*<image>\s*")
TEXT_ONLY_IMAGE_SIZE = 32


def text_only_image() -> np.ndarray:
    return np.zeros((TEXT_ONLY_IMAGE_SIZE, TEXT_ONLY_IMAGE_SIZE, 3), dtype=np.uint8)


@dataclass
class LlavaRecord:
    id: str
    image: str | None                # as written in the record (relative to image_dir): the sample's image_id
    image_path: Path | None
    turns: list[tuple[str, str]]
    where: str


class LlavaDataset(RecordDataset):
    def __init__(self, annotation_file: str | Path, image_dir: str | Path, *, max_turns: int | None = None,
                 seed: int = 0):
        self.max_turns = max_turns
        records = []
        for i, rec in enumerate(read_json_records(annotation_file, "LLaVA conversation file")):
            where = f"{annotation_file}: record {rec.get('id', i)!r}"
            turns = conversation_turns(require(rec, ["conversations"], where), where)
            turns = [(_IMAGE_TAG.sub(" ", q).strip(), a) for q, a in turns]
            if any(not q for q, _ in turns):
                raise FormatError(f"{where}: a question is empty once the <image> tag is removed")
            image = rec.get("image")
            if image is not None and not isinstance(image, str):
                raise FormatError(f"{where}: 'image' must be a path string, got {type(image).__name__}")
            records.append(LlavaRecord(str(rec.get("id", i)), image or None,
                                       Path(image_dir) / image if image else None, turns, where))
        super().__init__(records, seed=seed, salt=str(annotation_file))

    def build(self, rec: LlavaRecord, rng: np.random.Generator) -> Sample:
        turns = rec.turns if self.max_turns is None else rec.turns[: self.max_turns]
        if rec.image_path is None:
            return Sample(image=text_only_image(), turns=turns, task="vqa", image_id=f"text:{rec.id}",
                          meta={"source": "llava", "text_only": True, "id": rec.id})
        return Sample(image=load_rgb(rec.image_path, rec.where), turns=turns, task="vqa",
                      image_id=rec.image, meta={"source": "llava", "id": rec.id})


@register_dataset("llava")
def llava(annotation_file: str, image_dir: str, max_turns: int | None = None, seed: int = 0) -> LlavaDataset:
    return LlavaDataset(annotation_file, image_dir, max_turns=max_turns, seed=seed)
