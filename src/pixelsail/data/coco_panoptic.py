"""COCO panoptic (panoptic JSON + PNG segment-id maps) -> "Please segment {category}." referring samples.

Layout (the official COCO release, as detectron2 also expects it)::

    ROOT/annotations/panoptic_{split}.json      images, annotations (file_name, segments_info), categories
    ROOT/panoptic_{split}/*.png                 or ROOT/annotations/panoptic_{split}/*.png
    ROOT/{split}/*.jpg                          the images

A PNG pixel's segment id is R + 256·G + 256²·B. ``mode="semantic"`` answers every category with one mask (the union
of its segments); ``mode="instance"`` answers a thing category with one ``[SEG]`` per non-crowd instance, ordered
top-to-bottom then left-to-right by centroid (stuff categories stay one mask). Up to ``max_objects`` categories
are asked about per image, as turns of one conversation.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pixelsail.data.annotations import (FormatError, RecordDataset, choose, load_rgb, read_json, require,
                                        seg_answer, union)
from pixelsail.data.registry import register_dataset
from pixelsail.data.sample import Sample
from pixelsail.tokens import SEG

_STUFF_SUFFIX = re.compile(r"-(merged|other|stuff)\b")


def category_phrase(name: str) -> str:
    """COCO panoptic names to words: 'wall-other-merged' -> 'wall', 'playingfield' stays, 'tree-merged' -> 'tree'."""
    return _STUFF_SUFFIX.sub("", name).replace("-", " ").strip()


@dataclass
class PanopticImage:
    image_path: Path
    png_path: Path
    segments: list[dict]          # segments_info entries
    where: str


class CocoPanopticDataset(RecordDataset):
    def __init__(self, annotation_file: str | Path, panoptic_dir: str | Path, image_dir: str | Path, *,
                 mode: str = "semantic", max_objects: int | None = 5, seed: int = 0):
        if mode not in ("semantic", "instance"):
            raise ValueError(f"coco_panoptic mode must be 'semantic' or 'instance', got {mode!r}")
        self.mode = mode
        self.max_objects = max_objects
        data = read_json(annotation_file, "COCO panoptic annotation file")
        where = str(annotation_file)
        if not isinstance(data, dict):
            raise FormatError(f"{where}: expected an object with 'images', 'annotations', 'categories'")
        self.categories = {}
        for c in require(data, ["categories"], where):
            self.categories[c["id"]] = {"name": category_phrase(c["name"]), "isthing": bool(c.get("isthing", 1))}
        images = {im["id"]: im for im in require(data, ["images"], where)}
        records = []
        for i, ann in enumerate(require(data, ["annotations"], where)):
            rwhere = f"{where}: annotation {i}"
            image_id = require(ann, ["image_id"], rwhere)
            if image_id not in images:
                raise FormatError(f"{rwhere}: image_id {image_id!r} is not in 'images'")
            png = require(ann, ["file_name"], rwhere)
            segments = require(ann, ["segments_info"], rwhere)
            for s in segments:
                if "id" not in s or s.get("category_id") not in self.categories:
                    raise FormatError(f"{rwhere}: segment {s} lacks an 'id' or has an unknown category_id")
            if segments:
                records.append(PanopticImage(Path(image_dir) / images[image_id]["file_name"],
                                             Path(panoptic_dir) / png, segments, f"{rwhere} ({png})"))
        super().__init__(records, seed=seed, salt=str(annotation_file))

    def build(self, rec: PanopticImage, rng: np.random.Generator) -> Sample:
        image = load_rgb(rec.image_path, rec.where)
        seg_rgb = load_rgb(rec.png_path, rec.where).astype(np.uint32)
        if seg_rgb.shape != image.shape:
            raise FormatError(f"{rec.where}: segment PNG is {seg_rgb.shape[:2]}, image is {image.shape[:2]}")
        ids = seg_rgb[..., 0] + 256 * seg_rgb[..., 1] + 256 * 256 * seg_rgb[..., 2]   # (H, W) segment ids
        h, w = ids.shape
        by_category: dict[int, list[tuple[dict, np.ndarray]]] = {}
        for s in rec.segments:
            m = ids == s["id"]
            if m.any():
                by_category.setdefault(s["category_id"], []).append((s, m))
        cats = sorted(by_category)
        turns, masks, names = [], [], []
        for ci in choose(rng, len(cats), self.max_objects):
            cat = cats[ci]
            info = self.categories[cat]
            segs = by_category[cat]
            if self.mode == "instance" and info["isthing"]:
                targets = [m for s, m in segs if not s.get("iscrowd", 0)]
                targets.sort(key=lambda m: tuple(np.argwhere(m).mean(axis=0)))
            else:
                targets = [union([m for _, m in segs], h, w)]
            if not targets:
                continue
            turns.append((f"Please segment {info['name']}.", seg_answer(len(targets))))
            masks.extend(targets)
            names.append(info["name"])
        if not turns:
            raise FormatError(f"{rec.where}: no segment of this image is present in its PNG")
        task = "res" if all(a.count(SEG) == 1 for _, a in turns) else "gres"
        return Sample(image=image, turns=turns, masks=masks, task=task, image_id=rec.image_path.stem,
                      meta={"source": "coco_panoptic", "categories": names, "mode": self.mode})


@register_dataset("coco_panoptic")
def coco_panoptic(root: str, split: str = "train2017", mode: str = "semantic", max_objects: int | None = 5,
                  seed: int = 0, annotation_file: str | None = None, panoptic_dir: str | None = None,
                  image_dir: str | None = None) -> CocoPanopticDataset:
    base = Path(root)
    if panoptic_dir is None:
        candidates = [base / f"panoptic_{split}", base / "annotations" / f"panoptic_{split}"]
        panoptic_dir = next((c for c in candidates if c.is_dir()), None)
        if panoptic_dir is None:
            raise FormatError(f"COCO panoptic PNG folder not found: tried {', '.join(map(str, candidates))}")
    return CocoPanopticDataset(annotation_file or base / "annotations" / f"panoptic_{split}.json", panoptic_dir,
                               image_dir or base / split, mode=mode, max_objects=max_objects, seed=seed)
