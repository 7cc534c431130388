"""REFER (RefCOCO, RefCOCO+, RefCOCOg umd/google) and gRefCOCO readers, from local files.

A dataset directory holds ``refs(<split_by>).p`` (REFER) or ``grefs(<split_by>).json`` (gRefCOCO) beside COCO's
``instances.json``; images live in a folder of COCO images (``file_name`` of each image record). The REFER refs are
a pickle, read by :class:`PlainDataUnpickler`, which accepts only plain containers, numbers and strings: any
pickle that names a class or function (which is how a malicious pickle runs code) is refused before anything runs.

Evaluation yields one :class:`Sample` per referring expression (the field's convention); the registered training
datasets (``refcoco``, ``refcoco+``, ``refcocog``, ``grefcoco``) yield one sample per ref with one of its
expressions drawn deterministically from the index.
"""
from __future__ import annotations

import io
import pickle
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pixelsail.data.annotations import decode_segmentation, read_json, seg_answer
from pixelsail.data.registry import register_dataset
from pixelsail.data.sample import Sample
from pixelsail.imageio import load_image
from pixelsail.tokens import SEG

REFER_QUESTION = "Please segment {sentence}."
REFER_ANSWER = f"Sure, {SEG}."


# ---------------------------------------------------------------------------------------------------------------
# restricted unpickling


class UnsafePickleError(ValueError):
    """A pickle tried to load something other than plain data."""


class PlainDataUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, tuples, sets, str/bytes, numbers, bools and None; refuses every global.

    Plain containers and scalars have their own pickle opcodes and never go through :meth:`find_class`; only
    ``set``/``frozenset`` (protocol < 4) do, so they are the only names allowed.
    """

    _ALLOWED = {("builtins", "set"), ("builtins", "frozenset"), ("__builtin__", "set"), ("__builtin__", "frozenset")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return {"set": set, "frozenset": frozenset}[name]
        raise UnsafePickleError(f"pickle refers to {module}.{name}; only plain data is allowed")


def load_plain_pickle(path: str | Path) -> Any:
    """Load a pickle of plain data (REFER's refs) without ever running code from it."""
    path = Path(path)
    data = path.read_bytes()
    try:
        # REFER's pickles were written by Python 2: its byte strings are UTF-8 text
        return PlainDataUnpickler(io.BytesIO(data), encoding="utf-8").load()
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{path}: refused to unpickle ({e}). REFER refs contain only lists, dicts, "
                                "strings and numbers; this file is not a REFER refs file or was tampered with"
                                ) from None
    except Exception as e:  # noqa: BLE001 - any other failure means the file is not a readable pickle
        raise ValueError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from None


# ---------------------------------------------------------------------------------------------------------------
# the index


@dataclass
class ReferExpression:
    """One referring expression: the unit of evaluation."""

    ref_id: int
    sent_id: int
    sentence: str
    image_id: int
    ann_ids: list[int]      # empty: no target (gRefCOCO)
    split: str


class ReferIndex:
    """Refs + COCO instances of one dataset directory, indexed for one split."""

    def __init__(self, root: str | Path, *, split_by: str = "unc", split: str = "val",
                 image_dir: str | Path | None = None, generalized: bool | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"REFER dataset directory not found: {self.root}")
        gref = self.root / f"grefs({split_by}).json"
        ref = self.root / f"refs({split_by}).p"
        if generalized is None:
            generalized = gref.exists() and not ref.exists()
        self.generalized = generalized
        refs_path = gref if generalized else ref
        if not refs_path.exists():
            raise FileNotFoundError(f"{refs_path} not found (split_by={split_by!r}; files here: "
                                    f"{sorted(p.name for p in self.root.iterdir())})")
        refs = read_json(refs_path) if generalized else load_plain_pickle(refs_path)
        if not isinstance(refs, list):
            raise ValueError(f"{refs_path}: expected a list of refs, got {type(refs).__name__}")
        instances_path = self.root / "instances.json"
        if not instances_path.exists():
            raise FileNotFoundError(f"{instances_path} not found (COCO instances of {self.root.name})")
        instances = read_json(instances_path)
        for key in ("images", "annotations"):
            if key not in instances:
                raise ValueError(f"{instances_path}: missing {key!r}")
        self.images = {int(im["id"]): im for im in instances["images"]}
        self.annotations = {int(a["id"]): a for a in instances["annotations"]}
        self.image_dir = _find_image_dir(self.root, image_dir)
        self.split = split
        self.refs = [r for r in (_check_ref(r, i, refs_path) for i, r in enumerate(refs)) if r["split"] == split]
        if not self.refs:
            splits = sorted({str(r.get("split")) for r in refs if isinstance(r, dict)})
            raise ValueError(f"{refs_path}: no refs in split {split!r}; splits present: {splits}")
        for r in self.refs:
            for a in _ann_ids(r):
                if a not in self.annotations:
                    raise ValueError(f"{refs_path}: ref {r['ref_id']} names annotation {a}, "
                                     f"which is not in {instances_path}")
            if int(r["image_id"]) not in self.images:
                raise ValueError(f"{refs_path}: ref {r['ref_id']} names image {r['image_id']}, "
                                 f"which is not in {instances_path}")
        self.expressions = [ReferExpression(int(r["ref_id"]), int(s["sent_id"]), str(s["sent"]), int(r["image_id"]),
                                            _ann_ids(r), split)
                            for r in self.refs for s in r["sentences"]]

    def image(self, image_id: int) -> np.ndarray:
        path = self.image_dir / self.images[image_id]["file_name"]
        if not path.exists():
            raise FileNotFoundError(f"image {image_id} not found at {path}")
        return load_image(path)

    def masks(self, ann_ids: Sequence[int], image_id: int) -> list[np.ndarray]:
        im = self.images[image_id]
        h, w = int(im["height"]), int(im["width"])
        where = f"{self.root / 'instances.json'}: annotation"
        return [decode_refer_segmentation(self.annotations[a].get("segmentation"), h, w, f"{where} {a}")
                for a in ann_ids]

    def sample(self, ref_id: int, image_id: int, ann_ids: list[int], sentence: str, sent_id: int | None,
               *, one_seg_per_target: bool) -> Sample:
        image = self.image(image_id)
        masks = self.masks(ann_ids, image_id)
        if masks and masks[0].shape != image.shape[:2]:
            raise ValueError(f"image {image_id}: instances.json says {masks[0].shape}, the file is "
                             f"{image.shape[:2]}")
        question = REFER_QUESTION.format(sentence=sentence)
        if not ann_ids or one_seg_per_target:
            answer, targets = seg_answer(len(masks)), masks
        else:
            union = np.logical_or.reduce(masks) if len(masks) > 1 else masks[0]
            answer, targets = REFER_ANSWER, [union]
        return Sample(image=image, turns=[(question, answer)], masks=targets,
                      task="gres" if self.generalized else "res", image_id=str(image_id),
                      meta={"ref_id": ref_id, "sent_id": sent_id, "no_target": not ann_ids, "split": self.split,
                            "sentence": sentence})


def decode_refer_segmentation(seg: Any, h: int, w: int, where: str) -> np.ndarray:
    """A REFER annotation's ``segmentation`` -> (h, w) bool mask.

    The toolkit's form is a list: of polygons, or of RLEs (their union is the mask, as ``REFER.getMask`` sums
    them). A bare RLE object (what pixelsail's exports wrote before they followed the toolkit) is read too.
    """
    if isinstance(seg, list) and seg and all(isinstance(part, dict) for part in seg):
        parts = [decode_segmentation(part, h, w, f"{where} RLE {j}") for j, part in enumerate(seg)]
        return np.logical_or.reduce(parts)
    return decode_segmentation(seg, h, w, where)


def _find_image_dir(root: Path, image_dir: str | Path | None) -> Path:
    if image_dir is not None:
        d = Path(image_dir)
        if not d.is_dir():
            raise FileNotFoundError(f"image folder not found: {d}")
        return d
    for d in (root / "images", root.parent / "images" / "mscoco" / "images" / "train2014",
              root.parent / "images" / "train2014", root.parent / "train2014"):
        if d.is_dir():
            return d
    raise FileNotFoundError(f"no image folder for {root}: pass image_dir (COCO train2014 images)")


def _check_ref(r: Any, i: int, path: Path) -> dict:
    if not isinstance(r, dict):
        raise ValueError(f"{path}: ref #{i} is a {type(r).__name__}, expected a dict")
    for key in ("ref_id", "image_id", "split", "sentences", "ann_id"):
        if key not in r:
            raise ValueError(f"{path}: ref #{i} (ref_id={r.get('ref_id')}) has no {key!r}")
    for s in r["sentences"]:
        if "sent" not in s or "sent_id" not in s:
            raise ValueError(f"{path}: ref {r['ref_id']} has a sentence without 'sent'/'sent_id'")
    return r


def _ann_ids(r: dict) -> list[int]:
    """Target annotations of a ref; gRefCOCO lists several (``[-1]`` or ``no_target`` meaning none)."""
    ann = r["ann_id"]
    ids = [int(a) for a in ann] if isinstance(ann, (list, tuple)) else [int(ann)]
    if r.get("no_target") or ids == [-1]:
        return []
    if -1 in ids:
        raise ValueError(f"ref {r.get('ref_id')}: ann_id mixes -1 (no target) with targets: {ids}")
    return ids


# ---------------------------------------------------------------------------------------------------------------
# datasets


class ReferEvalDataset:
    """One :class:`Sample` per referring expression of a split (the evaluation unit of every paper).

    REFER samples carry one target mask (the ref's annotation); gRefCOCO samples carry one mask per target and an
    answer with one ``[SEG]`` each, or none and ``NO_TARGET_ANSWER``.
    """

    def __init__(self, root: str | Path, *, split: str = "val", split_by: str = "unc",
                 image_dir: str | Path | None = None, generalized: bool | None = None):
        self.index = ReferIndex(root, split_by=split_by, split=split, image_dir=image_dir, generalized=generalized)

    def __len__(self) -> int:
        return len(self.index.expressions)

    def image_key(self, i: int) -> str:
        return str(self.index.expressions[i].image_id)

    def __getitem__(self, i: int) -> Sample:
        e = self.index.expressions[i]
        return self.index.sample(e.ref_id, e.image_id, e.ann_ids, e.sentence, e.sent_id,
                                 one_seg_per_target=self.index.generalized)


class ReferTrainDataset:
    """One :class:`Sample` per ref; which of its expressions is asked is drawn from ``(seed, i)``."""

    def __init__(self, root: str | Path, *, split: str = "train", split_by: str = "unc",
                 image_dir: str | Path | None = None, generalized: bool | None = None, seed: int = 0):
        self.index = ReferIndex(root, split_by=split_by, split=split, image_dir=image_dir, generalized=generalized)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.index.refs)

    def __getitem__(self, i: int) -> Sample:
        r = self.index.refs[i]
        s = random.Random(self.seed * 1_000_003 + i).choice(r["sentences"])
        return self.index.sample(int(r["ref_id"]), int(r["image_id"]), _ann_ids(r), str(s["sent"]),
                                 int(s["sent_id"]), one_seg_per_target=self.index.generalized)


def _refer_factory(default_split_by: str, generalized: bool):
    def factory(root: str, split: str = "train", split_by: str = default_split_by, image_dir: str | None = None,
                mode: str = "train", seed: int = 0) -> ReferTrainDataset | ReferEvalDataset:
        if mode == "eval":
            return ReferEvalDataset(root, split=split, split_by=split_by, image_dir=image_dir,
                                    generalized=generalized)
        if mode != "train":
            raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
        return ReferTrainDataset(root, split=split, split_by=split_by, image_dir=image_dir,
                                 generalized=generalized, seed=seed)

    return factory


register_dataset("refcoco")(_refer_factory("unc", False))
register_dataset("refcoco+")(_refer_factory("unc", False))
register_dataset("refcocog")(_refer_factory("umd", False))
register_dataset("grefcoco")(_refer_factory("unc", True))
