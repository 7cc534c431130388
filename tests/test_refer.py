"""REFER / gRefCOCO readers on tiny hand-built dataset directories, and the restricted unpickler."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from pixelsail.data.refer import ReferEvalDataset, UnsafePickleError, load_plain_pickle
from pixelsail.data.registry import build_dataset
from pixelsail.tokens import NO_TARGET_ANSWER

H, W = 12, 16


def rle(m: np.ndarray) -> dict:
    r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": list(r["size"]), "counts": r["counts"].decode("ascii")}


def box(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[r0:r1, c0:c1] = True
    return m


# annotation id -> mask; 1 and 3 are stored as polygons, 2 as the REFER toolkit's list of RLEs (two parts), 4 as a
# bare RLE object (what pixelsail's exports wrote before)
MASKS = {1: box(0, 4, 0, 4), 2: box(6, 10, 8, 14), 3: box(2, 6, 10, 16), 4: box(8, 12, 0, 5)}
POLYGONS = {1: [[0, 0, 4, 0, 4, 4, 0, 4]], 3: [[10, 2, 16, 2, 16, 6, 10, 6]]}
RLE_PARTS = {2: [box(6, 10, 8, 11), box(6, 10, 10, 14)]}     # overlapping parts whose union is MASKS[2]
IMAGE_OF = {1: 100, 2: 100, 3: 200, 4: 200}


def segmentation(ann_id: int):
    if ann_id in POLYGONS:
        return POLYGONS[ann_id]
    if ann_id in RLE_PARTS:
        return [rle(m) for m in RLE_PARTS[ann_id]]
    return rle(MASKS[ann_id])


def write_coco(root: Path) -> None:
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for image_id in (100, 200):
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(images / f"COCO_{image_id}.png")
    anns = [{"id": a, "image_id": IMAGE_OF[a], "category_id": 1, "iscrowd": 0,
             "segmentation": segmentation(a)} for a in MASKS]
    instances = {"images": [{"id": i, "file_name": f"COCO_{i}.png", "height": H, "width": W} for i in (100, 200)],
                 "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}
    (root / "instances.json").write_text(json.dumps(instances))


def sentences(*pairs: tuple[int, str]) -> list[dict]:
    return [{"sent_id": sid, "sent": text, "raw": text, "tokens": text.split()} for sid, text in pairs]


def make_refer(root: Path, split_by: str = "unc") -> Path:
    """Refs: ref 10 (ann 1, val, 2 sentences), ref 11 (ann 3, val, 1), ref 12 (ann 2, train, 2)."""
    write_coco(root)
    refs = [
        {"ref_id": 10, "ann_id": 1, "image_id": 100, "split": "val", "category_id": 1,
         "sentences": sentences((1000, "left square"), (1001, "the top left one")), "sent_ids": [1000, 1001]},
        {"ref_id": 11, "ann_id": 3, "image_id": 200, "split": "val", "category_id": 1,
         "sentences": sentences((1100, "right block")), "sent_ids": [1100]},
        {"ref_id": 12, "ann_id": 2, "image_id": 100, "split": "train", "category_id": 1,
         "sentences": sentences((1200, "lower right"), (1201, "bottom thing")), "sent_ids": [1200, 1201]},
    ]
    with open(root / f"refs({split_by}).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)   # REFER's files are protocol-2 pickles
    return root


def make_grefcoco(root: Path) -> Path:
    """grefs: ref 20 (two targets 2 and 1), ref 21 (no target), ref 22 (one target 4); all val."""
    write_coco(root)
    grefs = [
        {"ref_id": 20, "ann_id": [2, 1], "image_id": 100, "split": "val", "no_target": False,
         "sentences": sentences((2000, "both boxes"))},
        {"ref_id": 21, "ann_id": [-1], "image_id": 200, "split": "val", "no_target": True,
         "sentences": sentences((2100, "the purple star"))},
        {"ref_id": 22, "ann_id": [4], "image_id": 200, "split": "val", "no_target": False,
         "sentences": sentences((2200, "bottom left"))},
    ]
    (root / "grefs(unc).json").write_text(json.dumps(grefs))
    return root


def test_refer_eval_yields_one_sample_per_expression(tmp_path):
    ds = ReferEvalDataset(make_refer(tmp_path / "refcoco"), split="val")
    assert len(ds) == 3
    s = ds[1]
    assert s.turns == [("Please segment the top left one.", "Sure, [SEG].")]
    assert s.task == "res" and s.image_id == "100" and s.image.shape == (H, W, 3)
    assert len(s.masks) == 1 and np.array_equal(s.masks[0], MASKS[1])          # from a polygon
    assert s.meta == {"ref_id": 10, "sent_id": 1001, "no_target": False, "split": "val",
                      "sentence": "the top left one"}
    assert np.array_equal(ds[2].masks[0], MASKS[3]) and ds.image_key(2) == "200"
    s.validate()


def test_refer_reads_rle_annotations_and_the_training_registry(tmp_path):
    root = make_refer(tmp_path / "refcocog", split_by="umd")
    ds = build_dataset("refcocog", root=str(root), split="train")        # default split_by for refcocog: umd
    assert len(ds) == 1
    s = ds[0]
    assert np.array_equal(s.masks[0], MASKS[2])                               # from a list of two RLEs
    assert s.meta["sent_id"] in (1200, 1201)
    assert ds[0].turns == s.turns                                             # deterministic per index
    seen = {build_dataset("refcocog", root=str(root), split="train", seed=k)[0].meta["sent_id"] for k in range(20)}
    assert seen == {1200, 1201}                                               # the expression is drawn per ref
    assert len(build_dataset("refcocog", root=str(root), split="val", mode="eval")) == 3


def test_grefcoco_multi_and_no_target(tmp_path):
    ds = build_dataset("grefcoco", root=str(make_grefcoco(tmp_path / "grefcoco")), split="val", mode="eval")
    multi, none, single = ds[0], ds[1], ds[2]
    assert multi.task == "gres" and multi.turns[0][1] == "Sure, [SEG] and [SEG]."
    assert [m.sum() for m in multi.masks] == [MASKS[2].sum(), MASKS[1].sum()]
    assert none.turns[0][1] == NO_TARGET_ANSWER and none.masks == [] and none.meta["no_target"] is True
    assert single.turns[0][1] == "Sure, [SEG]." and np.array_equal(single.masks[0], MASKS[4])   # bare RLE
    for s in (multi, none, single):
        s.validate()


def test_rle_lists_union_their_parts_and_bad_parts_are_named(tmp_path):
    from pixelsail.data.annotations import FormatError
    from pixelsail.data.refer import decode_refer_segmentation

    parts = [rle(m) for m in RLE_PARTS[2]]
    assert sum(p.sum() for p in RLE_PARTS[2]) == MASKS[2].sum() + 4        # the parts overlap on 4 pixels
    assert np.array_equal(decode_refer_segmentation(parts, H, W, "ann 2"), MASKS[2])
    assert np.array_equal(decode_refer_segmentation(rle(MASKS[4]), H, W, "ann 4"), MASKS[4])
    with pytest.raises(FormatError, match=r"ann 2 RLE 1: mask size \[3, 3\]"):
        decode_refer_segmentation([parts[0], rle(np.ones((3, 3), bool))], H, W, "ann 2")


def test_clear_errors_for_missing_files_and_splits(tmp_path):
    root = make_refer(tmp_path / "refcoco")
    with pytest.raises(ValueError, match=r"no refs in split 'testA'; splits present: \['train', 'val'\]"):
        ReferEvalDataset(root, split="testA")
    with pytest.raises(FileNotFoundError, match=r"refs\(google\)\.p not found"):
        ReferEvalDataset(root, split="val", split_by="google")
    (root / "instances.json").unlink()
    with pytest.raises(FileNotFoundError, match="instances.json not found"):
        ReferEvalDataset(root, split="val")


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_refs_pickle_is_refused_and_runs_no_code(tmp_path):
    root = make_refer(tmp_path / "refcoco")
    marker = tmp_path / "pwned"
    payload = pickle.dumps([{"ref_id": 1, "sentences": [_Exploit(marker)]}], protocol=2)
    (root / "refs(unc).p").write_bytes(payload)
    with pytest.raises(UnsafePickleError, match=r"refs\(unc\)\.p: refused to unpickle .*system"):
        ReferEvalDataset(root, split="val")
    assert not marker.exists()
    # the same bytes through the ordinary unpickler do run the command: the check above can fail
    pickle.loads(payload)
    assert marker.exists()


def test_plain_pickles_of_every_protocol_load(tmp_path):
    data = [{"ref_id": 1, "sentences": [{"sent": "a", "sent_id": 2}], "box": (1.5, 2), "tags": {"x"}, "n": None}]
    for protocol in range(0, pickle.HIGHEST_PROTOCOL + 1):
        p = tmp_path / f"p{protocol}.p"
        p.write_bytes(pickle.dumps(data, protocol=protocol))
        assert load_plain_pickle(p) == data
    (tmp_path / "junk.p").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="not a readable pickle"):
        load_plain_pickle(tmp_path / "junk.p")
