"""A small reader that loads data the way the REFER toolkit (refer.py ``REFER`` / ``G_REFER``) does.

LISA's and the Pixel-SAIL authors' evaluation code import that toolkit; an export is only usable by them if the
toolkit loads it unchanged. This reader follows the toolkit's documented access pattern (written for these tests,
not taken from it):

* ``data_root/<dataset>/`` holds ``instances.json`` and the refs: ``refs(<splitBy>).p`` (a pickle) for refcoco,
  refcoco+, refcocog and refclef; ``grefs(<splitBy>).json`` for grefcoco. Any other dataset name is refused.
* images: ``data_root/images/mscoco/images/train2014`` (refcoco family), ``data_root/images/saiapr_tc-12``
  (refclef), ``data_root/images/train2014`` (grefcoco), joined with the image record's ``file_name``.
* an annotation's mask: ``ann["segmentation"]`` is indexed with ``[0]``; a list there means polygons (converted with
  ``frPyObjects``), anything else means the segmentation is a list of RLEs; the decoded stack is summed over its
  last axis. gRefCOCO refs list their ``ann_id`` s, ``[-1]`` meaning no target (an all-zero mask).
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

ACCEPTED_DATASETS = ("refcoco", "refcoco+", "refcocog", "refclef", "grefcoco")


def image_folder(data_root: Path, dataset: str) -> Path:
    if dataset == "refclef":
        return data_root / "images" / "saiapr_tc-12"
    if dataset == "grefcoco":
        return data_root / "images" / "train2014"
    return data_root / "images" / "mscoco" / "images" / "train2014"


class ToolkitStyleReader:
    def __init__(self, data_root: str | Path, dataset: str, split_by: str = "unc"):
        if dataset not in ACCEPTED_DATASETS:
            raise KeyError(f"no refer dataset is called {dataset!r}")
        data_root = Path(data_root)
        self.generalized = dataset == "grefcoco"
        self.data_dir = data_root / dataset
        self.image_dir = image_folder(data_root, dataset)
        if self.generalized:
            with open(self.data_dir / f"grefs({split_by}).json") as f:
                refs = json.load(f)
        else:
            with open(self.data_dir / f"refs({split_by}).p", "rb") as f:
                refs = pickle.load(f)
        with open(self.data_dir / "instances.json") as f:
            instances = json.load(f)
        self.anns = {a["id"]: a for a in instances["annotations"]}
        self.imgs = {im["id"]: im for im in instances["images"]}
        self.refs = {r["ref_id"]: r for r in refs}

    def ref_ids(self, split: str) -> list[int]:
        return [i for i, r in self.refs.items() if r["split"] == split]

    def image_path(self, ref: dict) -> Path:
        return self.image_dir / self.imgs[ref["image_id"]]["file_name"]

    def ann_mask(self, ann: dict) -> np.ndarray:
        image = self.imgs[ann["image_id"]]
        seg = ann["segmentation"]
        if type(seg[0]) is list:
            rle = mask_utils.frPyObjects(seg, image["height"], image["width"])
        else:
            rle = seg
        return np.sum(mask_utils.decode(rle), axis=2).astype(np.uint8)

    def ref_mask(self, ref: dict) -> np.ndarray:
        """The referred mask: the ref's annotation (REFER) or the union of its annotations (G_REFER, merged)."""
        ann_ids = ref["ann_id"] if isinstance(ref["ann_id"], list) else [ref["ann_id"]]
        image = self.imgs[ref["image_id"]]
        merged = np.zeros((image["height"], image["width"]), dtype=np.uint8)
        if ann_ids == [-1]:
            return merged
        for a in ann_ids:
            merged |= self.ann_mask(self.anns[a])
        return merged
