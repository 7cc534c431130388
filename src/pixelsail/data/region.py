"""Region (visual-prompt) data: Osprey-724K conversations/descriptions and Pixel2Cap-style region captions.

Every region becomes a ``<vp_k>`` prompt with k drawn at random per sample (PAPER.md), so no id stands for a fixed
object. With probability ``absent_prob`` a sample also asks about an id that has no prompt and answers
"<vp_k> is not in the image.".

Osprey (``osprey``), a JSON list of::

    {"file_name", "height", "width", "annotation": [{"segmentation": polygons | RLE, ...}, ...],
     "conversations": [{"from": "human", "value": "<image>\\nWhat is <region1> doing?"}, {"from": "gpt", ...}]}
    or, for the detailed-description part, "description": ["<region1>: A man in a red coat ...", ...]

Regions are named in the text as ``<region3>``, ``region3`` or by ``<mask><pos>`` placeholders (the i-th
placeholder without a region name is region i); all become the region's ``<vp_k>``. File names like
``COCO_train2014_000000123.jpg`` are also looked up by their last ``_`` part, as Osprey's own loader does.

Pixel2Cap-style captions (``pixel2cap``), COCO-like::

    {"images": [{"id", "file_name", ...}], "annotations": [{"image_id", "segmentation", "caption"}]}

-> up to ``max_objects`` regions per image, each turn "Please describe <vp_k> in detail." -> "<vp_k>: {caption}".

COCO region classification (``coco_regions``): a COCO ``instances_*.json`` read the same way, each turn
"What is the category of <vp_k>?" -> "<vp_k>: {category name}." (crowd annotations are skipped).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pixelsail.data.annotations import (FormatError, RecordDataset, absent_prompt_answer, choose,
                                        conversation_turns, decode_segmentation, draw_vp_ids, load_rgb, read_json,
                                        read_json_records, require)
from pixelsail.data.registry import register_dataset
from pixelsail.data.sample import Sample
from pixelsail.tokens import DEFAULT_NUM_VP_TOKENS, vp_token

_NAMED_PLACEHOLDER = re.compile(r"<?region(\d+)>?\s*<mask>\s*<pos>")
_PLACEHOLDER = re.compile(r"<mask>\s*<pos>")
_REGION = re.compile(r"<region(\d+)>|\bregion(\d+)\b")
_IMAGE_TAG = re.compile(r"\s*<image>\s*")
_DESCRIPTION_PREFIX = re.compile(r"^\s*<?region\d+>?\s*:\s*")


def describe_question(k: int) -> str:
    return f"Please describe {vp_token(k)} in detail."


def classify_question(k: int) -> str:
    return f"What is the category of {vp_token(k)}?"


def regions_to_vp(text: str, vp_ids: list[int], where: str) -> str:
    """Replace Osprey region references (1-based) by ``<vp_k>`` tokens; unknown region numbers are an error."""

    def token(number: int) -> str:
        if not 1 <= number <= len(vp_ids):
            raise FormatError(f"{where}: text mentions region{number} but the record has {len(vp_ids)} regions")
        return vp_token(vp_ids[number - 1])

    text = _IMAGE_TAG.sub(" ", text).strip()
    text = _NAMED_PLACEHOLDER.sub(lambda m: token(int(m.group(1))), text)
    counter = iter(range(1, len(vp_ids) + 2))
    text = _PLACEHOLDER.sub(lambda m: token(next(counter)), text)
    return _REGION.sub(lambda m: token(int(m.group(1) or m.group(2))), text)


@dataclass
class RegionRecord:
    image_path: Path
    segmentations: list[Any]
    turns: list[tuple[str, str]] = field(default_factory=list)     # Osprey conversations (region text refs)
    captions: list[str] = field(default_factory=list)              # one per region (descriptions / Pixel2Cap)
    size: tuple[int, int] | None = None                             # (h, w) the record claims
    where: str = ""


class RegionDataset(RecordDataset):
    def __init__(self, records: list[RegionRecord], *, max_objects: int | None = 5, absent_prob: float = 0.05,
                 num_vp_tokens: int = DEFAULT_NUM_VP_TOKENS, seed: int = 0,
                 question: Callable[[int], str] = describe_question, salt: str = ""):
        super().__init__(records, seed=seed, salt=salt)
        self.question = question
        self.max_objects = max_objects
        self.absent_prob = absent_prob
        self.num_vp_tokens = num_vp_tokens

    def build(self, rec: RegionRecord, rng: np.random.Generator) -> Sample:
        image = load_rgb(rec.image_path, rec.where)
        h, w = image.shape[:2]
        if rec.size is not None and rec.size != (h, w):
            raise FormatError(f"{rec.where}: record says height x width {rec.size}, image is {(h, w)}")
        if rec.turns:
            chosen = list(range(len(rec.segmentations)))          # the conversation may name any region
        else:
            chosen = choose(rng, len(rec.segmentations), self.max_objects)
        if len(chosen) >= self.num_vp_tokens:
            raise FormatError(f"{rec.where}: {len(chosen)} regions, more than the {self.num_vp_tokens - 1} "
                              "<vp_k> ids a sample may use (lower max_objects)")
        *vp_ids, spare = draw_vp_ids(rng, len(chosen) + 1, self.num_vp_tokens, rec.where)   # vp_ids[j] <- chosen[j]
        prompts = {vp_ids[j]: decode_segmentation(rec.segmentations[i], h, w, f"{rec.where}, region {i + 1}")
                   for j, i in enumerate(chosen)}
        if rec.turns:
            turns = [(regions_to_vp(q, vp_ids, rec.where), regions_to_vp(a, vp_ids, rec.where)) for q, a in rec.turns]
            task = "vp_qa"
        else:
            turns = [(self.question(k), f"{vp_token(k)}: {_DESCRIPTION_PREFIX.sub('', rec.captions[i]).strip()}")
                     for k, i in zip(vp_ids, chosen)]
            task = "region_caption"
        if rng.random() < self.absent_prob:
            turns.append((self.question(spare), absent_prompt_answer(spare)))
        return Sample(image=image, turns=turns, prompts=prompts, task=task, image_id=rec.image_path.stem,
                      meta={"source": "region", "vp_ids": vp_ids, "regions": chosen})


def _osprey_image(image_dir: Path, file_name: str) -> Path:
    direct = image_dir / file_name
    if direct.exists() or "_" not in file_name:
        return direct
    short = image_dir / file_name.split("_")[-1]
    return short if short.exists() else direct


def osprey_records(annotation_file: str | Path, image_dir: str | Path) -> list[RegionRecord]:
    records = []
    for i, rec in enumerate(read_json_records(annotation_file, "Osprey annotation file")):
        where = f"{annotation_file}: record {rec.get('id', i)!r}"
        anns = require(rec, ["annotation", "annotations"], where)
        if not isinstance(anns, list) or not anns:
            raise FormatError(f"{where}: 'annotation' must be a non-empty list of regions")
        segs = [require(a, ["segmentation"], f"{where}, region {j + 1}") for j, a in enumerate(anns)]
        size = (int(rec["height"]), int(rec["width"])) if "height" in rec and "width" in rec else None
        path = _osprey_image(Path(image_dir), require(rec, ["file_name", "image"], where))
        if "conversations" in rec:
            records.append(RegionRecord(path, segs, turns=conversation_turns(rec["conversations"], where),
                                        size=size, where=where))
        elif "description" in rec:
            captions = rec["description"]
            if not isinstance(captions, list) or len(captions) != len(segs):
                raise FormatError(f"{where}: 'description' must list one text per region ({len(segs)})")
            records.append(RegionRecord(path, segs, captions=captions, size=size, where=where))
        else:
            raise FormatError(f"{where}: neither 'conversations' nor 'description' present")
    return records


def caption_records(annotation_file: str | Path, image_dir: str | Path, *, by_category: bool = False
                    ) -> list[RegionRecord]:
    """Regions of a COCO-style file, captioned by their ``caption`` or (``by_category``) their category name."""
    where = str(annotation_file)
    data = read_json(annotation_file, "region caption file")
    if not isinstance(data, dict):
        raise FormatError(f"{where}: expected a COCO-style object with 'images' and 'annotations'")
    category_names = None
    if by_category:
        category_names = {require(c, ["id"], where): require(c, ["name"], where)
                          for c in require(data, ["categories"], where)}
    by_image: dict[Any, RegionRecord] = {}
    for im in require(data, ["images"], where):
        iw = f"{where}: image {im.get('id')!r}"
        size = (int(im["height"]), int(im["width"])) if "height" in im and "width" in im else None
        by_image[require(im, ["id"], iw)] = RegionRecord(Path(image_dir) / require(im, ["file_name"], iw), [],
                                                         size=size, where=iw)
    for j, ann in enumerate(require(data, ["annotations"], where)):
        aw = f"{where}: annotation {ann.get('id', j)!r}"
        image_id = require(ann, ["image_id"], aw)
        if image_id not in by_image:
            raise FormatError(f"{aw}: image_id {image_id!r} is not in 'images'")
        if category_names is not None:
            if ann.get("iscrowd", 0):
                continue
            category = require(ann, ["category_id"], aw)
            if category not in category_names:
                raise FormatError(f"{aw}: unknown category_id {category!r}")
            caption = f"{category_names[category]}."
        else:
            caption = require(ann, ["caption", "description"], aw)
        if not isinstance(caption, str) or not caption.strip():
            raise FormatError(f"{aw}: empty caption")
        by_image[image_id].segmentations.append(require(ann, ["segmentation"], aw))
        by_image[image_id].captions.append(caption)
    return [r for r in by_image.values() if r.segmentations]


@register_dataset("osprey")
def osprey(annotation_file: str, image_dir: str, max_objects: int | None = 5, absent_prob: float = 0.05,
           num_vp_tokens: int = DEFAULT_NUM_VP_TOKENS, seed: int = 0) -> RegionDataset:
    return RegionDataset(osprey_records(annotation_file, image_dir), max_objects=max_objects,
                         absent_prob=absent_prob, num_vp_tokens=num_vp_tokens, seed=seed, salt=annotation_file)


@register_dataset("pixel2cap")
def pixel2cap(annotation_file: str, image_dir: str, max_objects: int | None = 5, absent_prob: float = 0.05,
              num_vp_tokens: int = DEFAULT_NUM_VP_TOKENS, seed: int = 0) -> RegionDataset:
    return RegionDataset(caption_records(annotation_file, image_dir), max_objects=max_objects,
                         absent_prob=absent_prob, num_vp_tokens=num_vp_tokens, seed=seed, salt=annotation_file)


@register_dataset("coco_regions")
def coco_regions(annotation_file: str, image_dir: str, max_objects: int | None = 5, absent_prob: float = 0.05,
                 num_vp_tokens: int = DEFAULT_NUM_VP_TOKENS, seed: int = 0) -> RegionDataset:
    """COCO instances -> region classification ("What is the category of <vp_k>?" -> "<vp_k>: person.")."""
    return RegionDataset(caption_records(annotation_file, image_dir, by_category=True), max_objects=max_objects,
                         absent_prob=absent_prob, num_vp_tokens=num_vp_tokens, seed=seed, question=classify_question,
                         salt=annotation_file)
