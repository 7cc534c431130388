"""Write the shapes world in the real datasets' file formats, so the real loaders can be run on it.

Layout under ``out`` is the one the REFER toolkit (``REFER`` / ``G_REFER`` of refer.py, which LISA's and the
authors' evaluation code import) expects of its ``data_root``, so it loads the export unchanged::

    images/mscoco/images/train2014/<image_id>.png   scene images, where ``REFER`` looks for refcoco(+/g)
    images/train2014/<image_id>.png                 the same images, where ``G_REFER`` looks for grefcoco
    refcoco/instances.json               COCO instances: one annotation per visible object; ``segmentation`` is a
                                         list holding one RLE of its visible mask (the toolkit indexes ``[0]``)
    refcoco/refs(unc).p                  REFER refs (pickle of plain lists/dicts/str/int only)
    grefcoco/instances.json              the same instances
    grefcoco/grefs(unc).json             gRefCOCO refs: ``ann_id`` is a list, ``[-1]`` and ``no_target`` for none
    perbench/caption.json                {image_name, object_annotations: [{segmentation, caption}]}
    perbench/mcq.json                    {image_name, mcqs: [{object: {tag: rle}, question, answer}]}
    perbench/vt_res.json                 {image_name, question, answer, segmentations: {tag: rle}}
    perbench/<image_id>.png              the PerBench images, next to the JSON

The toolkit accepts only the dataset names refcoco, refcoco+, refcocog, refclef and grefcoco, so the shapes
world is written under ``refcoco`` and ``grefcoco``; ``instances.json`` says in its ``info`` that it is the shapes
world, and an export refuses to write into a folder whose ``instances.json`` says otherwise (real data).
PerBench masks stay bare RLE objects: the authors' PerBench scripts decode them directly.

PerBench tags are ``<objN>`` (N = the object's paint index); a reader renames question tags to ``<vp_k>``.
MCQ ``answer`` is the string that must occur in a model's output, e.g. ``"(B)"``.
"""
from __future__ import annotations

import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from pixelsail.data.shapes import (
    SHAPES, Scene, ShapeObject, attribute_referrals, generate_scene, make_rng, make_vp_mcq, make_vt_res,
    multi_referrals, no_target_referral, reading_order, region_caption, relation_referrals,
)

REFER_DIR = "refcoco"            # names the REFER toolkit accepts
GREFER_DIR = "grefcoco"
PERBENCH_DIR = "perbench"
IMAGE_DIR = Path("images") / "train2014"                            # where G_REFER looks
REFER_IMAGE_DIR = Path("images") / "mscoco" / "images" / "train2014"  # where REFER looks for refcoco(+/g)
EXPORT_DESCRIPTION = "pixelsail shapes world"
MAX_SENTENCES_PER_REF = 3
_VP_TAG = re.compile(r"<vp_(\d+)>")


def mask_to_rle(mask: np.ndarray) -> dict:
    """(H, W) bool -> COCO compressed RLE, ``counts`` as str so it can go into JSON."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def categories() -> list[dict]:
    return [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)]


def category_id(obj: ShapeObject) -> int:
    return SHAPES.index(obj.shape) + 1


def coco_bbox(obj: ShapeObject) -> list[float]:
    x0, y0, x1, y1 = obj.bbox
    return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]


def _sentence(text: str, sent_id: int) -> dict:
    return {"sent": text, "raw": text, "tokens": text.split(), "sent_id": sent_id}


@dataclass
class _Ids:
    """Running ids shared by all splits of one export (REFER ids are unique across splits)."""

    ann: int = 0
    ref: int = 0
    sent: int = 0

    def next(self, name: str) -> int:
        value = getattr(self, name) + 1
        setattr(self, name, value)
        return value


@dataclass
class ExportResult:
    out: Path
    counts: dict[str, int] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


def _save_png(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="PNG")


def _write_json(obj, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def _refer_refs(scene: Scene, image_id: int, split: str, file_name: str, ann_of: Mapping[int, int],
                ids: _Ids) -> list[dict]:
    """One REFER ref per visible object that some expression singles out; its sentences are those expressions."""
    by_target: dict[int, list[str]] = {}
    for ref in attribute_referrals(scene) + relation_referrals(scene):
        sents = by_target.setdefault(ref.targets[0].index, [])
        if ref.expression not in sents and len(sents) < MAX_SENTENCES_PER_REF:
            sents.append(ref.expression)
    refs = []
    for obj_index, sents in sorted(by_target.items()):
        obj = scene.objects[obj_index]
        sentences = [_sentence(s, ids.next("sent")) for s in sents]
        refs.append({"ref_id": ids.next("ref"), "ann_id": ann_of[obj_index], "image_id": image_id, "split": split,
                     "sentences": sentences, "sent_ids": [s["sent_id"] for s in sentences],
                     "category_id": category_id(obj), "file_name": file_name})
    return refs


def _grefer_refs(scene: Scene, image_id: int, split: str, file_name: str, ann_of: Mapping[int, int],
                 ids: _Ids, rng: np.random.Generator) -> list[dict]:
    """gRefCOCO refs: one single-target ref per object, every multi-target expression, one no-target expression."""
    referrals = []
    singles: set[int] = set()
    for ref in attribute_referrals(scene):
        if ref.targets[0].index not in singles:
            singles.add(ref.targets[0].index)
            referrals.append(ref)
    referrals += multi_referrals(scene) + [no_target_referral(scene, rng)]
    refs = []
    for ref in referrals:
        targets = reading_order(ref.targets)
        sentence = _sentence(ref.expression, ids.next("sent"))
        refs.append({"ref_id": ids.next("ref"), "ann_id": [ann_of[t.index] for t in targets] or [-1],
                     "image_id": image_id, "split": split, "sentences": [sentence], "sent_ids": [sentence["sent_id"]],
                     "category_id": [category_id(t) for t in targets], "file_name": file_name,
                     "no_target": not targets})
    return refs


def _obj_tag(obj_index: int) -> str:
    return f"<obj{obj_index}>"


def _perbench_mcq(scene: Scene, rng: np.random.Generator) -> dict:
    sample = make_vp_mcq(scene, rng)
    prompt_objects: dict[int, int] = sample.meta["prompt_objects"]
    question = _VP_TAG.sub(lambda m: _obj_tag(prompt_objects[int(m.group(1))]), sample.turns[0][0])
    return {"object": {_obj_tag(i): mask_to_rle(scene.objects[i].mask) for i in prompt_objects.values()},
            "question": question, "answer": sample.meta["answer"]}


def _perbench_vt_res(scene: Scene, rng: np.random.Generator, image_name: str) -> dict | None:
    sample = make_vt_res(scene, rng)
    if sample is None:
        return None
    (k, anchor), = sample.meta["prompt_objects"].items()
    target = sample.meta["target_ids"][0]
    question = sample.turns[0][0].replace(f"<vp_{k}>", _obj_tag(anchor))
    return {"image_name": image_name, "question": question, "answer": f"It is {_obj_tag(target)}.",
            "segmentations": {_obj_tag(i): mask_to_rle(scene.objects[i].mask) for i in (anchor, target)}}


def _refuse_foreign_instances(path: Path) -> None:
    """The export's folder names are real datasets' names: never overwrite a real dataset's files."""
    if not path.is_file():
        return
    try:
        description = str(json.loads(path.read_text()).get("info", {}).get("description", ""))
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
        description = ""
    if not description.startswith(EXPORT_DESCRIPTION):
        raise FileExistsError(f"{path} exists and is not a shapes-world export: refusing to overwrite it "
                              "(choose another --out)")


def export_shapes(out: str | Path, splits: Mapping[str, int] | Iterable[tuple[str, int]], seed: int = 0,
                  image_size: int = 128, progress=None) -> ExportResult:
    """Export ``n`` scenes of each ``split`` (e.g. ``{"val": 100, "test": 100}``) in every format.

    ``progress`` (optional) is called with the number of scenes written so far.
    """
    out = Path(out)
    for folder in (REFER_DIR, GREFER_DIR):
        _refuse_foreign_instances(out / folder / "instances.json")
    plan = list(splits.items()) if isinstance(splits, Mapping) else list(splits)
    for split, n in plan:
        if int(n) < 1:
            raise ValueError(f"split {split!r}: need at least one scene, got {n}")
    ids = _Ids()
    images, annotations, refs, grefs = [], [], [], []
    captions, mcqs, vt_res = [], [], []
    image_id = 0
    for split, n in plan:
        for index in range(int(n)):
            scene = generate_scene(split, index, seed, image_size)
            image_id += 1
            file_name = f"{scene.image_id}.png"
            for folder in (IMAGE_DIR, REFER_IMAGE_DIR):
                _save_png(scene.image, out / folder / file_name)
            _save_png(scene.image, out / PERBENCH_DIR / file_name)
            images.append({"id": image_id, "file_name": file_name, "height": image_size, "width": image_size,
                           "split": split})
            ann_of: dict[int, int] = {}
            for obj in scene.visible_objects:
                ann_of[obj.index] = ids.next("ann")
                annotations.append({"id": ann_of[obj.index], "image_id": image_id, "category_id": category_id(obj),
                                    "segmentation": [mask_to_rle(obj.mask)], "area": float(obj.area),
                                    "bbox": coco_bbox(obj), "iscrowd": 0, "color": obj.color, "size": obj.size})
            rng = make_rng(seed, split, index, 3)
            refs += _refer_refs(scene, image_id, split, file_name, ann_of, ids)
            grefs += _grefer_refs(scene, image_id, split, file_name, ann_of, ids, rng)
            captions.append({"image_name": file_name, "object_annotations": [
                {"segmentation": mask_to_rle(o.mask), "caption": region_caption(scene, o) + "."}
                for o in scene.visible_objects]})
            mcqs.append({"image_name": file_name, "mcqs": [_perbench_mcq(scene, rng) for _ in range(2)]})
            record = _perbench_vt_res(scene, rng, file_name)
            if record is not None:
                vt_res.append(record)
            if progress is not None:
                progress(image_id)
    instances = {"info": {"description": f"{EXPORT_DESCRIPTION}, seed {seed}"}, "images": images,
                 "annotations": annotations, "categories": categories()}
    result = ExportResult(out)
    result.files += [_write_json(instances, out / REFER_DIR / "instances.json"),
                     _write_json(instances, out / GREFER_DIR / "instances.json"),
                     _write_json(grefs, out / GREFER_DIR / "grefs(unc).json"),
                     _write_json(captions, out / PERBENCH_DIR / "caption.json"),
                     _write_json(mcqs, out / PERBENCH_DIR / "mcq.json")]
    if vt_res:
        result.files.append(_write_json(vt_res, out / PERBENCH_DIR / "vt_res.json"))
    refs_path = out / REFER_DIR / "refs(unc).p"
    with open(refs_path, "wb") as f:
        pickle.dump(refs, f, protocol=4)
    result.files.append(refs_path)
    result.counts = {"images": len(images), "annotations": len(annotations), "refs": len(refs),
                     "grefs": len(grefs), "no_target_grefs": sum(r["no_target"] for r in grefs),
                     "captions": sum(len(c["object_annotations"]) for c in captions),
                     "mcqs": sum(len(m["mcqs"]) for m in mcqs), "vt_res": len(vt_res)}
    return result
