"""The evaluation loop with fake models: an oracle scores 1.0 everywhere, an empty model per the conventions."""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field

import numpy as np
import pytest
from typer.testing import CliRunner

from pixelsail.cli import app
from pixelsail.data.perbench import PerBench
from pixelsail.data.refer import ReferEvalDataset
from pixelsail.evaluate import (VTRES_RETRY_PREFIX, evaluate, rank_records, read_jsonl, score_records,
                                _prompt_fingerprint)
from pixelsail.metrics import union_mask
from test_perbench import make_perbench
from test_refer import make_grefcoco, make_refer


@dataclass
class Reply:
    text: str
    masks: list
    mask_scores: list = field(default_factory=list)


def _key(image: np.ndarray, prompts: dict | None) -> tuple[str, str]:
    return hashlib.sha1(image.tobytes()).hexdigest(), _prompt_fingerprint(prompts or {})


class FakeModel:
    """Answers from a table keyed by (image, prompts, question); counts vision prefills like the real model."""

    def __init__(self, table: dict | None = None, *, only_with_prefix: bool = False):
        self.table = table or {}
        self.only_with_prefix = only_with_prefix
        self.vision_prefill_count = 0
        self.calls: list[str] = []

    def prefill_image(self, image, prompts=None):
        self.vision_prefill_count += 1
        return _key(image, prompts)

    def respond(self, prefix, question, history=(), max_new_tokens=64, answer_prefix=""):
        self.calls.append(answer_prefix)
        text, masks = self.table.get((*prefix, question), ("", []))
        if self.only_with_prefix and answer_prefix != VTRES_RETRY_PREFIX:
            return Reply("I am not sure.", [])
        return Reply(text, list(masks), [1.0] * len(masks))


def oracle(dataset) -> FakeModel:
    table = {}
    for i in range(len(dataset)):
        s = dataset[i]
        table[(*_key(s.image, s.prompts), s.turns[-1][0])] = (s.turns[-1][1], s.masks)
    return FakeModel(table)


def test_oracle_scores_100_and_reuses_one_prefix_per_image(tmp_path):
    ds = ReferEvalDataset(make_refer(tmp_path / "refcoco"), split="val")
    model = oracle(ds)
    run = evaluate(model, ds, tmp_path / "out", show=False, gallery=2)
    res = run.scores.results["res"]
    assert res["cIoU (LISA)"] == pytest.approx(100.0) and res["gIoU (LISA)"] == pytest.approx(100.0, abs=1e-3)
    assert res["Pr@0.9 (LISA)"] == 100.0 and res["samples"] == 3
    assert model.vision_prefill_count == 2                      # 3 expressions on 2 images
    assert (tmp_path / "out" / "gallery_best.png").exists() and (tmp_path / "out" / "gallery_worst.png").exists()
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["results"]["res"]["cIoU (LISA)"] == pytest.approx(100.0)
    assert "| cIoU (LISA) |" in (tmp_path / "out" / "results.md").read_text()

    gds = ReferEvalDataset(make_grefcoco(tmp_path / "grefcoco"), split="val")
    g = evaluate(oracle(gds), gds, tmp_path / "gout", show=False, gallery=0).scores.results["gres"]
    for name in ("cIoU (LISA)", "cIoU (ReLA)", "gIoU (ReLA)", "N-acc (ReLA)", "T-acc (ReLA)", "Pr@0.9 (ReLA)"):
        assert g[name] == pytest.approx(100.0), name
    assert g["gIoU (LISA)"] == pytest.approx(100.0, abs=1e-3)


def test_empty_model_scores_per_conventions(tmp_path):
    ds = ReferEvalDataset(make_refer(tmp_path / "refcoco"), split="val")
    res = evaluate(FakeModel(), ds, tmp_path / "out", show=False, gallery=0).scores.results["res"]
    assert res["cIoU (LISA)"] == 0.0 and res["gIoU (LISA)"] == 0.0 and res["Pr@0.5 (LISA)"] == 0.0

    gds = ReferEvalDataset(make_grefcoco(tmp_path / "grefcoco"), split="val")   # 2 targeted, 1 no-target
    g = evaluate(FakeModel(), gds, tmp_path / "gout", show=False, gallery=0).scores.results["gres"]
    assert g["gIoU (LISA)"] == pytest.approx(100 / 3)       # the no-target sample: empty on empty = 1
    assert g["gIoU (ReLA)"] == pytest.approx(100 / 3)
    assert g["cIoU (LISA)"] == 0.0 and g["cIoU (ReLA)"] == 0.0
    assert g["N-acc (ReLA)"] == 100.0 and g["T-acc (ReLA)"] == 0.0


def test_vt_res_without_seg_is_reasked_with_the_answer_prefix(tmp_path):
    bench = PerBench(make_perbench(tmp_path / "pb") / "vtres.json")
    s = bench[0]
    table = {(*_key(s.image, s.prompts), s.turns[0][0]): ("It is [SEG].", [union_mask(s.masks, s.masks[0].shape)])}
    model = FakeModel(table, only_with_prefix=True)
    run = evaluate(model, bench, tmp_path / "out", show=False, gallery=0)
    assert model.calls == ["", VTRES_RETRY_PREFIX]
    assert run.records[0]["reasked"] is True
    assert run.scores.results["vt_res"]["cIoU (LISA)"] == pytest.approx(100.0)   # one mask vs the targets' union


@pytest.mark.skipif(shutil.which("java") is None, reason="caption metrics need a java runtime")
def test_perbench_oracle_overall_is_100(tmp_path):
    pytest.importorskip("pycocoevalcap")
    bench = PerBench(make_perbench(tmp_path / "pb"))
    run = evaluate(oracle(bench), bench, tmp_path / "out", show=False, gallery=1)
    r = run.scores.results
    assert r["region_caption"]["METEOR"] == pytest.approx(100.0)
    assert r["vp_mcq"]["MCQ acc (PerBench)"] == 1.0
    assert r["perbench"]["Overall (PerBench)"] == pytest.approx(100.0, abs=1e-3)


def test_score_recomputes_the_results_from_predictions_alone(tmp_path):
    ds = ReferEvalDataset(make_grefcoco(tmp_path / "grefcoco"), split="val")
    model = oracle(ds)
    # spoil one answer: the two-target expression gets only its first mask
    key = next(k for k, v in model.table.items() if len(v[1]) == 2)
    model.table[key] = ("Sure, [SEG].", model.table[key][1][:1])
    run = evaluate(model, ds, tmp_path / "out", show=False, gallery=0)
    g = run.scores.results["gres"]
    assert 0 < g["cIoU (LISA)"] < 100
    assert rank_records(run.scores.per_record, 1) == ([1], [0])     # ties broken by index
    result = CliRunner().invoke(app, ["score", str(tmp_path / "out" / "predictions.jsonl"), "--no-captions",
                                      "--out", str(tmp_path / "rescored")])
    assert result.exit_code == 0, result.output
    again = json.loads((tmp_path / "rescored" / "results.json").read_text())["results"]["gres"]
    assert again == pytest.approx(g)
    assert score_records(read_jsonl(tmp_path / "out" / "predictions.jsonl")).results["gres"] == pytest.approx(g)


def test_cli_errors_are_clear(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["eval", "--model", str(tmp_path), "--task", "res", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--task res needs --data" in result.output
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"index": 0}\n')
    result = runner.invoke(app, ["score", str(bad)])
    assert result.exit_code == 2 and "p.jsonl:1: prediction record lacks" in result.output
