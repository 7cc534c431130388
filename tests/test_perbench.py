"""PerBench's three JSON formats and the RefCOCOg region-caption file -> Samples."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelsail.data.perbench import PerBench, PerBenchDataset
from pixelsail.data.region_caption import RegionCaptionDataset
from pixelsail.data.registry import build_dataset
from test_refer import box, rle

H, W = 12, 16
A, B, C = box(0, 4, 0, 4), box(6, 10, 8, 14), box(2, 6, 10, 16)


def write_images(root: Path, names=("a.png", "b.png")) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        Image.fromarray(np.full((H, W, 3), 40 * k, dtype=np.uint8)).save(root / "images" / name)


def make_perbench(root: Path) -> Path:
    write_images(root)
    caption = [{"image_name": "a.png", "object_annotations": [
        {"segmentation": rle(A), "caption": "A dark square in the top left corner."},
        {"segmentation": rle(B), "caption": "A block at the lower right."}]}]
    mcq = [{"image_name": "a.png", "mcqs": [
        {"object": rle(A), "question": "What is <vp_0>? (A) a square (B) a circle", "answer": "(A)"},
        {"object": {"<obj1>": rle(B), "<obj10>": rle(C)},
         "question": "Is <obj10> left of <obj1>? (A) yes (B) no", "answer": "(B)"}]}]
    vtres = [{"image_name": "b.png", "question": "Which object has the colour of <region2>?",
              "answer": "It is <region1> and <region3>.",
              "segmentations": {"<region1>": rle(A), "<region2>": rle(B), "<region3>": rle(C)}}]
    for name, records in (("caption.json", caption), ("mcq.json", mcq), ("vtres.json", vtres)):
        (root / name).write_text(json.dumps(records))
    return root


def test_perbench_directory_reads_all_three_formats(tmp_path):
    bench = PerBench(make_perbench(tmp_path / "perbench"))
    assert [p.format for p in bench.parts] == ["caption", "mcq", "vtres"]
    assert len(bench) == 2 + 2 + 1
    cap = bench[1]
    assert cap.task == "region_caption" and np.array_equal(cap.prompts[0], B) and list(cap.prompts) == [0]
    assert cap.turns == [("Please describe <vp_0> in detail.", "<vp_0>: A block at the lower right.")]
    assert cap.meta["references"] == ["A block at the lower right."]
    q0, q1 = bench[2], bench[3]
    assert q0.task == "vp_mcq" and q0.meta["answer"] == "(A)" and np.array_equal(q0.prompts[0], A)
    # tags in order of appearance become <vp_0>, <vp_1>; "<obj1>" is not matched inside "<obj10>"
    assert q1.turns[0] == ("Is <vp_0> left of <vp_1>? (A) yes (B) no", "(B)")
    assert np.array_equal(q1.prompts[0], C) and np.array_equal(q1.prompts[1], B)
    vt = bench[4]
    assert vt.task == "vt_res"
    assert vt.turns == [("Which object has the colour of <vp_0>?", "It is [SEG] and [SEG].")]
    assert list(vt.prompts) == [0] and np.array_equal(vt.prompts[0], B)
    assert [m.sum() for m in vt.masks] == [A.sum(), C.sum()] and np.array_equal(vt.masks[1], C)
    for i in range(len(bench)):
        bench[i].validate()
    assert bench.image_key(4) == "b.png"
    assert len(build_dataset("perbench", path=str(tmp_path / "perbench" / "mcq.json"))) == 2


def test_vt_res_records_the_targets_the_authors_script_stacks(tmp_path):
    # the authors' script takes targets in the order of the segmentations mapping, skipping tags of the question
    write_images(tmp_path)
    record = {"image_name": "a.png", "question": "Like <obj5>?", "answer": "It is <obj2> and <obj9>.",
              "segmentations": {"<obj9>": rle(A), "<obj5>": rle(B), "<obj2>": rle(C)}}
    (tmp_path / "vt.json").write_text(json.dumps([record]))
    s = PerBenchDataset(tmp_path / "vt.json")[0]
    assert [m.sum() for m in s.masks] == [C.sum(), A.sum()]            # answer order: <obj2>, <obj9>
    assert s.meta["authors_targets"] == [1, 0]                         # mapping order: <obj9>, <obj2>


def test_perbench_errors_name_file_and_record(tmp_path):
    root = make_perbench(tmp_path / "pb")
    bad = json.loads((root / "vtres.json").read_text())
    bad[0]["answer"] = "It is nothing."
    (root / "vtres.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"vtres.json record 0: the answer 'It is nothing.' names none of the tags"):
        PerBenchDataset(root / "vtres.json")[0]
    (root / "other.json").write_text(json.dumps([{"image": "x"}]))
    with pytest.raises(ValueError, match=r"other.json: record 0 has keys \['image'\]"):
        PerBenchDataset(root / "other.json")
    small = json.loads((root / "caption.json").read_text())
    small[0]["object_annotations"][0]["segmentation"] = rle(np.zeros((4, 4), bool))
    (root / "caption.json").write_text(json.dumps(small))
    with pytest.raises(ValueError, match=r"caption.json record 0 item 0: mask size \[4, 4\]"):
        PerBenchDataset(root / "caption.json")[0]


def make_region_captions(root: Path) -> Path:
    write_images(root)
    data = {"images": [{"id": 1, "file_name": "a.png", "height": H, "width": W},
                       {"id": 2, "file_name": "b.png", "height": H, "width": W}],
            "annotations": [
                {"id": 10, "image_id": 1, "caption": "a square", "segmentation": rle(A)},
                {"id": 11, "image_id": 1, "caption": "the dark square", "segmentation": rle(A)},
                {"id": 12, "image_id": 2, "caption": "a box region", "bbox": [8, 6, 6, 4]}]}
    path = root / "refcocog_val_captions.json"
    path.write_text(json.dumps(data))
    return path


def test_region_captions_pool_references_per_region_and_accept_boxes(tmp_path):
    ds = RegionCaptionDataset(make_region_captions(tmp_path / "rc"))
    assert len(ds) == 2
    s = ds[0]
    assert s.task == "region_caption" and np.array_equal(s.prompts[0], A)
    assert s.meta["references"] == ["a square", "the dark square"]
    assert s.turns == [("Please describe <vp_0> in detail.", "<vp_0>: a square")]
    assert np.array_equal(ds[1].prompts[0], B)           # bbox [x, y, w, h] = [8, 6, 6, 4] covers B exactly
    assert ds.image_key(1) == "2"
