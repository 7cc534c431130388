"""The ablation: variants differ only in their switches, metrics split RES three ways, --quick writes the report and
a re-run skips finished runs."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelsail.ablation import READING_END, READING_START, VARIANTS, ablation_metrics, variant_run
from pixelsail.ablation_report import compare_steps, mean_std
from pixelsail.config import RunConfig, load_yaml, to_dict
from pixelsail.data.export import mask_to_rle
from pixelsail.evaluate import read_jsonl
from pixelsail.experts import SHIPPED_SHAPES_EXPERT

RECIPE = Path(__file__).parents[1] / "configs" / "shapes-tiny.yaml"


def flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flat(v, key + "."))
        else:
            out[key] = v
    return out


def differing(a: RunConfig, b: RunConfig) -> set[str]:
    fa, fb = flat(to_dict(a)), flat(to_dict(b))
    return {k for k in fa.keys() | fb.keys() if fa.get(k, "<absent>") != fb.get(k, "<absent>")}


def test_variants_differ_from_each_other_only_in_the_intended_switches(tmp_path):
    base = load_yaml(RECIPE, RunConfig)
    runs = [variant_run(base, v, 0, tmp_path) for v in VARIANTS]
    assert [(r.model.upsample, r.model.vp_injection, r.model.distill.enabled) for r in runs] == [
        (False, False, False), (True, False, False), (True, True, False), (True, True, True)]
    out_dir = {"train.output_dir"}
    assert differing(runs[0], runs[1]) == out_dir | {"model.upsample"}
    assert differing(runs[1], runs[2]) == out_dir | {"model.vp_injection"}
    expert = json.loads((SHIPPED_SHAPES_EXPERT / "config.json").read_text())
    assert differing(runs[2], runs[3]) == out_dir | {
        "model.distill.enabled", "model.distill.teachers", "model.distill.teachers.pixel.channels", "model.distill.teachers.pixel.source",
        "model.distill.teachers.image.channels", "model.distill.teachers.image.source", "data.datasets",
        "data.warmup_datasets"}
    assert runs[3].model.distill.teachers == {
        "pixel": {"channels": expert["pixel_channels"], "source": "upsampled"},
        "image": {"channels": expert["image_channels"], "source": "vision_tokens"}}
    # distillation sees the very same data, only wrapped so that samples carry the teacher's features
    assert len(runs[3].data.datasets) == len(runs[2].data.datasets) >= 1
    pairs = list(zip(runs[3].data.datasets, runs[2].data.datasets))
    pairs += list(zip(runs[3].data.warmup_datasets, runs[2].data.warmup_datasets))   # both stages
    for wrapped, plain in pairs:
        assert plain.name == "shapes"    # the recipe's own distillation wrapper is taken off first
        assert wrapped.name == "distilled" and wrapped.weight == plain.weight
        assert wrapped.args == {"dataset": {"name": plain.name, "args": plain.args}, "teacher": "shapes"}
    # seeds change the seed and the directory, nothing else; the base config is left as it was
    assert differing(runs[0], variant_run(base, VARIANTS[0], 7, tmp_path)) == out_dir | {"train.seed"}
    assert to_dict(base) == to_dict(load_yaml(RECIPE, RunConfig))


def _record(index, task, pred, gt, text="", reply="", **meta):
    return {"index": index, "task": task, "image_hw": [4, 4], "text": text, "answer": reply, "question": "q",
            "pred_masks": [mask_to_rle(m) for m in pred], "gt_masks": [mask_to_rle(m) for m in gt], "meta": meta}


def _mask(*cells):
    m = np.zeros((4, 4), bool)
    for r, c in cells:
        m[r, c] = True
    return m


def test_metrics_split_referring_segmentation_into_single_multi_and_no_target():
    a, b = _mask((0, 0), (0, 1)), _mask((3, 3), (3, 2))
    records = [
        _record(0, "res", [a], [a]),                                                 # I 2, U 2
        _record(1, "res", [_mask((0, 0))], [a]),                                     # I 1, U 2
        _record(2, "gres", [a, _mask((2, 2))], [a, b], no_target=False),             # I 2, U 5
        _record(3, "gres", [], [], text="No target.", no_target=True),               # correct: empty
        _record(4, "gres", [_mask((1, 1))], [], text="It is [SEG].", no_target=True),  # a false mask
        _record(5, "vp_mcq", [], [], text="(B) red.", reply="(B) red.", answer="(B)"),
        _record(6, "vp_mcq", [], [], text="(A) red.", reply="(C) blue.", answer="(C)"),
    ]
    m = ablation_metrics(records, captions=False)
    assert m["res_single_ciou"] == pytest.approx(100 * 3 / 4)
    assert m["res_single_giou"] == pytest.approx(100 * (1.0 + 0.5) / 2, abs=1e-3)
    assert m["res_multi_ciou"] == pytest.approx(100 * 2 / 5)
    assert m["res_none_giou"] == pytest.approx(50.0) and m["res_none_nacc"] == pytest.approx(50.0)
    assert m["res_none_ciou"] == 0.0
    assert (m["samples_multi"], m["samples_none"]) == (1, 2)
    assert m["mcq_acc"] == pytest.approx(0.5)
    assert math.isnan(m["meteor"]) and math.isnan(m["overall"]) and math.isnan(m["vt_res_ciou"])


def test_mean_std_and_the_automatic_verdicts():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([5.0]) == (5.0, 0.0)
    summary = {"baseline": {"seeds": [0, 1, 2], "overall": [10.0, 1.0], "meteor": [20.0, 3.0]},
               "upsample": {"seeds": [0, 1, 2], "overall": [13.0, 1.0], "meteor": [19.0, 3.0]}}
    (line,) = compare_steps(summary, keys=("overall", "meteor"))
    # overall: +3 against a standard error of sqrt(2/3) = 0.82, t = 3.67 on 4 degrees of freedom -> p = 0.021, up;
    # METEOR: -1 against 2.45, t = -0.41 -> p = 0.70, ~
    assert "PerBench overall +3.0 (up, p 0.021)" in line and "caption METEOR -1.0 (~, p 0.7)" in line
    one_seed = {k: {**v, "seeds": [0]} for k, v in summary.items()}
    (line,) = compare_steps(one_seed, keys=("overall",))
    assert "PerBench overall +3.0 (n/a)" in line      # no test with a single seed


def test_welch_p_equals_scipys_test_on_the_raw_values():
    from scipy import stats

    from pixelsail.ablation_report import welch_p

    a, b = [71.2, 64.9, 70.1], [78.5, 77.7]
    expected = stats.ttest_ind(b, a, equal_var=False).pvalue
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    assert welch_p(ma, sa, len(a), mb, sb, len(b)) == pytest.approx(expected, rel=1e-9)
    assert welch_p(1.0, 0.0, 3, 2.0, 0.0, 3) == 0.0 and welch_p(1.0, 0.0, 3, 1.0, 0.0, 3) == 1.0
    assert math.isnan(welch_p(1.0, 0.5, 1, 2.0, 0.5, 3))


def test_quick_ablation_writes_table_and_chart_and_a_rerun_skips_finished_runs(tmp_path):
    from typer.testing import CliRunner

    from pixelsail.cli import app

    out, docs = tmp_path / "runs", tmp_path / "docs"
    args = ["ablate", "--quick", "--seeds", "1", "--no-captions", "--config", str(RECIPE), "--out", str(out),
            "--docs", str(docs)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    md = (docs / "ABLATION.md").read_text()
    for v in VARIANTS:
        row = next(line for line in md.splitlines() if line.startswith(f"| {v.title} | 1 |"))
        assert row.count("|") == 14   # variant, seeds and 11 metrics
    with Image.open(docs / "ablation.png") as png:
        assert png.format == "PNG" and png.size[0] > 500
    for v in VARIANTS:   # the trained models really carry the variant's switches
        saved = json.loads((out / v.name / "seed-0" / "model" / "config.json").read_text())["pixelsail"]
        assert (saved["upsample"], saved["vp_injection"], saved["distill"]["enabled"]) == (
            v.upsample, v.vp_injection, v.distill)
        logged = {k for line in (out / v.name / "seed-0" / "metrics.jsonl").read_text().splitlines()
                  for k in json.loads(line)}
        assert ({"loss/distill_pixel", "loss/distill_image"} <= logged) == v.distill
        result_json = json.loads((out / v.name / "seed-0" / "results.json").read_text())
        assert result_json["train"]["steps"] == 2 and result_json["eval"]["samples"] == 10
        # the recipe answers a multiple choice from its options; the ablation, as the paper, freely
        assert result_json["run"]["model"]["option_decoding"] is True
        records = read_jsonl(out / v.name / "seed-0" / "eval" / "predictions.jsonl")
        assert any(r["task"] == "vp_mcq" for r in records) and not any("decoding" in r for r in records)

    # a hand-written reading survives; finished runs are not trained again
    (docs / "ABLATION.md").write_text(md.replace(READING_START + "\n", READING_START + "\nMy reading.\n"))
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/seed-0/results.json")}
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "4 runs (4 skipped as finished)" in again.output
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/seed-0/results.json")} == stamps
    assert f"{READING_START}\nMy reading.\n" in (docs / "ABLATION.md").read_text()
    assert READING_END in (docs / "ABLATION.md").read_text()

    # every finished run is also kept as a small record beside the report, with its training curve; the curves and
    # the masks every variant drew for the same questions are pictures of their own
    for v in VARIANTS:
        record = json.loads((docs / "ablation" / f"{v.name}-seed-0.json").read_text())
        assert record["metrics"] == json.loads((out / v.name / "seed-0" / "results.json").read_text())["metrics"]
        assert record["train"]["curve"]["step"] == [1, 2] and len(record["train"]["curve"]["loss/mask_dice"]) == 2
    for name in ("ablation_curves.png", "ablation_masks.png"):
        with Image.open(docs / name) as png:
            assert png.format == "PNG" and png.size[0] > 500, name
        assert f"]({name})" in (docs / "ABLATION.md").read_text()

    # with the run directories gone (another machine), the records still count: nothing is trained again, the table
    # keeps its rows and the mask picture the runs can no longer redraw stays
    shutil.rmtree(out)
    masks_before = (docs / "ablation_masks.png").read_bytes()
    third = CliRunner().invoke(app, args)
    assert third.exit_code == 0, third.output
    assert "4 runs (4 skipped as finished)" in third.output and not (out / "baseline" / "seed-0").exists()
    md = (docs / "ABLATION.md").read_text()
    assert all(f"| {v.title} | 1 |" in md for v in VARIANTS)
    assert (docs / "ablation_masks.png").read_bytes() == masks_before and "](ablation_masks.png)" in md

    # the inference-only option_decoding and no_target_check are no recipe difference: the ablation always answers
    # freely, once
    same = CliRunner().invoke(app, args + ["model.option_decoding=false", "model.no_target_check=false"])
    assert same.exit_code == 0 and "4 runs (4 skipped as finished)" in same.output, same.output
    # a changed recipe does not silently join runs of the old one
    changed = CliRunner().invoke(app, args + ["train.lr=1e-3"])
    assert changed.exit_code == 2
    assert "baseline seed 0 was finished with another recipe (train.lr differ)" in " ".join(changed.output.split())
    # ... nor does a recorded seed beyond --seeds, which the table would take in
    other = json.loads((docs / "ablation" / "baseline-seed-0.json").read_text())
    other["seed"], other["run"]["train"]["lr"] = 5, 1e-3
    (docs / "ablation" / "baseline-seed-5.json").write_text(json.dumps(other))
    extra = CliRunner().invoke(app, args)
    assert extra.exit_code == 2
    assert "baseline seed 5 was finished with another recipe" in " ".join(extra.output.split())


def test_a_shorter_ablation_keeps_the_recipes_share_of_language_warm_up(tmp_path):
    from pixelsail.commands.ablate import base_config
    from pixelsail.config import RunConfig, apply_overrides, load_yaml, save_yaml

    shipped = load_yaml(Path(__file__).parents[1] / "configs" / "shapes-tiny.yaml", RunConfig)
    full = apply_overrides(shipped, ["train.max_steps=950", "train.text_warmup_steps=150",
                                     "data.warmup_datasets=[{name: shapes_echo, args: {size: 100}}]"])
    recipe = tmp_path / "recipe.yaml"
    save_yaml(full, recipe)
    short = base_config(recipe, False, 95, None, [])
    assert short.train.max_steps == 95 and short.train.text_warmup_steps == 15
    assert base_config(recipe, False, None, None, ["train.text_warmup_steps=0"]).train.text_warmup_steps == 0
    assert base_config(recipe, False, None, None, []).train.text_warmup_steps == 150


def test_training_curve_keeps_each_step_once_in_order_and_aligns_missing_losses(tmp_path):
    from pixelsail.ablation_records import training_curve

    lines = [{"step": 25, "loss": 3.0, "loss/lm": 2.0}, {"step": 50, "loss": 2.5, "loss/lm": 1.5},
             {"step": 50, "loss": 2.4, "loss/lm": 1.4, "loss/mask_dice": 0.7},   # re-logged after a resume
             {"step": 75, "loss": 2.0, "loss/lm": 1.0, "loss/mask_dice": 0.6}, {"event": "checkpoint"}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    curve = training_curve(tmp_path / "metrics.jsonl")
    assert curve["step"] == [25, 50, 75] and curve["loss"] == [3.0, 2.4, 2.0]
    assert math.isnan(curve["loss/mask_dice"][0]) and curve["loss/mask_dice"][1:] == [0.7, 0.6]
    assert "loss/distill_pixel" not in curve and training_curve(tmp_path / "absent.jsonl") == {}


def test_mask_picture_captions_say_which_masks_came_out_empty():
    from pixelsail.ablation_figures import _caption

    empty, full = np.zeros((2, 2), bool), np.ones((2, 2), bool)
    assert _caption("No target.", []).endswith("\nno mask")
    assert _caption("Sure, [SEG].", [empty]).endswith("\n1 mask, empty")
    assert _caption("Sure, [SEG] and [SEG].", [full, empty]).endswith("\n2 masks, 1 empty")
    assert _caption("x" * 80, [full]) == "x" * 59 + "…\n1 mask"
