"""pixelsail JSONL: the loader's samples, and `data validate` reporting every planted defect in one run."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import yaml
from realdata_fixtures import H, W, mask_a, mask_b, polygon_a, rle, write_all, write_images, write_jsonl
from typer.testing import CliRunner

from pixelsail.cli import app
from pixelsail.data.annotations import FormatError
from pixelsail.data.jsonl import JsonlDataset, infer_task, resolve_seg_refs
from pixelsail.data.validate import PROBLEM_KINDS, validate_jsonl
from pixelsail.tokens import vp_indices

GOOD = {"image": "images/j1.png", "masks": {"box": polygon_a(), "ball": rle(mask_b())},
        "prompts": {"<vp_0>": "box"}, "turns": [{"q": "What is <vp_0>?", "a": "<vp_0>: a box."}]}


def record(**changes) -> dict:
    r = json.loads(json.dumps(GOOD))
    r.update(changes)
    return r


# (kind, raw line) — one planted defect per line; line numbers follow from the order
PLANTED = [
    ("json", '{"id": "x", "image": '),
    ("schema", json.dumps(record(image=None) | {"id": "no-image"})),
    ("image_missing", json.dumps(record(id="r3", image="images/missing.png"))),
    ("image_unreadable", json.dumps(record(id="r4", image="images/corrupt.png"))),
    ("mask_decode", json.dumps(record(id="r5", masks={"box": [[1, 2, 3, 4, 5]]}, prompts={}, turns=[
        {"q": "hi", "a": "ok"}]))),
    ("mask_size", json.dumps(record(id="r6", masks={"box": rle(np.ones((10, 10), bool))}))),
    ("polygon_bounds", json.dumps(record(id="r7", masks={"box": [[0, 0, W + 20, 0, W + 20, 9]]}))),
    ("mask_empty", json.dumps(record(id="r8", masks={"box": polygon_a(), "ball": rle(np.zeros((H, W), bool))}))),
    ("unknown_mask", json.dumps(record(id="r9", turns=[{"q": "Find it.", "a": "[SEG:cat]"}]))),
    ("seg_without_mask", json.dumps(record(id="r10", turns=[{"q": "Find it.", "a": "Here [SEG]."}]))),
    ("seg_in_question", json.dumps(record(id="r11", turns=[{"q": "Is [SEG:box] red?", "a": "Yes."}]))),
    ("vp_without_prompt", json.dumps(record(id="r12", turns=[{"q": "What is <vp_5>?", "a": "A ball."}]))),
    ("vp_out_of_range", json.dumps(record(id="r13", prompts={"<vp_0>": "box", "<vp_20>": "ball"}))),
    ("bad_prompt", json.dumps(record(id="r14", prompts={"<vp_0>": {"box": [100, 100, 120, 120]}}))),
    ("empty_text", json.dumps(record(id="r15", turns=[{"q": "  ", "a": "A box."}]))),
    ("duplicate_id", json.dumps(record(id="r15"))),
]


def write_broken(tmp_path):
    write_images(tmp_path / "images", ["j1.png"])
    (tmp_path / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    lines = [json.dumps(record(id="ok-1"))] + [raw for _, raw in PLANTED] + [json.dumps(record(id="ok-2"))]
    path = tmp_path / "broken.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_validate_reports_every_planted_defect_with_its_line(tmp_path):
    report = validate_jsonl(write_broken(tmp_path))
    found = {(p.line, p.kind) for p in report.problems}
    expected = {(i + 2, kind) for i, (kind, _) in enumerate(PLANTED)}
    assert expected == found, sorted(found ^ expected)
    assert len({k for k, _ in PLANTED}) >= 15 and {k for k, _ in PLANTED} <= set(PROBLEM_KINDS)
    assert report.n_records == len(PLANTED) + 2 and report.n_valid == 2
    assert not report.ok
    assert "image_missing x1" in report.summary() and "json x1" in report.summary()


def test_a_record_with_several_problems_reports_all_of_them(tmp_path):
    write_images(tmp_path / "images", ["j1.png"])
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(record(prompts={"<vp_0>": "cat"}, expresions=[],
                                      turns=[{"q": "<vp_3>?", "a": "[SEG] and [SEG:dog]"}])) + "\n")
    kinds = sorted(p.kind for p in validate_jsonl(path).problems)
    assert kinds == ["schema", "seg_without_mask", "unknown_mask", "unknown_mask", "vp_without_prompt"]


def test_validate_cli_lists_problems_and_exits_nonzero(tmp_path):
    path = write_broken(tmp_path)
    result = CliRunner().invoke(app, ["data", "validate", str(path)])
    assert result.exit_code == 1, result.output
    for i, (kind, _) in enumerate(PLANTED):
        assert f"line {i + 2}" in result.output and f"[{kind}]" in result.output
    good = CliRunner().invoke(app, ["data", "validate", str(write_jsonl(tmp_path / "fine"))])
    assert good.exit_code == 0 and "2 valid" in good.output
    missing = CliRunner().invoke(app, ["data", "validate", str(tmp_path / "nope.jsonl")])
    assert missing.exit_code == 2 and "not found" in missing.output


def test_jsonl_expressions_become_referring_turns(tmp_path):
    ds = JsonlDataset(write_jsonl(tmp_path), max_objects=None)
    assert len(ds) == 2
    s = ds[0]
    answers = dict(s.turns)
    assert answers == {"Please segment the red box.": "Sure, [SEG].",
                       "Please segment both shapes.": "Sure, [SEG] and [SEG].",
                       "Please segment the cat.": "No target."}
    expected_masks = {"Please segment the red box.": [mask_a()], "Please segment both shapes.": [mask_a(), mask_b()],
                      "Please segment the cat.": []}
    masks = iter(s.masks)
    for q, _ in s.turns:
        for m in expected_masks[q]:
            assert (next(masks) == m).all()
    assert s.task == "gres"
    assert len(JsonlDataset(write_jsonl(tmp_path), max_objects=1)[0].turns) == 1


def test_jsonl_turns_resolve_seg_refs_and_renumber_prompts_consistently(tmp_path):
    ds = JsonlDataset(write_jsonl(tmp_path))
    seen = set()
    for seed in range(5):
        ds.seed = seed
        s = ds[1]
        (below,) = vp_indices(s.turns[0][0])
        (colour,) = vp_indices(s.turns[2][0])
        assert s.turns[2][1] == f"<vp_{colour}>: blue."
        assert (s.prompts[below] == mask_a()).all()
        assert s.prompts[colour].sum() == 26 * 16                    # the box prompt [34, 28, 60, 44]
        assert [a for _, a in s.turns][:2] == ["The ball [SEG].", "[SEG]"]
        assert (s.masks[0] == mask_b()).all() and (s.masks[1] == (mask_a() | mask_b())).all()
        assert s.task == "vt_res"
        seen.add((below, colour))
    assert len(seen) > 1
    fixed = JsonlDataset(write_jsonl(tmp_path), shuffle_vp=False)[1]
    assert fixed.turns[0][0] == "What is below <vp_0>?" and set(fixed.prompts) == {0, 3}


def test_seg_refs_and_task_inference():
    a, b = mask_a(), mask_b()
    text, masks = resolve_seg_refs("x [SEG:a] y [SEG:a+b]", {"a": a, "b": b})
    assert text == "x [SEG] y [SEG]" and (masks[0] == a).all() and (masks[1] == (a | b)).all()
    assert infer_task([("Find it.", "[SEG]")]) == "res"
    assert infer_task([("Find them.", "[SEG] and [SEG]")]) == "gres"
    assert infer_task([("What is <vp_1>?", "A cat.")]) == "vp_qa"
    assert infer_task([("Same colour as <vp_1>?", "[SEG]")]) == "vt_res"
    assert infer_task([("Describe.", "<p> a cat </p> [SEG] sits.")]) == "gcg"
    assert infer_task([("Hi?", "Hello.")]) == "vqa"


def test_absent_prompt_turn_is_allowed(tmp_path):
    write_images(tmp_path / "images", ["j1.png"])
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(record(turns=[{"q": "What is <vp_4>?", "a": "<vp_4> is not in the image."}])) + "\n")
    assert validate_jsonl(path).ok
    s = JsonlDataset(path)[0]
    (k,) = vp_indices(s.turns[0][0])
    assert k not in s.prompts and s.turns[0][1] == f"<vp_{k}> is not in the image."


def test_loader_raises_every_problem_of_a_record_and_names_the_line(tmp_path):
    path = write_broken(tmp_path)
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[9], lines[-1]]) + "\n")     # ok, unknown_mask, ok
    ds = JsonlDataset(path)
    ds[0]
    expected = r"broken\.jsonl:2: invalid record \(1 problem\(s\)\):\n  line 2 \(id 'r9'\): \[unknown_mask\]"
    with pytest.raises(FormatError, match=expected):
        ds[1]
    path.write_text("\n".join([lines[0], lines[1]]) + "\n")
    with pytest.raises(FormatError, match=r"broken\.jsonl:2: malformed JSON"):
        JsonlDataset(path)
    path.write_text("\n".join([lines[0], lines[0]]) + "\n")
    with pytest.raises(FormatError, match=r"broken\.jsonl:2: duplicate id 'ok-1' \(first on line 1\)"):
        JsonlDataset(path)


def test_preview_and_dry_run_commands(tmp_path):
    specs = write_all(tmp_path / "data")
    config = tmp_path / "mix.yaml"
    config.write_text(yaml.safe_dump({"data": {"datasets": [
        {"name": name, "weight": 2.0 if name == "jsonl" else 1.0, "args": args} for name, args in specs.items()]}}))
    out = tmp_path / "p.png"
    result = CliRunner().invoke(app, ["data", "preview", specs["jsonl"]["path"], "-o", str(out), "--n", "2"])
    assert result.exit_code == 0, result.output
    from PIL import Image
    assert Image.open(out).size[0] > 2 * 320
    result = CliRunner().invoke(app, ["data", "dry-run", str(config)])
    assert result.exit_code == 0, result.output
    assert "9 samples walked, 0 failed" in result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 8}
    assert "vt_res" in result.output and "region_caption" in result.output
    # jsonl: 2 records, weight 2 -> 4 per epoch; its two samples hold 3 + 3 turns
    jsonl_row = [c.strip() for c in rows["jsonl#6"].split("│")[1:-1]]
    assert jsonl_row[:8] == ["jsonl#6", "2", "2", "4", "2", "6", "5", "2"]
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump({"data": {"datasets": [
        {"name": "muse", "args": {**specs["muse"], "image_dirs": [str(tmp_path)]}}]}}))
    result = CliRunner().invoke(app, ["data", "dry-run", str(broken)])
    assert result.exit_code == 1 and "1 failed" in result.output and "m1.png' not found" in result.output


def test_the_documented_example_validates_and_loads(tmp_path):
    from pathlib import Path

    from PIL import Image

    doc = (Path(__file__).resolve().parent.parent / "docs" / "DATA.md").read_text()
    block = doc.split("Example (`data/mine/train.jsonl`", 1)[1].split("```json\n", 1)[1].split("```", 1)[0]
    records = [json.loads(r) for r in re.split(r"\n(?=\{)", block.strip())]
    (tmp_path / "images").mkdir()
    Image.new("RGB", (640, 480), (90, 90, 90)).save(tmp_path / "images" / "kitchen.jpg")
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    report = validate_jsonl(path)
    assert report.ok, [str(p) for p in report.problems]
    ds = JsonlDataset(path, max_objects=None)
    referring, chat = ds[0], ds[1]
    assert len(referring.turns) == 3 and referring.image_id == "images/kitchen.jpg"
    assert chat.task == "vt_res" and [m.sum() for m in chat.masks] == [40 * 50, 90 * 120 + 40 * 50]
