"""The evaluation loop with fake models: an oracle scores 1.0 everywhere, an empty model per the conventions."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np
import pytest
from typer.testing import CliRunner

from pixelsail.cli import app
from pixelsail.data.perbench import PerBench
from pixelsail.data.refer import ReferEvalDataset
from pixelsail.evaluate import (VTRES_RETRY_PREFIX, _prompt_fingerprint, evaluate, predict, rank_records,
                                read_jsonl, score_records)
from pixelsail.metrics import clean_caption, union_mask
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
    assert "| cIoU (LISA) | 100.00 |" in (tmp_path / "out" / "results.md").read_text()

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


def test_perbench_oracle_overall_is_100(tmp_path, monkeypatch):
    # the Java scorers are tested once in test_metrics; here a stand-in scores exact matches 1 and others 0
    seen = {}

    def exact_match_scores(predictions, references, metrics=("BLEU", "METEOR", "CIDEr")):
        seen.update(predictions=predictions, references=references)
        hits = [predictions[k] in references[k] for k in predictions]
        return {"METEOR": sum(hits) / len(hits)}

    monkeypatch.setattr("pixelsail.metrics.coco_caption_scores", exact_match_scores)
    bench = PerBench(make_perbench(tmp_path / "pb"))
    run = evaluate(oracle(bench), bench, tmp_path / "out", show=False, gallery=1)
    r = run.scores.results
    assert seen["predictions"] == {"0": "A dark square in the top left corner.", "1": "A block at the lower right."}
    assert seen["references"] == {"0": ["A dark square in the top left corner."], "1": ["A block at the lower right."]}
    assert r["region_caption"]["METEOR (COCOEvalCap)"] == 100.0
    assert r["vp_mcq"]["MCQ acc (PerBench)"] == 1.0
    assert r["vt_res"]["cIoU (LISA)"] == pytest.approx(100.0)
    assert r["perbench"]["Overall (PerBench)"] == pytest.approx(100.0, abs=1e-3)
    empty = evaluate(FakeModel(), bench, tmp_path / "empty", show=False, gallery=0).scores.results["perbench"]
    assert empty["Overall (PerBench)"] == 0.0


def test_evaluate_writes_a_labelled_results_file_per_convention(tmp_path):
    bench = PerBench(make_perbench(tmp_path / "pb") / "vtres.json")   # one V-T RES sample with two targets
    run = evaluate(oracle(bench), bench, tmp_path / "out", show=False, gallery=0,
                   conventions=("standard", "authors"))
    assert run.scores is run.by_convention["standard"] and set(run.by_convention) == {"standard", "authors"}
    # the two targets answered with their two masks: the unions match; the authors' script compares the first
    # mask with the first target only (a hit) and divides gIoU by the number of targets (2)
    assert run.scores.results["vt_res"]["gIoU (LISA)"] == pytest.approx(100.0, abs=1e-3)
    authors = run.by_convention["authors"].results["vt_res"]
    assert authors["cIoU (authors, V-T RES)"] == pytest.approx(100.0)
    assert authors["gIoU (authors, V-T RES)"] == pytest.approx(50.0, abs=1e-3)
    assert json.loads(run.files["json"].read_text())["convention"] == "standard"
    assert json.loads(run.files["json (authors)"].read_text())["convention"] == "authors"
    assert run.files["markdown (authors)"].name == "results.authors.md"
    with pytest.raises(ValueError, match="unknown scoring convention"):
        evaluate(oracle(bench), bench, tmp_path / "bad", show=False, conventions=("perbench",))


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


# ---------------------------------------------------------------------------------------------------------------
# the shapes export read back through the real readers scores exactly like the generator's own samples


class CanonicalGuessModel:
    """A deterministic, imperfect model that ignores how prompts are numbered.

    Its answer is a pseudo-random function of (image, the prompt masks in the order the question names them,
    the question with its ``<vp_k>`` renamed by order of appearance): a colour-threshold mask, sometimes
    "No target.", two option letters.
    """

    def prefill_image(self, image, prompts=None):
        return image, dict(prompts or {})

    def respond(self, prefix, question, history=(), max_new_tokens=64, answer_prefix=""):
        import re

        image, prompts = prefix
        order = list(dict.fromkeys(int(k) for k in re.findall(r"<vp_(\d+)>", question)))
        canonical = re.sub(r"<vp_(\d+)>", lambda m: f"<vp_{order.index(int(m.group(1)))}>", question)
        h = hashlib.sha1(image.tobytes() + canonical.encode())
        for k in order:
            h.update(np.packbits(prompts[k]).tobytes())
        n = int(h.hexdigest(), 16)
        if n % 5 == 0:
            return Reply("No target.", [])
        if order:  # pixels within a random distance of the first prompt's mean colour
            mean = image[prompts[order[0]]].mean(axis=0)
            mask = np.abs(image.astype(float) - mean).sum(axis=-1) < 20 + n % 60
        else:
            mask = image[..., n % 3] > (n // 3) % 256
        return Reply(f"({'ABCD'[n % 4]}) or ({'ABCD'[n // 4 % 4]}) [SEG]", [mask])


def generator_samples(split: str, n: int, image_size: int) -> dict[str, list]:
    """What the export writes, built in memory from the generator: REFER, gRefCOCO and PerBench samples."""
    from pixelsail.data.annotations import seg_answer
    from pixelsail.data.export import MAX_SENTENCES_PER_REF
    from pixelsail.data.refer import REFER_QUESTION
    from pixelsail.data.region import describe_question
    from pixelsail.data.sample import Sample
    from pixelsail.data.shapes import (attribute_referrals, generate_scene, make_rng, make_vp_mcq, make_vt_res,
                                       multi_referrals, no_target_referral, reading_order, region_caption,
                                       relation_referrals)

    out: dict[str, list] = {"res": [], "gres": [], "perbench": []}
    captions, mcqs, vts = [], [], []

    def ask(scene, expression, targets, task):
        return Sample(scene.image, [(REFER_QUESTION.format(sentence=expression), seg_answer(len(targets)))],
                      [t.mask for t in targets], task=task)

    def with_object_prompts(scene, s):   # PerBench stores every prompt as the object's mask
        s.prompts = {k: scene.objects[i].mask for k, i in s.meta["prompt_objects"].items()}
        return s

    for index in range(n):
        scene = generate_scene(split, index, 0, image_size)
        by_target: dict[int, list[str]] = {}
        for ref in attribute_referrals(scene) + relation_referrals(scene):
            sents = by_target.setdefault(ref.targets[0].index, [])
            if ref.expression not in sents and len(sents) < MAX_SENTENCES_PER_REF:
                sents.append(ref.expression)
        out["res"] += [ask(scene, e, [scene.objects[i]], "res") for i, es in sorted(by_target.items()) for e in es]
        rng = make_rng(0, split, index, 3)
        singles, refs = set(), []
        for ref in attribute_referrals(scene):
            if ref.targets[0].index not in singles:
                singles.add(ref.targets[0].index)
                refs.append(ref)
        refs += multi_referrals(scene) + [no_target_referral(scene, rng)]
        out["gres"] += [ask(scene, r.expression, reading_order(r.targets), "gres") for r in refs]
        captions += [Sample(scene.image, [(describe_question(0), f"<vp_0>: {region_caption(scene, o)}.")],
                            prompts={0: o.mask}, task="region_caption") for o in scene.visible_objects]
        mcqs += [with_object_prompts(scene, make_vp_mcq(scene, rng)) for _ in range(2)]
        vt = make_vt_res(scene, rng)
        if vt is not None:
            vts.append(with_object_prompts(scene, vt))
    out["perbench"] = captions + mcqs + vts
    return out


def test_shapes_export_through_the_readers_scores_like_the_generator(tmp_path):
    from pixelsail.data.export import GREFER_DIR, PERBENCH_DIR, REFER_DIR, export_shapes

    export_shapes(tmp_path, {"test": 6}, image_size=64)
    direct = generator_samples("test", 6, 64)
    read = {"res": ReferEvalDataset(tmp_path / REFER_DIR, split="test"),
            "gres": ReferEvalDataset(tmp_path / GREFER_DIR, split="test"),
            "perbench": PerBench(tmp_path / PERBENCH_DIR)}
    model = CanonicalGuessModel()
    for name, ds in read.items():
        assert len(ds) == len(direct[name]), name
        via_files = predict(model, ds, progress=False)
        via_generator = predict(model, direct[name], progress=False)
        a = score_records(via_files, captions=False).results
        b = score_records(via_generator, captions=False).results
        assert a == b, name
        for task, row in a.items():  # the numbers compared are not trivially 0 or 100
            metric = "MCQ acc (PerBench)" if task == "vp_mcq" else "cIoU (LISA)"
            assert 0 < row[metric] < (1 if task == "vp_mcq" else 100), (task, row)
        # caption metrics are a function of (prediction, references): compare those instead of running Java
        assert caption_inputs(via_files) == caption_inputs(via_generator), name


def caption_inputs(records: list[dict]) -> list[tuple[str, list[str]]]:
    return [(clean_caption(r["text"]), [clean_caption(x) for x in r["meta"].get("references") or [r["answer"]]])
            for r in records if r["task"] == "region_caption"]


def test_eval_command_runs_a_real_pixelsail_checkpoint(tmp_path):
    from model_utils import tiny_model

    tiny_model().save_pretrained(tmp_path / "model")
    data = make_grefcoco(tmp_path / "grefcoco")
    result = CliRunner().invoke(app, ["eval", "--model", str(tmp_path / "model"), "--task", "gres", "--data",
                                      str(data), "--limit", "2", "--max-new-tokens", "3", "--gallery", "1",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    records = read_jsonl(tmp_path / "out" / "predictions.jsonl")
    assert [r["index"] for r in records] == [0, 1] and all(r["task"] == "gres" for r in records)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["task"] == "gres" and saved["results"]["gres"]["samples"] == 2
    assert (tmp_path / "out" / "gallery_worst.png").exists()


def _spoiled_oracle(ds) -> FakeModel:
    model = oracle(ds)
    key = next(k for k, v in model.table.items() if len(v[1]) == 2)
    model.table[key] = ("Sure, [SEG].", model.table[key][1][:1])
    return model


def _two_rank_worker(rank: int, root: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{out}/pg", rank=rank, world_size=2)
    try:
        ds = ReferEvalDataset(root, split="val", generalized=True)
        model = _spoiled_oracle(ds)
        run = evaluate(model, ds, f"{out}/eval", show=False, gallery=0, progress=False)
        with open(f"{out}/rank{rank}.json", "w") as f:
            json.dump({"prefills": model.vision_prefill_count, "n_records": len(run.records),
                       "results": run.scores.results}, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_split_the_images_and_agree_with_one_process(tmp_path):
    import torch.multiprocessing as mp

    root = make_grefcoco(tmp_path / "grefcoco")
    ds = ReferEvalDataset(root, split="val")
    single = evaluate(_spoiled_oracle(ds), ds, tmp_path / "single", show=False, gallery=0, progress=False)
    mp.spawn(_two_rank_worker, args=(str(root), str(tmp_path)), nprocs=2)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["n_records"] for r in ranks] == [3, 3]                 # every rank ends with all records
    assert sorted(r["prefills"] for r in ranks) == [1, 1]            # 2 images, one per rank, each prefilled once
    for r in ranks:
        assert r["results"]["gres"] == pytest.approx(single.scores.results["gres"])
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())["results"]["gres"]
    assert saved == pytest.approx(single.scores.results["gres"])


def test_shapes_eval_set_can_be_restricted_to_tasks_and_a_scene_size():
    from pixelsail.evaluate import build_eval_dataset

    ds = build_eval_dataset("shapes", None, split="val", shapes_size=12, shapes_tasks=["res", "gres"],
                            shapes_image_size=64)
    samples = [ds[i] for i in range(len(ds))]
    assert len(samples) == 12 and {s.task for s in samples} <= {"res", "gres"}
    assert all(s.image.shape == (64, 64, 3) for s in samples)
    with pytest.raises(ValueError, match="unknown shapes task 'bogus'"):
        build_eval_dataset("shapes", None, shapes_tasks=["bogus"])


def test_eval_without_caption_scorers_stops_before_the_model_runs(tmp_path, monkeypatch):
    from model_utils import tiny_model

    import pixelsail.metrics

    tiny_model().save_pretrained(tmp_path / "model")
    monkeypatch.setattr(pixelsail.metrics, "caption_scorer_problem", lambda: "caption metrics need pycocoevalcap")
    base = ["eval", "--model", str(tmp_path / "model"), "--task", "shapes", "--limit", "2", "--max-new-tokens", "3",
            "--gallery", "0"]
    runner = CliRunner()
    result = runner.invoke(app, base + ["--shapes-tasks", "res,region_caption", "--out", str(tmp_path / "a")])
    assert result.exit_code == 2
    assert "caption metrics need pycocoevalcap; or pass --no-captions" in result.output
    assert not (tmp_path / "a" / "predictions.jsonl").exists()
    result = runner.invoke(app, base + ["--shapes-tasks", "res,region_caption", "--no-captions",
                                        "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    assert len(read_jsonl(tmp_path / "b" / "predictions.jsonl")) == 2
    # no text task asked for: nothing to check
    result = runner.invoke(app, base + ["--shapes-tasks", "res", "--out", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output


def test_a_scorer_that_fails_loses_no_prediction(tmp_path, monkeypatch):
    import pixelsail.evaluate

    ds = ReferEvalDataset(make_grefcoco(tmp_path / "grefcoco"), split="val")

    def no_java(*args, **kwargs):
        raise RuntimeError("caption metrics need Java")

    monkeypatch.setattr(pixelsail.evaluate, "score_records", no_java)
    with pytest.raises(RuntimeError, match="need Java"):
        evaluate(oracle(ds), ds, tmp_path / "out", show=False, gallery=0)
    assert len(read_jsonl(tmp_path / "out" / "predictions.jsonl")) == len(ds)
