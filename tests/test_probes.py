"""The diagnostic probes of benchmarks/: region attributes, the referring breakdown, the vision probe, the [SEG]
state report and the shapes breakdown, each against hand-computed cases."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model_utils import box_mask, tiny_model


def test_region_attributes_counts_the_first_phrase_and_skips_absent_prompts():
    from benchmarks.region_attributes import first_phrase, first_place, score

    assert first_phrase("<vp_3>: a large red circle in the top left, partly covered by a small blue star.") == (
        "large", "red", "circle")
    records = [
        {"task": "region_caption", "answer": "<vp_1>: a small red triangle in the middle left.",
         "text": "<vp_1>: a small red triangle in the bottom middle."},                      # all three
        {"task": "region_caption", "answer": "<vp_2>: a large blue star in the center.",
         "text": "<vp_2>: a small blue square in the center."},                              # colour only
        {"task": "region_caption", "answer": "<vp_4> is not in the image.", "text": "<vp_4>: a red circle."},
        {"task": "res", "answer": "Sure, [SEG].", "text": "Sure, [SEG]."},
    ]
    got = score(records)
    assert got["records"] == 2 and got["all three"] == 50.0 and got["colour"] == 100.0
    assert got["size"] == 50.0 and got["shape"] == 50.0
    # where: (middle, left) read as (bottom, middle) - wrong row and column; (center) right
    assert first_place("<vp_0>: a small red star in the top right, partly covered") == (0, 2)
    assert first_place("<vp_0>: a small red star.") is None
    assert got["cell"] == got["row"] == got["column"] == 50.0
    records[1]["text"] = "<vp_2>: a large blue star in the middle right."        # row right, column wrong
    got = score(records)
    assert got["cell"] == 0.0 and got["row"] == 50.0 and got["column"] == 0.0
    with pytest.raises(ValueError, match="no region_caption records"):
        score(records[2:])


def test_res_breakdown_groups_expressions_and_scores_objects_by_hand():
    from benchmarks.res_breakdown import expression_group, object_scores

    assert expression_group("the large red star", "attribute") == "size+colour+shape"
    assert expression_group("the star", "attribute") == "shape"
    assert expression_group("the small object", "attribute") == "size"
    assert expression_group("the circle left of the blue star", "relation") == "relation"
    probs = np.zeros((4, 4), dtype=np.float32)
    probs[:2, :2] = 0.4        # object 1 (the target): mean 0.4
    probs[2:, 2:] = [[0.9, 0.1], [0.5, 0.5]]   # object 2: mean 0.5
    masks = {1: box_mask(4, 4, 0, 2, 0, 2), 2: box_mask(4, 4, 2, 4, 2, 4), 3: np.zeros((4, 4), dtype=bool)}
    s = object_scores(probs, masks, target=1)   # object 3 shows no pixel: not a candidate
    assert s == pytest.approx({"ranked_first": 0.0, "p_target": 0.4, "p_other": 0.5, "chance": 0.5})
    assert object_scores(probs, masks, target=2)["ranked_first"] == 1.0


def test_res_breakdown_reads_generated_masks_and_runs_teacher_forced(tmp_path):
    from benchmarks.res_breakdown import generated, table, teacher_forced
    from pixelsail.data.export import mask_to_rle

    gt = box_mask(8, 8, 0, 4, 0, 4)                       # 16 px
    half = box_mask(8, 8, 0, 4, 0, 2)                     # 8 px inside it
    records = [{"task": "res", "gt_masks": [mask_to_rle(gt)], "pred_masks": [mask_to_rle(half)],
                "meta": {"expression": "the red star", "expression_kind": "attribute"}},
               {"task": "res", "gt_masks": [mask_to_rle(gt)], "pred_masks": [],
                "meta": {"expression": "the blue star", "expression_kind": "attribute"}},
               {"task": "gres", "gt_masks": [], "pred_masks": [], "meta": {}}]
    path = tmp_path / "predictions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    gen = generated(path)
    assert gen == {"colour+shape": {"n": 2, "cIoU": pytest.approx(100 * 8 / 32), "empty": 1}}

    tf = teacher_forced(tiny_model(), "test", 6, batch_size=4)
    rows = [r for group in tf.values() for r in group]
    assert 0 < len(rows) <= 6
    for r in rows:
        assert 0.0 <= r["p_target"] <= 1.0 and 0.0 <= r["p_other"] <= 1.0 and 0.0 < r["chance"] <= 1.0
        assert r["ranked_first"] == float(r["p_target"] > r["p_other"])
    assert "| colour+shape |" in table(tf, gen)


def test_vision_probe_labels_pixels_and_reads_out_a_separable_attribute():
    from benchmarks.vision_probe import GROUPS, linear_probe, object_means, pixel_labels, scenes_and_samples

    (sample, scene), = scenes_and_samples("test", 1, start=3)
    labels = pixel_labels(scene)
    assert labels.shape == (3, 128, 128)
    for obj in scene.visible_objects:   # every visible pixel carries its object's classes, the rest is -1
        names = dict(zip((g for g, _ in GROUPS), (obj.color, obj.shape, obj.size)))
        for g, (group, vocabulary) in enumerate(GROUPS):
            assert set(labels[g][torch.from_numpy(obj.mask)].tolist()) == {vocabulary.index(names[group])}
    background = ~np.any(np.stack([o.mask for o in scene.visible_objects]), axis=0)
    assert set(labels[:, torch.from_numpy(background)].flatten().tolist()) == {-1}

    feature = torch.zeros(2, 32, 32)
    feature[0] = torch.arange(32 * 32, dtype=torch.float32).reshape(32, 32)
    means = object_means(feature, scene)
    assert len(means) == len(scene.visible_objects) and all(m.shape == (2,) for m, _ in means)

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (200,), generator=g)
    x = torch.randn(200, 4, generator=g) * 0.1
    x[torch.arange(200), y] += 2.0          # class k lights up dimension k
    pred = linear_probe(x[:150], y[:150], x[150:], 3)
    assert float((pred == y[150:]).float().mean()) > 0.95


def test_vision_probe_places_each_object_in_its_cell_and_reads_tokens_on_the_patch_grid():
    from benchmarks.vision_probe import PLACE_GROUPS, features_of, object_places, scenes_and_samples
    from pixelsail.config import RunConfig, load_yaml
    from pixelsail.model import build_model

    pairs = scenes_and_samples("test", 2, start=3)
    for _, scene in pairs:
        places = object_places(scene)
        assert len(places) == len(scene.visible_objects)
        for obj, (row, col) in zip(scene.visible_objects, places):
            words = obj.position.split()   # "top left", "middle right", "center", "bottom middle"
            if obj.position == "center":
                assert (row, col) == (1, 1)
            else:
                assert PLACE_GROUPS[0][1][row] == words[0] and PLACE_GROUPS[1][1][col] == words[1]
    run = load_yaml(Path(__file__).resolve().parent.parent / "configs" / "shapes-tiny.yaml", RunConfig)
    run.model.distill.enabled = False
    model = build_model(run.model).eval()
    with torch.no_grad():
        tokens = features_of(model, pairs, read="tokens")
        mask = features_of(model, pairs)
    assert tokens.shape == (2, run.model.hidden_size, 8, 8)       # 128 px / patch 16
    assert mask.shape == (2, run.model.mask_dim, 32, 32)            # stride 4


@pytest.mark.parametrize("objective", ["labels", "distill"])
def test_vision_probe_trains_the_visual_path_and_reports_object_accuracy(tmp_path, objective):
    from benchmarks.vision_probe import main

    main(["train", "--objective", objective, "--samples", "8", "--batch", "4", "--eval-every", "8",
          "--eval-scenes", "2",
          "--config", str(Path(__file__).resolve().parent.parent / "configs" / "shapes-quick.yaml"),
          "--out", str(tmp_path)])
    run = json.loads((tmp_path / "runs.jsonl").read_text())
    assert run["objective"] == objective
    (samples, accuracy), = run["curve"]
    assert samples == 8 and set(accuracy) == {"colour", "shape", "size"}
    assert all(0.0 <= v <= 100.0 for v in accuracy.values())


def test_seg_state_report_measures_spread_and_a_collapsed_state_reads_zero(monkeypatch):
    import benchmarks.seg_state as seg_state

    model = tiny_model()
    r = seg_state.seg_state_report(model, "gcg", count=4, batch_size=2)
    assert r["n"] >= 4 and r["spread"] > 0.01 and 0.0 <= r["next_accuracy"] <= 1.0
    assert set(r["words"]) <= {"colour", "shape", "size"} and r["words"]

    real_hidden = seg_state._hidden

    def constant_at_seg(m, batch):           # every [SEG] final state replaced by one vector
        hidden, features, starts = real_hidden(m, batch)
        hidden = hidden.clone()
        hidden[batch["input_ids"] == m.processor.ids["seg"]] = 1.0
        return hidden, features, starts

    monkeypatch.setattr(seg_state, "_hidden", constant_at_seg)
    collapsed = seg_state.seg_state_report(model, "gcg", count=4, batch_size=2)
    assert collapsed["spread"] == pytest.approx(0.0, abs=1e-6) and len(dict(collapsed["next_top"])) == 1


def _record(sample, pred_masks, text):
    from pixelsail.data.export import mask_to_rle

    h, w = sample.masks[0].shape if sample.masks else (128, 128)
    return {"index": 0, "task": sample.task, "image_hw": [h, w], "text": text, "meta": dict(sample.meta),
            "pred_masks": [mask_to_rle(m) for m in pred_masks], "gt_masks": [mask_to_rle(m) for m in sample.masks]}


def test_shapes_breakdown_splits_mcq_letters_res_kinds_and_visual_text_pixels():
    from benchmarks.res_breakdown import expression_group, generated_records
    from benchmarks.shapes_breakdown import mcq_by_kind, vt_pixel_split
    from pixelsail.data.shapes import generate_scene, make_sample

    mcq = make_sample("test", 0, "vp_mcq")
    meta, kind = mcq.meta, mcq.meta["question_kind"]
    wrong = next(f"({x})" for x in "ABCD" if f"({x})" != meta["answer"])
    records = [_record(mcq, [], f"It is {meta['correct']} {meta['answer']}."),     # both right
               _record(mcq, [], f"It is {meta['correct']} {wrong}."),              # word right, letter wrong
               _record(mcq, [], "It is nothing.")]                                 # neither
    got = mcq_by_kind(records)
    assert got["all"]["samples"] == got[kind]["samples"] == 3
    assert got["all"]["letter"] == pytest.approx(1 / 3) and got["all"]["word"] == pytest.approx(2 / 3)
    assert got["all"]["letter given word"] == pytest.approx(0.5)

    res = make_sample("test", 1, "res")
    half = res.masks[0].copy()
    half[: half.shape[0] // 2] = False                     # the target's lower part only
    exp = generated_records([_record(res, [half], "Sure, [SEG].")])
    group = expression_group(res.meta["expression"], res.meta["expression_kind"])
    assert exp[group]["cIoU"] == pytest.approx(100.0 * half.sum() / res.masks[0].sum())

    vt = make_sample("test", 2, "vt_res")
    scene = generate_scene("test", vt.meta["index"], 0, 128, vt.meta["attempt"])
    marked = next(o.mask for o in scene.objects if o.index in vt.meta["prompt_objects"].values())
    target = vt.masks[0]
    split = vt_pixel_split([_record(vt, [target | marked], "Sure, [SEG].")])
    total = int((target | marked).sum())
    assert split["records"] == 1 and split["elsewhere"] == 0.0
    assert split["target"] == pytest.approx(100.0 * target.sum() / total)
    assert split["marked"] == pytest.approx(100.0 * (marked & ~target).sum() / total)


def test_shapes_breakdown_scores_open_prompt_questions_per_kind_and_absent_tags_apart():
    from benchmarks.shapes_breakdown import vp_qa_by_kind
    from pixelsail.data.shapes import make_sample

    samples = [make_sample("test", i, "vp_qa") for i in range(80)]
    absent = next(s for s in samples if s.meta.get("absent_prompt") is not None)
    where = next(s for s in samples if s.meta.get("question_kind") == "where")
    records = [dict(_record(s, [], text), answer=s.turns[0][1]) for s, text in (
        (absent, absent.turns[0][1]),                              # right
        (where, where.turns[0][1]),                                # right
        (where, where.turns[0][1].split(":")[0] + ": in the center." if "center" not in where.turns[0][1]
         else where.turns[0][1].split(":")[0] + ": in the top left."))]   # wrong cell
    got = vp_qa_by_kind(records)
    assert got["absent"] == {"samples": 1, "exact": 1.0}
    assert got["where"] == {"samples": 2, "exact": 0.5}
    assert got["all"]["samples"] == 3 and got["all"]["exact"] == pytest.approx(2 / 3)
