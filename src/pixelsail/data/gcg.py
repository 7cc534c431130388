"""Grounded conversation generation (GLaMM's GranDf / RefCOCOg-GCG / Flickr-GCG JSON) -> ``gcg`` samples.

The answer is the caption with each grounded phrase wrapped as ``<p> phrase </p> [SEG]`` and the phrase's mask
as that ``[SEG]``'s target. Three record shapes are read (all with images in ``image_dir``):

* GranDf: a list of ``{"file_name", "caption", "groundings": {phrase: {"token_positives": [start, end],
  "rle_masks": [RLE, ...]}}}``;
* GLaMM RefCOCOg-GCG: a list (or id -> record mapping) of ``{"img_file_name" | "file_name", "caption",
  "refs": [{"sentence", "segmentation": polygons | RLE}]}`` — each phrase is located in the caption by search;
* COCO-style (Flickr-GCG): ``{"images": [{"id", "file_name", "caption"}], "annotations": [{"image_id",
  "tokens_positive": [[start, end]], "sam_mask" | "segmentation"}]}``.

Character spans are [start, end) into the caption; overlapping spans keep the earlier one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pixelsail.data.annotations import (FormatError, RecordDataset, decode_segmentation, load_rgb, read_json,
                                        require, union)
from pixelsail.data.registry import register_dataset
from pixelsail.data.sample import Sample
from pixelsail.tokens import PHRASE_END, PHRASE_START, SEG

GCG_QUESTION = "Please describe the image in detail and segment every object you mention."


@dataclass
class Phrase:
    start: int
    end: int
    segmentations: list[Any]      # COCO segmentations whose union is the phrase's mask


@dataclass
class GcgRecord:
    image_path: Path
    caption: str
    phrases: list[Phrase] = field(default_factory=list)
    where: str = ""


def _span(value: Any, where: str) -> tuple[int, int]:
    """[start, end] or [[start, end], ...] (first span) -> (start, end)."""
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], (list, tuple)):
        value = value[0]
    if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value)):
        raise FormatError(f"{where}: phrase span must be [start, end] character offsets, got {value!r}")
    return int(value[0]), int(value[1])


def _clean_caption(text: str) -> str:
    return text.strip().strip('"').strip()


def _grandf_record(rec: dict, image_dir: Path, where: str) -> GcgRecord:
    caption = _clean_caption(require(rec, ["caption"], where))
    phrases = []
    for phrase, g in require(rec, ["groundings"], where).items():
        pw = f"{where}, phrase {phrase!r}"
        start, end = _span(require(g, ["token_positives", "tokens_positive"], pw), pw)
        phrases.append(Phrase(start, end, list(require(g, ["rle_masks", "segmentation"], pw))))
    return GcgRecord(image_dir / require(rec, ["file_name", "img_file_name"], where), caption, phrases, where)


def _refs_record(rec: dict, image_dir: Path, where: str) -> GcgRecord:
    caption = _clean_caption(require(rec, ["caption"], where))
    lowered = caption.lower()
    phrases = []
    for j, ref in enumerate(require(rec, ["refs"], where)):
        rw = f"{where}, ref {j}"
        sentence = require(ref, ["sentence"], rw).strip()
        start = lowered.find(sentence.lower())
        if start < 0:
            continue  # GLaMM's own loader also drops phrases that are not in the caption
        seg = require(ref, ["segmentation"], rw)
        phrases.append(Phrase(start, start + len(sentence), [seg]))
    return GcgRecord(image_dir / require(rec, ["img_file_name", "file_name"], where), caption, phrases, where)


def _coco_records(data: dict, image_dir: Path, where: str) -> list[GcgRecord]:
    records: dict[Any, GcgRecord] = {}
    for im in require(data, ["images"], where):
        iw = f"{where}: image {im.get('id')!r}"
        records[require(im, ["id"], iw)] = GcgRecord(image_dir / require(im, ["file_name"], iw),
                                                    _clean_caption(require(im, ["caption"], iw)), [], iw)
    for i, ann in enumerate(require(data, ["annotations"], where)):
        aw = f"{where}: annotation {i}"
        image_id = require(ann, ["image_id"], aw)
        if image_id not in records:
            raise FormatError(f"{aw}: image_id {image_id!r} is not in 'images'")
        start, end = _span(require(ann, ["tokens_positive"], aw), aw)
        records[image_id].phrases.append(Phrase(start, end, [require(ann, ["sam_mask", "segmentation"], aw)]))
    return list(records.values())


def grounded_caption(caption: str, spans: list[tuple[int, int]]) -> tuple[str, list[int]]:
    """Caption with ``<p> phrase </p> [SEG]`` around each span; returns it and the indices of the spans kept.

    Spans are taken in order of start; one overlapping an already kept span is dropped.
    """
    order = sorted(range(len(spans)), key=lambda i: spans[i])
    out, kept, pos = [], [], 0
    for i in order:
        start, end = spans[i]
        if start < pos:
            continue
        out.append(caption[pos:start])
        out.append(f"{PHRASE_START} {caption[start:end].strip()} {PHRASE_END} {SEG}")
        kept.append(i)
        pos = end
    out.append(caption[pos:])
    return "".join(out), kept


class GcgDataset(RecordDataset):
    def __init__(self, annotation_file: str | Path, image_dir: str | Path, *, seed: int = 0):
        where = str(annotation_file)
        data = read_json(annotation_file, "GCG annotation file")
        image_dir = Path(image_dir)
        if isinstance(data, dict) and "images" in data and "annotations" in data:
            records = _coco_records(data, image_dir, where)
        else:
            items = list(data.items()) if isinstance(data, dict) else list(enumerate(data))
            records = []
            for key, rec in items:
                rw = f"{where}: record {key!r}"
                if not isinstance(rec, dict):
                    raise FormatError(f"{rw} is a {type(rec).__name__}, expected an object")
                if "groundings" in rec:
                    records.append(_grandf_record(rec, image_dir, rw))
                elif "refs" in rec:
                    records.append(_refs_record(rec, image_dir, rw))
                else:
                    raise FormatError(f"{rw}: neither 'groundings' (GranDf) nor 'refs' (GLaMM GCG) present")
        for r in records:
            for p in r.phrases:
                if not 0 <= p.start < p.end <= len(r.caption):
                    raise FormatError(f"{r.where}: phrase span [{p.start}, {p.end}] is outside the caption "
                                      f"({len(r.caption)} characters)")
        super().__init__([r for r in records if r.phrases], seed=seed, salt=where)

    def build(self, rec: GcgRecord, rng: np.random.Generator) -> Sample:
        image = load_rgb(rec.image_path, rec.where)
        h, w = image.shape[:2]
        answer, kept = grounded_caption(rec.caption, [(p.start, p.end) for p in rec.phrases])
        masks = []
        for i in kept:
            parts = [decode_segmentation(s, h, w, f"{rec.where}, phrase {i}") for s in rec.phrases[i].segmentations]
            masks.append(union(parts, h, w))
        return Sample(image=image, turns=[(GCG_QUESTION, answer)], masks=masks, task="gcg",
                      image_id=rec.image_path.stem, meta={"source": "gcg", "caption": rec.caption})


@register_dataset("gcg")
def gcg(annotation_file: str, image_dir: str, seed: int = 0) -> GcgDataset:
    return GcgDataset(annotation_file, image_dir, seed=seed)
