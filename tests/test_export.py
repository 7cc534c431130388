"""Export of the shapes world in REFER / gRefCOCO / PerBench formats: exact RLE round trip, plain pickles."""
import io
import json
import pickle

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from typer.testing import CliRunner

from pixelsail.cli import app
from pixelsail.data.export import (GREFER_DIR, IMAGE_DIR, PERBENCH_DIR, REFER_DIR, REFER_IMAGE_DIR, export_shapes,
                                   mask_to_rle)
from pixelsail.data.shapes import SHAPES, generate_scene
from refer_toolkit import ToolkitStyleReader
from test_shapes import Oracle

SPLITS = {"val": 6, "test": 3}


class _PlainOnly(pickle.Unpickler):
    def find_class(self, module, name):
        raise AssertionError(f"pickle names {module}.{name}: refs must be plain data")


def _decode(rle):
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes_export")
    result = export_shapes(out, SPLITS, seed=0, image_size=128)
    scenes = {}
    for split, n in SPLITS.items():
        for i in range(n):
            scene = generate_scene(split, i, 0, 128)
            scenes[f"{scene.image_id}.png"] = scene
    return out, result, scenes


def test_instances_rle_decodes_to_the_generated_masks(exported):
    out, result, scenes = exported
    inst = json.loads((out / REFER_DIR / "instances.json").read_text())
    assert inst == json.loads((out / GREFER_DIR / "instances.json").read_text())
    assert [c["name"] for c in inst["categories"]] == list(SHAPES)
    images = {im["id"]: im for im in inst["images"]}
    assert len(images) == result.counts["images"] == 9
    seen = {name: [] for name in scenes}
    for ann in inst["annotations"]:
        im = images[ann["image_id"]]
        scene = scenes[im["file_name"]]
        (rle,) = ann["segmentation"]          # the toolkit's form: a list of RLEs
        mask = _decode(rle)
        owners = [o for o in scene.visible_objects if np.array_equal(o.mask, mask)]
        assert len(owners) == 1
        o = owners[0]
        seen[im["file_name"]].append(o.index)
        assert ann["area"] == o.area == mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode()})
        ys, xs = np.nonzero(mask)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert inst["categories"][ann["category_id"] - 1]["name"] == o.shape and ann["iscrowd"] == 0
    for name, scene in scenes.items():
        assert sorted(seen[name]) == [o.index for o in scene.visible_objects]
        for folder in (IMAGE_DIR, REFER_IMAGE_DIR, PERBENCH_DIR):
            assert np.array_equal(np.asarray(Image.open(out / folder / name).convert("RGB")), scene.image)


def test_refs_pickle_is_plain_and_sentences_denote_their_annotation(exported):
    out, _, scenes = exported
    raw = (out / REFER_DIR / "refs(unc).p").read_bytes()
    refs = _PlainOnly(io.BytesIO(raw)).load()
    inst = json.loads((out / REFER_DIR / "instances.json").read_text())
    anns = {a["id"]: a for a in inst["annotations"]}
    images = {im["id"]: im for im in inst["images"]}
    assert {r["split"] for r in refs} == {"val", "test"}
    assert len({r["ref_id"] for r in refs}) == len(refs)
    assert len({s["sent_id"] for r in refs for s in r["sentences"]}) == sum(len(r["sentences"]) for r in refs)
    for r in refs:
        assert set(r) == {"ref_id", "ann_id", "image_id", "split", "sentences", "sent_ids", "category_id", "file_name"}
        assert r["sent_ids"] == [s["sent_id"] for s in r["sentences"]]
        assert r["file_name"] == images[r["image_id"]]["file_name"]
        oracle = Oracle(scenes[r["file_name"]])
        target = oracle.mask_owner(_decode(anns[r["ann_id"]]["segmentation"][0]))
        for s in r["sentences"]:
            assert s["tokens"] == s["sent"].split() and s["raw"] == s["sent"]
            assert oracle.expression_targets(s["sent"]) == [target]


def test_grefs_list_targets_in_reading_order_and_mark_no_target(exported):
    out, result, scenes = exported
    grefs = json.loads((out / GREFER_DIR / "grefs(unc).json").read_text())
    inst = json.loads((out / GREFER_DIR / "instances.json").read_text())
    anns = {a["id"]: a for a in inst["annotations"]}
    assert result.counts["no_target_grefs"] == 9
    assert any(len(g["ann_id"]) >= 2 for g in grefs)
    for g in grefs:
        oracle = Oracle(scenes[g["file_name"]])
        want = oracle.reading_order(oracle.expression_targets(g["sentences"][0]["sent"]))
        if g["no_target"]:
            assert g["ann_id"] == [-1] and want == []
        else:
            assert [oracle.mask_owner(_decode(anns[a]["segmentation"][0])) for a in g["ann_id"]] == want


def test_perbench_files(exported):
    out, result, scenes = exported
    captions = json.loads((out / "perbench" / "caption.json").read_text())
    assert len(captions) == 9
    for rec in captions:
        scene = scenes[rec["image_name"]]
        assert len(rec["object_annotations"]) == len(scene.visible_objects)
        for obj, ann in zip(scene.visible_objects, rec["object_annotations"]):
            assert np.array_equal(_decode(ann["segmentation"]), obj.mask)
            assert ann["caption"].startswith(f"a {obj.size} {obj.color} {obj.shape} in the ")
    mcqs = json.loads((out / "perbench" / "mcq.json").read_text())
    assert sum(len(r["mcqs"]) for r in mcqs) == result.counts["mcqs"] == 18
    for rec in mcqs:
        scene = scenes[rec["image_name"]]
        for q in rec["mcqs"]:
            assert q["answer"] in ("(A)", "(B)", "(C)", "(D)") and q["answer"] in q["question"]
            for tag, rle in q["object"].items():
                assert tag in q["question"]
                assert np.array_equal(_decode(rle), scene.objects[int(tag[4:-1])].mask)
    vt = json.loads((out / "perbench" / "vt_res.json").read_text())
    assert len(vt) == result.counts["vt_res"] >= 1
    for rec in vt:
        scene = scenes[rec["image_name"]]
        (q_tag,) = [t for t in rec["segmentations"] if t in rec["question"]]
        (a_tag,) = [t for t in rec["segmentations"] if t in rec["answer"]]
        anchor, target = (scene.objects[int(t[4:-1])] for t in (q_tag, a_tag))
        attr = "color" if "colour" in rec["question"] else "shape"
        assert getattr(anchor, attr) == getattr(target, attr) and anchor is not target
        assert np.array_equal(_decode(rec["segmentations"][a_tag]), target.mask)


def test_mask_to_rle_round_trip_and_error():
    m = np.zeros((5, 7), dtype=bool)
    m[1:3, 2:6] = True
    m[4, 0] = True
    rle = mask_to_rle(m)
    assert isinstance(rle["counts"], str) and rle["size"] == [5, 7]
    assert np.array_equal(_decode(json.loads(json.dumps(rle))), m)
    with pytest.raises(ValueError, match="must be"):
        mask_to_rle(np.zeros((2, 2, 2), dtype=bool))


def test_export_rejects_empty_split(tmp_path):
    with pytest.raises(ValueError, match="split 'val': need at least one scene"):
        export_shapes(tmp_path, {"val": 0})


def test_cli_preview_and_export(tmp_path):
    runner = CliRunner()
    png = tmp_path / "grid.png"
    res = runner.invoke(app, ["shapes", "preview", "--split", "val", "--n", "3", "-o", str(png)])
    assert res.exit_code == 0, res.output
    sheet = Image.open(png)
    assert sheet.width > 3 * 128 and sheet.height > 256
    res = runner.invoke(app, ["shapes", "export", "--split", "val", "--n", "2", "--out", str(tmp_path / "ex")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "ex" / REFER_DIR / "refs(unc).p").is_file() and "images: 2" in res.output
    res = runner.invoke(app, ["shapes", "preview", "--task", "vqa", "-o", str(png)])
    assert res.exit_code != 0 and "unknown shapes task" in res.output


def test_the_project_readers_load_the_export(exported):
    """The REFER/gRefCOCO and PerBench readers turn the exported files back into the generator's masks."""
    from pixelsail.data.perbench import PerBench
    from pixelsail.data.refer import ReferEvalDataset

    out, result, scenes = exported
    refer = ReferEvalDataset(out / REFER_DIR, split="test")
    assert len(refer) == sum(1 for r in _PlainOnly(io.BytesIO((out / REFER_DIR / "refs(unc).p").read_bytes())).load()
                             if r["split"] == "test" for _ in r["sentences"])
    for i in range(len(refer)):
        s = refer[i]
        oracle = Oracle(next(sc for sc in scenes.values() if np.array_equal(sc.image, s.image)))
        assert [oracle.mask_owner(m) for m in s.masks] == oracle.expression_targets(s.turns[0][0][len("Please segment "):-1])
    gref = ReferEvalDataset(out / GREFER_DIR, split="val")
    assert sum(not gref[i].masks for i in range(len(gref))) == 6
    bench = PerBench(out / PERBENCH_DIR)
    assert len(bench) == result.counts["captions"] + result.counts["mcqs"] + result.counts["vt_res"]
    for i in range(len(bench)):
        bench[i].validate()


def test_the_refer_toolkit_loads_the_export_unchanged(exported):
    """REFER / G_REFER's access pattern (data_root + dataset name) finds every file and decodes every mask."""
    out, _, scenes = exported
    assert (REFER_DIR, GREFER_DIR) == ("refcoco", "grefcoco")
    refer, grefer = ToolkitStyleReader(out, "refcoco"), ToolkitStyleReader(out, "grefcoco")
    assert refer.ref_ids("test") and grefer.ref_ids("val")
    for reader in (refer, grefer):
        for ref in reader.refs.values():
            scene = scenes[reader.imgs[ref["image_id"]]["file_name"]]
            assert np.array_equal(np.asarray(Image.open(reader.image_path(ref)).convert("RGB")), scene.image)
            oracle = Oracle(scene)
            want = union_of(scene, oracle.expression_targets(ref["sentences"][0]["sent"]))
            assert np.array_equal(reader.ref_mask(ref).astype(bool), want)


def union_of(scene, indices: list[int]) -> np.ndarray:
    out = np.zeros(scene.image.shape[:2], dtype=bool)
    for i in indices:
        out |= scene.objects[i].mask
    return out


def test_the_toolkit_fails_on_a_bare_rle_segmentation_and_on_other_dataset_names(exported):
    out, _, _ = exported
    reader = ToolkitStyleReader(out, "refcoco")
    ann = dict(next(iter(reader.anns.values())))
    ann["segmentation"] = ann["segmentation"][0]       # what the exports wrote before: a bare RLE object
    with pytest.raises(KeyError):
        reader.ann_mask(ann)
    with pytest.raises(KeyError, match="refshapes"):
        ToolkitStyleReader(out, "refshapes")


def test_export_refuses_to_overwrite_real_data(tmp_path):
    real = tmp_path / REFER_DIR / "instances.json"
    real.parent.mkdir()
    real.write_text(json.dumps({"info": {"description": "This is stable 1.0 version of the 2014 MS COCO dataset."},
                                "images": [], "annotations": []}))
    with pytest.raises(FileExistsError, match="not a shapes-world export"):
        export_shapes(tmp_path, {"val": 1})
    assert "MS COCO" in real.read_text()
    export_shapes(tmp_path / "fresh", {"val": 1})
    export_shapes(tmp_path / "fresh", {"val": 1})     # re-exporting over an export is fine
