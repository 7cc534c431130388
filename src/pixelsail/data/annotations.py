"""Reading the primitives every published annotation format shares: JSON files, images, polygon/RLE masks.

The real-data readers (COCO panoptic, GCG, Osprey/Pixel2Cap, LLaVA, MUSE, pixelsail JSONL) all go through these so
that a missing file or a malformed record fails the same way: one :class:`FormatError` whose message names the file
and the record.
"""
from __future__ import annotations

import json
import zlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from pixelsail.imageio import ImageInputError, load_image
from pixelsail.tokens import seg_answer, vp_token  # noqa: F401 (seg_answer: re-exported)


class FormatError(ValueError):
    """A dataset file is missing or one of its records is malformed; the message names file and record.

    ``kind`` classifies the problem (``"mask_size"``, ``"polygon_bounds"``, ...) for validation reports.
    """

    def __init__(self, message: str, kind: str = "format"):
        super().__init__(message)
        self.kind = kind


def read_json(path: str | Path, what: str = "annotation file") -> Any:
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{what} not found: {path}", "file_missing")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise FormatError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})", "json") from None


def read_json_records(path: str | Path, what: str = "annotation file") -> list[dict]:
    """A JSON file holding a list of records, or a mapping of key -> record (keys become ``record["_key"]``)."""
    data = read_json(path, what)
    if isinstance(data, dict):
        records = []
        for key, value in data.items():
            if not isinstance(value, dict):
                raise FormatError(f"{path}: record {key!r} is a {type(value).__name__}, expected an object")
            records.append({"_key": key, **value})
        return records
    if not isinstance(data, list):
        raise FormatError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise FormatError(f"{path}: record {i} is a {type(rec).__name__}, expected an object")
    return data


def load_rgb(path: str | Path, where: str) -> np.ndarray:
    """(H, W, 3) uint8 image, or a :class:`FormatError` naming ``where`` (file + record)."""
    try:
        return load_image(Path(path))
    except ImageInputError as e:
        kind = "image_missing" if "not found" in str(e) or "not a file" in str(e) else "image_unreadable"
        raise FormatError(f"{where}: {e}", kind) from None


def require(record: dict, keys: Sequence[str], where: str) -> Any:
    """The value of the first of ``keys`` present in ``record``."""
    for k in keys:
        if k in record and record[k] is not None:
            return record[k]
    names = " or ".join(repr(k) for k in keys)
    raise FormatError(f"{where}: missing field {names}", "schema")


def decode_segmentation(seg: Any, h: int, w: int, where: str, *, check_bounds: bool = False) -> np.ndarray:
    """COCO ``segmentation`` (polygon list, compressed or uncompressed RLE) -> (h, w) bool mask.

    ``check_bounds`` turns polygon vertices outside the image into an error (pycocotools silently clips them).
    """
    if isinstance(seg, dict):
        if "counts" not in seg or "size" not in seg:
            raise FormatError(f"{where}: RLE mask needs 'counts' and 'size', got keys {sorted(seg)}", "mask_decode")
        size = seg["size"]
        if not (isinstance(size, (list, tuple)) and len(size) == 2):
            raise FormatError(f"{where}: RLE 'size' must be [height, width], got {size!r}", "mask_decode")
        if tuple(int(s) for s in size) != (h, w):
            raise FormatError(f"{where}: mask size {list(size)} (height, width) differs from the image's {[h, w]}",
                              "mask_size")
        counts = seg["counts"]
        try:
            if isinstance(counts, list):
                rle = mask_utils.frPyObjects(seg, h, w)
            else:
                rle = {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
            m = mask_utils.decode(rle)
        except Exception as e:  # pycocotools raises bare Exceptions / TypeErrors on bad counts
            raise FormatError(f"{where}: RLE mask does not decode ({type(e).__name__}: {e})", "mask_decode") from None
        if m.shape != (h, w):
            raise FormatError(f"{where}: RLE decodes to {m.shape}, image is {(h, w)}", "mask_size")
        return m.astype(bool)
    if isinstance(seg, list):
        if not seg:
            raise FormatError(f"{where}: empty polygon list", "mask_decode")
        polys = seg if isinstance(seg[0], (list, tuple)) else [seg]
        for j, poly in enumerate(polys):
            if not isinstance(poly, (list, tuple)) or not all(isinstance(v, (int, float)) for v in poly):
                raise FormatError(f"{where}: polygon {j} must be a flat list of numbers [x0, y0, x1, y1, ...]",
                                  "mask_decode")
            if len(poly) < 6 or len(poly) % 2:
                raise FormatError(f"{where}: polygon {j} has {len(poly)} numbers; need an even count >= 6 "
                                  "(at least 3 x,y points)", "mask_decode")
            if not np.all(np.isfinite(poly)):
                raise FormatError(f"{where}: polygon {j} contains NaN or infinite coordinates", "mask_decode")
            if check_bounds:
                xy = np.asarray(poly, dtype=float).reshape(-1, 2)
                if xy[:, 0].min() < 0 or xy[:, 1].min() < 0 or xy[:, 0].max() > w or xy[:, 1].max() > h:
                    raise FormatError(f"{where}: polygon {j} leaves the {w}x{h} image (x in "
                                      f"[{xy[:, 0].min():g}, {xy[:, 0].max():g}], y in "
                                      f"[{xy[:, 1].min():g}, {xy[:, 1].max():g}])", "polygon_bounds")
        rles = mask_utils.frPyObjects([list(map(float, p)) for p in polys], h, w)
        return mask_utils.decode(mask_utils.merge(rles)).astype(bool)
    raise FormatError(f"{where}: segmentation must be a polygon list or an RLE object, got {type(seg).__name__}",
                      "mask_decode")


def conversation_turns(conversations: Any, where: str) -> list[tuple[str, str]]:
    """LLaVA/Osprey ``[{"from": "human"|"gpt", "value"}, ...]`` -> [(question, answer), ...]."""
    if not isinstance(conversations, list) or not conversations:
        raise FormatError(f"{where}: 'conversations' must be a non-empty list")
    if len(conversations) % 2:
        raise FormatError(f"{where}: 'conversations' has {len(conversations)} messages; expected human/gpt pairs")
    turns = []
    for j, msg in enumerate(conversations):
        role = "human" if j % 2 == 0 else "gpt"
        if not isinstance(msg, dict) or msg.get("from") != role or not isinstance(msg.get("value"), str):
            raise FormatError(f"{where}: message {j} must be {{'from': '{role}', 'value': <text>}}, "
                              f"got {str(msg)[:200]}")
        if not msg["value"].strip():
            raise FormatError(f"{where}: message {j} has empty text")
    for j in range(0, len(conversations), 2):
        turns.append((conversations[j]["value"], conversations[j + 1]["value"]))
    return turns


def union(masks: Sequence[np.ndarray], h: int, w: int) -> np.ndarray:
    out = np.zeros((h, w), dtype=bool)
    for m in masks:
        out |= m
    return out


def sample_rng(seed: int, index: int, salt: str = "") -> np.random.Generator:
    """The random stream of item ``index``: the same item always draws the same choices.

    ``salt`` (e.g. the annotation file) keeps datasets of one mixture from drawing the same choices at the same index.
    """
    return np.random.default_rng([seed, zlib.crc32(salt.encode("utf-8")), index])


def choose(rng: np.random.Generator, n_items: int, max_items: int | None) -> list[int]:
    """Up to ``max_items`` distinct indices of ``n_items``, in random order (all of them when max is None)."""
    order = rng.permutation(n_items).tolist()
    return order if max_items is None else order[:max_items]


def absent_prompt_answer(k: int) -> str:
    return f"{vp_token(k)} is not in the image."


def draw_vp_ids(rng: np.random.Generator, n: int, num_vp_tokens: int, where: str = "") -> list[int]:
    """``n`` distinct random ``<vp_k>`` ids (the paper draws them per sample so no id means a fixed object)."""
    if n > num_vp_tokens:
        raise FormatError(f"{where}: {n} regions but only {num_vp_tokens} <vp_k> tokens")
    return rng.choice(num_vp_tokens, size=n, replace=False).tolist()


class RecordDataset(ABC):
    """Map-style dataset over parsed records: ``ds[i]`` builds one Sample from record i with its own rng."""

    def __init__(self, records: list, *, seed: int = 0, salt: str = ""):
        self.records = records
        self.seed = seed
        self.salt = salt

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} records")
        index %= len(self)
        return self.build(self.records[index], sample_rng(self.seed, index, self.salt))

    @abstractmethod
    def build(self, record, rng: np.random.Generator):
        """One Sample from ``record``; every random choice comes from ``rng``."""
