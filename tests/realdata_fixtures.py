"""Tiny fixtures in each published real-data format, written by the tests themselves (nothing is downloaded).

Every image is 48x64 with two known objects so expectations can be computed by hand:
object A ("box") = rows 8..23, cols 8..29; object B ("ball") = rows 28..43, cols 34..59.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

H, W = 48, 64
A_ROWS, A_COLS = (8, 24), (8, 30)
B_ROWS, B_COLS = (28, 44), (34, 60)


def mask_a() -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[A_ROWS[0]:A_ROWS[1], A_COLS[0]:A_COLS[1]] = True
    return m


def mask_b() -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[B_ROWS[0]:B_ROWS[1], B_COLS[0]:B_COLS[1]] = True
    return m


def rle(mask: np.ndarray) -> dict:
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")}


def polygon_a() -> list[list[float]]:
    """Rectangle A as a COCO polygon (pixel-edge coordinates)."""
    (r0, r1), (c0, c1) = A_ROWS, A_COLS
    return [[c0, r0, c1, r0, c1, r1, c0, r1]]


def scene(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, size=(H, W, 3), dtype=np.uint8)
    img[mask_a()] = (200, 30, 30)
    img[mask_b()] = (30, 30, 200)
    return img


def write_images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.fromarray(scene(i)).save(folder / name)


def _dump(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def write_coco_panoptic(root: Path, split: str = "val2017") -> Path:
    """ROOT/annotations/panoptic_{split}.json + ROOT/panoptic_{split}/*.png + ROOT/{split}/*.png.

    Image 1: two 'box' instances would be too much for 48x64; it has one box (segment 5, thing), one ball
    (segment 300, thing) and the rest 'wall-other-merged' (segment 70000, stuff).
    """
    write_images(root / split, ["img1.png"])
    ids = np.full((H, W), 70000, dtype=np.int64)
    ids[mask_a()] = 5
    ids[mask_b()] = 300
    png = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    (root / f"panoptic_{split}").mkdir(parents=True, exist_ok=True)
    Image.fromarray(png).save(root / f"panoptic_{split}" / "img1.png")
    return _dump(root / "annotations" / f"panoptic_{split}.json", {
        "images": [{"id": 1, "file_name": "img1.png", "height": H, "width": W}],
        "annotations": [{"image_id": 1, "file_name": "img1.png", "segments_info": [
            {"id": 5, "category_id": 1, "iscrowd": 0}, {"id": 300, "category_id": 2, "iscrowd": 0},
            {"id": 70000, "category_id": 3, "iscrowd": 0}]}],
        "categories": [{"id": 1, "name": "box", "isthing": 1}, {"id": 2, "name": "ball", "isthing": 1},
                       {"id": 3, "name": "wall-other-merged", "isthing": 0}],
    })


GCG_CAPTION = "A red box sits above a blue ball."
BALL_AT = GCG_CAPTION.index("a blue ball")


def write_gcg(root: Path) -> dict[str, Path]:
    """GranDf (RLE), GLaMM RefCOCOg-GCG (polygons, id -> record mapping) and Flickr-style COCO GCG files."""
    write_images(root / "images", ["g1.png"])
    grandf = _dump(root / "GranDf_HA_GCG_train.json", [{
        "file_name": "g1.png", "caption": f'"{GCG_CAPTION}"',
        "groundings": {"a blue ball": {"token_positives": [BALL_AT, BALL_AT + 11], "rle_masks": [rle(mask_b())]},
                       "A red box": {"token_positives": [0, 9], "rle_masks": [rle(mask_a())]}}}])
    refcocog = _dump(root / "RefCOCOg_GCG_train.json", {"g1": {
        "img_file_name": "g1.png", "caption": GCG_CAPTION,
        "refs": [{"sentence": "a red box", "segmentation": polygon_a()},
                 {"sentence": "a green cat", "segmentation": polygon_a()}]}})
    flickr = _dump(root / "flickr_mergedGT_GCG_train.json", {
        "images": [{"id": 7, "file_name": "g1.png", "caption": GCG_CAPTION}],
        "annotations": [{"image_id": 7, "tokens_positive": [[BALL_AT, BALL_AT + 11]], "sam_mask": rle(mask_b())}]})
    return {"grandf": grandf, "refcocog": refcocog, "flickr": flickr}


def write_osprey(root: Path) -> dict[str, Path]:
    write_images(root / "images", ["000000000001.png"])
    regions = [{"segmentation": polygon_a(), "bbox": [8, 8, 22, 16]}, {"segmentation": rle(mask_b())}]
    conv = _dump(root / "osprey_conversation.json", [{
        "id": 11, "file_name": "COCO_train2014_000000000001.png", "height": H, "width": W, "annotation": regions,
        "conversations": [{"from": "human", "value": "<image>\nWhat colour is <region1>?"},
                          {"from": "gpt", "value": "It is red, unlike region2."},
                          {"from": "human", "value": "And region2<mask><pos>?"},
                          {"from": "gpt", "value": "Blue."}]}])
    desc = _dump(root / "osprey_detail_description.json", [{
        "id": 12, "file_name": "000000000001.png", "height": H, "width": W, "annotation": regions,
        "description": ["<region1>: A red box with sharp corners.", "<region2>: A blue ball."]}])
    pixel2cap = _dump(root / "pixel2cap_train.json", {
        "images": [{"id": 1, "file_name": "000000000001.png", "height": H, "width": W}],
        "annotations": [{"id": 1, "image_id": 1, "segmentation": rle(mask_a()), "caption": "a red box"},
                        {"id": 2, "image_id": 1, "segmentation": polygon_a(), "caption": "the same red box"},
                        {"id": 3, "image_id": 1, "segmentation": rle(mask_b()), "caption": "a blue ball"}]})
    return {"conversation": conv, "description": desc, "pixel2cap": pixel2cap}


def write_llava(root: Path) -> Path:
    write_images(root / "coco" / "train2017", ["l1.png"])
    return _dump(root / "llava_v1_5_mix665k.json", [
        {"id": "a", "image": "coco/train2017/l1.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat is in the picture?"}, {"from": "gpt", "value": "Two shapes."},
            {"from": "human", "value": "Which is red?"}, {"from": "gpt", "value": "The box."}]},
        {"id": "b", "conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "Hi."}]}])


def write_muse(root: Path) -> Path:
    write_images(root / "train2017", ["m1.png"])
    (root / "val2017").mkdir(parents=True, exist_ok=True)
    return _dump(root / "MUSE_train.json", [{
        "file_name": "m1.png", "questions": ["What could I kick and what could I stack things on?"],
        "text_answers": ["You could kick the ball <seg> and stack things on the box <seg>."],
        "ann_list": [{"segmentation": rle(mask_b())}, {"segmentation": polygon_a()}]}])


def write_jsonl(root: Path) -> Path:
    write_images(root / "images", ["j1.png"])
    records = [
        {"id": "r1", "image": "images/j1.png", "masks": {"box": polygon_a(), "ball": rle(mask_b())},
         "expressions": [{"text": "the red box", "masks": ["box"]},
                         {"text": "both shapes", "masks": ["box", "ball"]},
                         {"text": "the cat", "masks": []}]},
        {"id": "r2", "image": "images/j1.png", "masks": {"box": polygon_a(), "ball": rle(mask_b())},
         "prompts": {"<vp_0>": "box", "<vp_3>": {"box": [34, 28, 60, 44]}},
         "turns": [{"q": "What is below <vp_0>?", "a": "The ball [SEG:ball]."},
                   {"q": "Segment both.", "a": "[SEG:box+ball]"},
                   {"q": "What colour is <vp_3>?", "a": "<vp_3>: blue."}]},
    ]
    path = root / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def write_all(root: Path) -> dict[str, dict]:
    """Every format under ``root``; returns registry name -> dataset args (as a YAML mixture would give them)."""
    gcg = write_gcg(root / "gcg")
    osprey = write_osprey(root / "osprey")
    write_coco_panoptic(root / "coco")
    return {
        "coco_panoptic": {"root": str(root / "coco"), "split": "val2017"},
        "gcg": {"annotation_file": str(gcg["grandf"]), "image_dir": str(root / "gcg" / "images")},
        "osprey": {"annotation_file": str(osprey["conversation"]), "image_dir": str(root / "osprey" / "images")},
        "pixel2cap": {"annotation_file": str(osprey["pixel2cap"]), "image_dir": str(root / "osprey" / "images")},
        "llava": {"annotation_file": str(write_llava(root / "llava")), "image_dir": str(root / "llava")},
        "muse": {"annotation_file": str(write_muse(root / "muse")),
                 "image_dirs": [str(root / "muse" / "val2017"), str(root / "muse" / "train2017")]},
        "jsonl": {"path": str(write_jsonl(root / "mine"))},
    }


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def write_recipe_tree(data: Path) -> None:
    """Fixtures at exactly the paths configs/pixelsail-*-cotrain.yaml name under ``data`` (docs/DATA.md layout)."""
    from pixelsail.data.export import GREFER_DIR, IMAGE_DIR, REFER_DIR, export_shapes

    export = data.parent / "_shapes_export"
    export_shapes(export, {"train": 2}, image_size=64)
    for name in ("refcoco", "refcoco+", "refcocog"):
        shutil.copytree(export / REFER_DIR, data / "refer" / name)
    _copy(export / REFER_DIR / "refs(unc).p", data / "refer" / "refcocog" / "refs(umd).p")
    shutil.copytree(export / GREFER_DIR, data / "refer" / "grefcoco")
    shutil.copytree(export / IMAGE_DIR, data / "coco" / "train2014")
    coco = data / "coco"
    write_coco_panoptic(coco, "train2017")
    _dump(coco / "annotations" / "instances_train2017.json", {
        "images": [{"id": 1, "file_name": "img1.png", "height": H, "width": W}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": polygon_a(), "iscrowd": 0},
                        {"id": 2, "image_id": 1, "category_id": 2, "segmentation": rle(mask_b()), "iscrowd": 0}],
        "categories": [{"id": 1, "name": "box"}, {"id": 2, "name": "ball"}]})
    write_gcg(data / "glamm")
    for folder in ("glamm/GranDf_HA_images/train", "coco/train2014", "flickr30k/images"):
        _copy(data / "glamm" / "images" / "g1.png", data / folder / "g1.png")
    osprey = write_osprey(data / "osprey")
    _copy(osprey["conversation"], data / "osprey" / "osprey_short_form.json")
    _copy(osprey["pixel2cap"], data / "pixel2cap" / "pix2cap_train.json")
    _copy(data / "osprey" / "images" / "000000000001.png", coco / "train2017" / "000000000001.png")
    write_muse(data / "muse")
    _copy(data / "muse" / "train2017" / "m1.png", coco / "train2017" / "m1.png")
    write_llava(data / "llava")
    (write_jsonl(data / "sa1b")).rename(data / "sa1b" / "object_captions.jsonl")
