"""Real-data readers on tiny fixtures written in each published format (tests/realdata_fixtures.py)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from realdata_fixtures import (H, W, mask_a, mask_b, polygon_a, rle, write_all, write_coco_panoptic,
                               write_gcg, write_llava, write_muse, write_osprey, write_recipe_tree)
from typer.testing import CliRunner

from pixelsail.cli import app
from pixelsail.config import DataConfig, DatasetSpec, PixelSailConfig, RunConfig, TrainConfig, load_yaml
from pixelsail.data.annotations import FormatError, decode_segmentation, seg_answer
from pixelsail.data.coco_panoptic import category_phrase
from pixelsail.data.mixture import Mixture
from pixelsail.data.gcg import GCG_QUESTION, grounded_caption
from pixelsail.data.region import regions_to_vp
from pixelsail.data.registry import available_datasets, build_dataset
from pixelsail.tokens import SEG, vp_indices


def vp_of(text: str) -> int:
    (k,) = vp_indices(text)
    return k


def test_every_format_is_registered_and_yields_valid_deterministic_samples(tmp_path):
    specs = write_all(tmp_path)
    assert set(specs) <= set(available_datasets())
    for name, args in specs.items():
        ds = build_dataset(name, **args)
        assert len(ds) >= 1, name
        for i in range(len(ds)):
            s = ds[i]
            s.validate()
            again = ds[i]
            assert again.turns == s.turns and len(again.masks) == len(s.masks), name
            assert all((a == b).all() for a, b in zip(again.masks, s.masks)), name
        with pytest.raises(IndexError):
            ds[len(ds)]


def test_seg_answer_and_category_names():
    assert seg_answer(0) == "No target."
    assert seg_answer(1) == "Sure, [SEG]."
    assert seg_answer(3) == "Sure, [SEG], [SEG] and [SEG]."
    assert category_phrase("wall-other-merged") == "wall"
    assert category_phrase("tree-merged") == "tree"
    assert category_phrase("playingfield") == "playingfield"
    assert category_phrase("dining table") == "dining table"


def test_decode_segmentation_polygon_and_rle_agree_and_errors_are_classified():
    assert (decode_segmentation(polygon_a(), H, W, "x") == mask_a()).all()
    assert (decode_segmentation(rle(mask_b()), H, W, "x") == mask_b()).all()
    uncompressed = {"size": [H, W], "counts": [H * 8, H * 2, H * (W - 10)]}   # columns 8 and 9 set
    expected = np.zeros((H, W), bool)
    expected[:, 8:10] = True
    assert (decode_segmentation(uncompressed, H, W, "x") == expected).all()
    cases = {"mask_size": rle(np.zeros((10, 10), bool)), "mask_decode": [[1, 2, 3]],
             "polygon_bounds": [[0, 0, W + 5, 0, W + 5, 10]]}
    for kind, seg in cases.items():
        with pytest.raises(FormatError, match="record 7") as e:
            decode_segmentation(seg, H, W, "file.json: record 7", check_bounds=True)
        assert e.value.kind == kind


def test_coco_panoptic_semantic_masks_and_questions(tmp_path):
    write_coco_panoptic(tmp_path)
    ds = build_dataset("coco_panoptic", root=str(tmp_path), split="val2017", max_objects=None)
    s = ds[0]
    by_name = {q: m for (q, a), m in zip(s.turns, s.masks)}
    assert set(by_name) == {"Please segment box.", "Please segment ball.", "Please segment wall."}
    assert all(a == "Sure, [SEG]." for _, a in s.turns) and s.task == "res"
    assert (by_name["Please segment box."] == mask_a()).all()
    assert (by_name["Please segment ball."] == mask_b()).all()
    assert (by_name["Please segment wall."] == ~(mask_a() | mask_b())).all()
    assert len(build_dataset("coco_panoptic", root=str(tmp_path), split="val2017", max_objects=2)[0].turns) == 2


def test_coco_panoptic_instance_mode_gives_one_seg_per_instance_top_to_bottom(tmp_path):
    ann = write_coco_panoptic(tmp_path)
    data = json.loads(ann.read_text())
    data["categories"][1]["name"] = "box"                                  # ball -> a second 'box' category id 2
    for seg in data["annotations"][0]["segments_info"]:
        if seg["id"] == 300:
            seg["category_id"] = 1                                          # two instances of category 1
    ann.write_text(json.dumps(data))
    ds = build_dataset("coco_panoptic", root=str(tmp_path), split="val2017", mode="instance", max_objects=None)
    s = ds[0]
    turn = s.turns.index(("Please segment box.", "Sure, [SEG] and [SEG]."))
    first = sum(a.count(SEG) for _, a in s.turns[:turn])
    assert (s.masks[first] == mask_a()).all() and (s.masks[first + 1] == mask_b()).all()   # A is above B
    assert s.task == "gres"


def test_coco_panoptic_missing_png_folder_and_bad_category_are_named(tmp_path):
    with pytest.raises(FormatError, match="panoptic_val2017"):
        build_dataset("coco_panoptic", root=str(tmp_path), split="val2017")
    ann = write_coco_panoptic(tmp_path)
    data = json.loads(ann.read_text())
    data["annotations"][0]["segments_info"][0]["category_id"] = 99
    ann.write_text(json.dumps(data))
    with pytest.raises(FormatError, match=r"panoptic_val2017\.json: annotation 0"):
        build_dataset("coco_panoptic", root=str(tmp_path), split="val2017")


def test_grounded_caption_markup_keeps_text_and_drops_overlaps():
    text, kept = grounded_caption("a dog and a cat", [(10, 15), (0, 5), (2, 8)])
    assert text == "<p> a dog </p> [SEG] and <p> a cat </p> [SEG]"
    assert kept == [1, 0]


def test_gcg_three_published_shapes(tmp_path):
    files = write_gcg(tmp_path)
    images = str(tmp_path / "images")
    s = build_dataset("gcg", annotation_file=str(files["grandf"]), image_dir=images)[0]
    assert s.turns == [(GCG_QUESTION, "<p> A red box </p> [SEG] sits above <p> a blue ball </p> [SEG].")]
    assert s.task == "gcg" and (s.masks[0] == mask_a()).all() and (s.masks[1] == mask_b()).all()
    s = build_dataset("gcg", annotation_file=str(files["refcocog"]), image_dir=images)[0]
    assert s.turns[0][1] == "<p> A red box </p> [SEG] sits above a blue ball."      # 'a green cat' is not in it
    assert len(s.masks) == 1 and (s.masks[0] == mask_a()).all()
    s = build_dataset("gcg", annotation_file=str(files["flickr"]), image_dir=images)[0]
    assert s.turns[0][1] == "A red box sits above <p> a blue ball </p> [SEG]."
    assert (s.masks[0] == mask_b()).all()


def test_gcg_malformed_records_name_file_and_record(tmp_path):
    files = write_gcg(tmp_path)
    data = json.loads(files["grandf"].read_text())
    data[0]["groundings"]["A red box"]["token_positives"] = [0, 400]
    files["grandf"].write_text(json.dumps(data))
    with pytest.raises(FormatError, match=r"GranDf_HA_GCG_train\.json: record 0.*outside the caption"):
        build_dataset("gcg", annotation_file=str(files["grandf"]), image_dir=str(tmp_path / "images"))
    del data[0]["caption"]
    files["grandf"].write_text(json.dumps(data))
    with pytest.raises(FormatError, match=r"record 0: missing field 'caption'"):
        build_dataset("gcg", annotation_file=str(files["grandf"]), image_dir=str(tmp_path / "images"))
    with pytest.raises(FormatError, match="GCG annotation file not found: .*nope.json"):
        build_dataset("gcg", annotation_file=str(tmp_path / "nope.json"), image_dir=str(tmp_path))


def test_regions_to_vp_handles_every_osprey_reference_style():
    assert regions_to_vp("<image>\nIs <region2> left of region1?", [4, 9], "w") == "Is <vp_9> left of <vp_4>?"
    assert regions_to_vp("There are: region1<mask><pos>, region2<mask><pos>.", [4, 9], "w") == \
        "There are: <vp_4>, <vp_9>."
    assert regions_to_vp("<mask><pos> and <mask><pos>", [4, 9], "w") == "<vp_4> and <vp_9>"
    with pytest.raises(FormatError, match="record 3: text mentions region3 but the record has 2 regions"):
        regions_to_vp("what is region3?", [4, 9], "f.json: record 3")


def test_osprey_conversation_maps_each_region_to_its_prompt(tmp_path):
    files = write_osprey(tmp_path)
    ds = build_dataset("osprey", annotation_file=str(files["conversation"]), image_dir=str(tmp_path / "images"),
                       absent_prob=0.0)
    seen_ids = set()
    for seed in range(4):
        ds.seed = seed
        s = ds[0]
        assert s.task == "vp_qa" and len(s.turns) == 2 and not s.masks
        k1 = vp_of(s.turns[0][0])                                     # "What colour is <region1>?"
        k2 = vp_of(s.turns[0][1])                                     # "... unlike region2."
        assert vp_of(s.turns[1][0]) == k2                             # "And region2<mask><pos>?"
        assert (s.prompts[k1] == mask_a()).all() and (s.prompts[k2] == mask_b()).all()
        assert "<mask>" not in s.turns[1][0] and "region" not in " ".join(q + a for q, a in s.turns)
        seen_ids.add((k1, k2))
    assert len(seen_ids) > 1                                          # ids are drawn per sample


def test_osprey_description_and_absent_prompt(tmp_path):
    files = write_osprey(tmp_path)
    ds = build_dataset("osprey", annotation_file=str(files["description"]), image_dir=str(tmp_path / "images"),
                       absent_prob=1.0)
    s = ds[0]
    assert s.task == "region_caption"
    answers = {vp_of(q): a for q, a in s.turns}
    absent = [k for k in answers if k not in s.prompts]
    assert len(absent) == 1 and answers[absent[0]] == f"<vp_{absent[0]}> is not in the image."
    caption_of = {k: answers[k] for k in s.prompts}
    for k, m in s.prompts.items():
        expected = "A red box with sharp corners." if (m == mask_a()).all() else "A blue ball."
        assert caption_of[k] == f"<vp_{k}>: {expected}"


def test_osprey_size_mismatch_and_missing_image_are_named(tmp_path):
    files = write_osprey(tmp_path)
    data = json.loads(files["conversation"].read_text())
    data[0]["height"] = 99
    files["conversation"].write_text(json.dumps(data))
    ds = build_dataset("osprey", annotation_file=str(files["conversation"]), image_dir=str(tmp_path / "images"))
    with pytest.raises(FormatError, match=r"record 11: record says height x width \(99, 64\)"):
        ds[0]
    ds = build_dataset("osprey", annotation_file=str(files["description"]), image_dir=str(tmp_path / "elsewhere"))
    with pytest.raises(FormatError, match=r"record 12: image file not found: .*elsewhere"):
        ds[0]


def test_pixel2cap_samples_up_to_max_objects_regions(tmp_path):
    files = write_osprey(tmp_path)
    ds = build_dataset("pixel2cap", annotation_file=str(files["pixel2cap"]), image_dir=str(tmp_path / "images"),
                       max_objects=2, absent_prob=0.0)
    s = ds[0]
    assert len(s.turns) == 2 and len(s.prompts) == 2 and s.task == "region_caption"
    for q, a in s.turns:
        k = vp_of(q)
        assert q == f"Please describe <vp_{k}> in detail."
        expected = {"a red box", "the same red box"} if (s.prompts[k] == mask_a()).all() else {"a blue ball"}
        assert re.fullmatch(rf"<vp_{k}>: (.*)", a).group(1) in expected


def test_llava_strips_image_tag_and_marks_text_only(tmp_path):
    ds = build_dataset("llava", annotation_file=str(write_llava(tmp_path)), image_dir=str(tmp_path))
    with_image, text_only = ds[0], ds[1]
    assert with_image.turns == [("What is in the picture?", "Two shapes."), ("Which is red?", "The box.")]
    assert with_image.image.shape == (H, W, 3) and not with_image.meta.get("text_only")
    assert text_only.meta["text_only"] is True and text_only.turns == [("Say hi.", "Hi.")]
    assert build_dataset("llava", annotation_file=str(write_llava(tmp_path)), image_dir=str(tmp_path),
                         max_turns=1)[0].turns == [("What is in the picture?", "Two shapes.")]


def test_llava_bad_roles_are_named(tmp_path):
    path = write_llava(tmp_path)
    data = json.loads(path.read_text())
    data[1]["conversations"][1]["from"] = "human"
    path.write_text(json.dumps(data))
    with pytest.raises(FormatError, match=r"record 'b': message 1 must be \{'from': 'gpt'"):
        build_dataset("llava", annotation_file=str(path), image_dir=str(tmp_path))


def test_muse_placeholders_take_masks_in_order_and_images_are_searched(tmp_path):
    path = write_muse(tmp_path)
    dirs = [str(tmp_path / "val2017"), str(tmp_path / "train2017")]
    s = build_dataset("muse", annotation_file=str(path), image_dirs=dirs)[0]
    assert s.turns[0][1] == "You could kick the ball [SEG] and stack things on the box [SEG]."
    assert (s.masks[0] == mask_b()).all() and (s.masks[1] == mask_a()).all() and s.task == "gres"
    with pytest.raises(FormatError, match=r"record 0: image 'm1.png' not found; tried .*val2017"):
        build_dataset("muse", annotation_file=str(path), image_dirs=dirs[:1])[0]
    data = json.loads(path.read_text())
    data[0]["ann_list"].pop()
    path.write_text(json.dumps(data))
    with pytest.raises(FormatError, match="record 0: answer has 2 .SEG. placeholders but the record has 1 masks"):
        build_dataset("muse", annotation_file=str(path), image_dirs=dirs)


def test_broken_json_file_is_named(tmp_path):
    bad = tmp_path / "MUSE_train.json"
    bad.write_text('[{"file_name": "x.png",')
    with pytest.raises(FormatError, match=r"MUSE_train\.json: not valid JSON \(line 1"):
        build_dataset("muse", annotation_file=str(bad), image_dirs=[str(tmp_path)])


def test_coco_regions_classify_each_instance_by_category(tmp_path):
    from realdata_fixtures import write_images
    write_images(tmp_path / "train2017", ["c1.png"])
    ann = tmp_path / "instances_train2017.json"
    ann.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "c1.png", "height": H, "width": W}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "segmentation": polygon_a(), "iscrowd": 0},
                        {"id": 2, "image_id": 1, "category_id": 5, "segmentation": rle(mask_b()), "iscrowd": 0},
                        {"id": 3, "image_id": 1, "category_id": 5, "segmentation": rle(mask_b()), "iscrowd": 1}],
        "categories": [{"id": 3, "name": "suitcase"}, {"id": 5, "name": "sports ball"}]}))
    s = build_dataset("coco_regions", annotation_file=str(ann), image_dir=str(tmp_path / "train2017"),
                      absent_prob=0.0)[0]
    assert len(s.turns) == 2 and s.task == "region_caption"
    for q, a in s.turns:
        k = vp_of(q)
        assert q == f"What is the category of <vp_{k}>?"
        assert a == (f"<vp_{k}>: suitcase." if (s.prompts[k] == mask_a()).all() else f"<vp_{k}>: sports ball.")


CONFIGS = Path(__file__).resolve().parent.parent / "configs"
RECIPES = ("pixelsail-0.5b-cotrain", "pixelsail-3b-cotrain", "finetune-refcoco", "finetune-grefcoco")


TEACHER_CACHE = "data/teacher_cache/cotrain"


def inner_specs(run: RunConfig) -> list[DatasetSpec]:
    """The datasets of a mixture, looking inside 'distilled' wrappers."""
    return [DatasetSpec(s.args["dataset"]["name"], s.weight, s.args["dataset"].get("args", {}))
            if s.name == "distilled" else s for s in run.data.datasets]


def cache_command(recipe: str) -> list[str]:
    """The `pixelsail distill-cache ...` command of a recipe's header comment, as arguments."""
    import shlex

    header = "".join(ln[1:] for ln in (CONFIGS / f"{recipe}.yaml").read_text().splitlines(keepends=True)
                     if ln.startswith("#"))
    match = re.search(r"pixelsail (distill-cache (?:[^\\\n]|\\\n)*)", header)
    assert match, f"{recipe}: no distill-cache command in the header"
    return shlex.split(match.group(1).replace("\\\n", " "))


def test_recipe_configs_carry_the_papers_numbers():
    runs = {name: load_yaml(CONFIGS / f"{name}.yaml", RunConfig) for name in RECIPES}
    for name, run in runs.items():
        t = run.train
        assert (t.lr, t.betas, t.weight_decay, t.warmup_ratio, t.grad_clip, t.precision) == \
            (4e-5, (0.9, 0.999), 0.05, 0.05, 1.0, "bf16"), name
        assert run.data.max_length == 8192 and t.length_grouped and run.model.patch_size == 16, name
        assert run.model.distill.enabled == ("cotrain" in name), name
    small, big = runs["pixelsail-0.5b-cotrain"].model, runs["pixelsail-3b-cotrain"].model
    assert (small.hidden_size, small.num_hidden_layers, small.num_attention_heads) == (896, 24, 14)
    assert (big.hidden_size, big.num_hidden_layers, big.num_attention_heads) == (2048, 36, 16)
    assert runs["pixelsail-0.5b-cotrain"].data.datasets == runs["pixelsail-3b-cotrain"].data.datasets
    weights = {s.name: s.weight for s in inner_specs(runs["pixelsail-0.5b-cotrain"])}
    assert weights["refcoco"] == weights["refcoco+"] == weights["refcocog"] == 4 and weights["grefcoco"] == 3
    assert {"coco_panoptic", "gcg", "muse", "osprey", "pixel2cap", "coco_regions", "jsonl", "llava"} <= set(weights)


@pytest.mark.parametrize("recipe", ["pixelsail-0.5b-cotrain", "pixelsail-3b-cotrain"])
def test_cotrain_recipes_distill_both_experts_from_the_cache_their_header_builds(recipe):
    run = load_yaml(CONFIGS / f"{recipe}.yaml", RunConfig)
    distill = run.model.distill
    assert distill.enabled and distill.weight == 0.5
    assert distill.teachers == {"pixel": {"channels": 256, "source": "upsampled"},
                                "image": {"channels": 256, "source": "vision_tokens"}}
    # every dataset carries teacher features, read from one cache ...
    assert {s.name for s in run.data.datasets} == {"distilled"}
    assert {s.args["cache"] for s in run.data.datasets} == {TEACHER_CACHE}
    # ... which the header's command builds from this very recipe, with a Mask2Former and a SAM2 teacher
    args = cache_command(recipe)
    options = dict(zip(args[1::2], args[2::2]))
    assert options["--data"] == f"configs/{recipe}.yaml" and options["--out"] == TEACHER_CACHE
    assert [Path(p).name for p in options["--teacher"].split("+")] == ["mask2former-swin-large-coco-panoptic",
                                                                       "sam2.1-hiera-large"]


def test_dry_run_of_the_05b_recipe_walks_the_whole_mixture(tmp_path, monkeypatch):
    write_recipe_tree(tmp_path / "data")
    monkeypatch.chdir(tmp_path)                       # the recipes name paths under ./data
    (tmp_path / "configs").symlink_to(CONFIGS)
    # the header's teacher-feature cache step, with the shipped shapes expert standing in for the real teachers
    args = cache_command("pixelsail-0.5b-cotrain")
    args[args.index("--teacher") + 1], args[args.index("--device") + 1] = "shapes", "cpu"
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output[result.output.index("{"):])["images"] > 0
    result = CliRunner().invoke(app, ["data", "dry-run", str(CONFIGS / "pixelsail-0.5b-cotrain.yaml")])
    assert result.exit_code == 0, result.output
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.split("│")[1:-1]]
                                          for line in result.output.splitlines() if line.count("│") > 8)}
    assert len([r for r in rows if "#" in r]) == 16
    assert rows["distilled#0"][1:4] == ["4", "10", "40"]        # refcoco: 10 refs exported, repeated 4x per epoch
    assert rows["distilled#3"][1] == "3" and rows["distilled#10"][8] == "region_caption 1"
    # no failures: every sample found its image's teacher features in the cache
    assert all(cells[9] == "0" for name, cells in rows.items() if "#" in name)
    assert "0 failed" in result.output and "one epoch = " in result.output
    for name in ("finetune-refcoco", "finetune-grefcoco"):
        result = CliRunner().invoke(app, ["data", "dry-run", str(CONFIGS / f"{name}.yaml")])
        assert result.exit_code == 0 and "0 failed" in result.output, result.output


TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, intermediate_size=128,
            mask_dim=32, mask_num_points=256)


def _train_two_steps(specs: list[DatasetSpec], out, batch_size: int) -> list[dict]:
    from pixelsail.train import train

    run = RunConfig(model=PixelSailConfig(**TINY), data=DataConfig(datasets=specs),
                    train=TrainConfig(output_dir=str(out), max_steps=2, batch_size=batch_size, lr=1e-3,
                                      precision="fp32", save_every=0, log_every=1))
    assert train(run, resume=False).steps == 2
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2]
    for x in lines:
        assert np.isfinite(x["loss"]) and x["loss/mask_bce"] > 0 and x["loss/lm"] > 0
    return lines


@pytest.mark.slow
def test_a_tiny_model_trains_on_a_mixture_of_every_format(tmp_path):
    specs = [DatasetSpec(n, 1.0, a) for n, a in write_all(tmp_path / "data").items()]
    assert Mixture.from_config(DataConfig(datasets=specs)).epoch_size() == 9
    _train_two_steps(specs, tmp_path / "run", batch_size=5)    # 2 x 5 >= 9: the whole first epoch, every format


@pytest.mark.slow
def test_a_tiny_model_trains_on_images_of_different_sizes_with_refer_data(tmp_path):
    from pixelsail.data.export import GREFER_DIR, IMAGE_DIR, REFER_DIR, export_shapes

    specs = [DatasetSpec(n, 1.0, a) for n, a in write_all(tmp_path / "data").items()]       # 48x64 images
    export_shapes(tmp_path / "refer", {"train": 1}, image_size=64)                            # 64x64 images
    images = str(tmp_path / "refer" / IMAGE_DIR)
    for name, folder in (("refcoco", REFER_DIR), ("grefcoco", GREFER_DIR)):
        args = {"root": str(tmp_path / "refer" / folder), "split": "train", "image_dir": images}
        specs.append(DatasetSpec(name, 1.0 / len(build_dataset(name, **args)), args))   # one sample per epoch
    assert Mixture.from_config(DataConfig(datasets=specs)).epoch_size() == 11
    _train_two_steps(specs, tmp_path / "run", batch_size=6)


def test_datasets_of_one_mixture_draw_independently(tmp_path):
    files = write_osprey(tmp_path)
    copy = tmp_path / "osprey_short_form.json"
    copy.write_text(files["conversation"].read_text())
    draws = []
    for path in (files["conversation"], copy):
        ds = build_dataset("osprey", annotation_file=str(path), image_dir=str(tmp_path / "images"), absent_prob=0.0)
        ids = []
        for seed in range(6):
            ds.seed = seed
            ids.append(sorted(ds[0].prompts))
        draws.append(ids)
    assert draws[0] != draws[1]          # same records, other file: other <vp_k> ids
