"""Scoring conventions: the field's (standard) against the Pixel-SAIL authors' scripts, on hand-computed cases."""
from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
from typer.testing import CliRunner

from pixelsail.cli import app
from pixelsail.data.export import mask_to_rle
from pixelsail.evaluate import write_jsonl
from pixelsail.metrics import RECHECKED_KEY
from pixelsail.metrics_authors import AuthorsCaptionMetric, AuthorsVtresMetric, nltk_meteor_bleu
from pixelsail.scoring import score_records
from pixelsail.wordnet import LEXNAMES, build_nltk_wordnet

SHAPE = (4, 5)
needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="the PTB tokenizer and METEOR 1.5 need Java")


def cells(*pixels: tuple[int, int]) -> np.ndarray:
    m = np.zeros(SHAPE, dtype=bool)
    for r, c in pixels:
        m[r, c] = True
    return m


def row(r: int, n: int) -> np.ndarray:
    return cells(*[(r, c) for c in range(n)])


def record(index: int, task: str, pred: list, gt: list, text: str = "Sure, [SEG].", **meta) -> dict:
    return {"index": index, "task": task, "image_hw": list(SHAPE), "question": "q", "answer": "a", "text": text,
            "pred_masks": [mask_to_rle(m) for m in pred], "gt_masks": [mask_to_rle(m) for m in gt], "meta": meta}


# gRefCOCO, two samples. 0: targets row0[0:3] and row2[0:4], the two masks predicted exactly (union: I = U = 7;
# first mask: I = 3, U = 7). 1: target row3 (5 px), a wrong 2-px mask first, then the right one (union: I = 5,
# U = 7; first mask: I = 0, U = 7).
GRES = [record(0, "gres", [row(0, 3), row(2, 4)], [row(0, 3), row(2, 4)]),
        record(1, "gres", [row(1, 2), row(3, 5)], [row(3, 5)])]


def test_gres_first_mask_against_union_of_masks():
    union = score_records(GRES, convention="standard").results["gres"]
    assert union["cIoU (LISA)"] == pytest.approx(100 * 12 / 14)
    assert union["gIoU (LISA)"] == pytest.approx(100 * (7 / (7 + 1e-5) + 5 / (7 + 1e-5)) / 2)
    first = score_records(GRES, convention="authors")
    assert first.results["gres"] == pytest.approx({"cIoU (authors, first mask)": 100 * 3 / 14,
                                                   "gIoU (authors, first mask)": 100 * 3 / (7 + 1e-5) / 2,
                                                   "samples": 2})
    assert first.per_record == {0: 3 / 7, 1: 0.0} and first.convention == "authors"


def test_answers_the_masks_overruled_are_counted_in_a_labelled_row_under_both_conventions():
    """model.no_target_check: a "No target." the masks overruled is flagged on its record and counted per task."""
    flagged = [dict(GRES[0], rechecked=True), GRES[1]]
    for convention in ("standard", "authors"):
        assert score_records(flagged, convention=convention).results["gres"][RECHECKED_KEY] == 1
        assert RECHECKED_KEY not in score_records(GRES, convention=convention).results["gres"]


# V-T RES, two samples: 0 predicts its 4-px target exactly; 1 predicts nothing (target 5 px)
VTRES = [record(0, "vt_res", [row(0, 4)], [row(0, 4)]), record(1, "vt_res", [], [row(3, 5)], text="I am not sure.")]


def test_vt_res_leaves_unpredicted_samples_out_of_ciou_only_in_the_authors_convention():
    standard = score_records(VTRES, convention="standard").results["vt_res"]
    assert standard["cIoU (LISA)"] == pytest.approx(100 * 4 / 9)          # the missed target's 5 px count in U
    assert standard["gIoU (LISA)"] == pytest.approx(100 * 4 / (4 + 1e-5) / 2)
    authors = score_records(VTRES, convention="authors").results["vt_res"]
    assert authors["cIoU (authors, V-T RES)"] == pytest.approx(100.0)      # 4 / 4: sample 1 adds nothing
    assert authors["gIoU (authors, V-T RES)"] == pytest.approx(100 * 4 / (4 + 1e-5) / 2)   # ... but counts here
    assert authors["unpredicted"] == 1 and authors["samples"] == 2


def test_vt_res_authors_compare_first_prediction_with_first_target_in_file_order():
    # two targets; the file's mapping lists the second-named one first (authors_targets = [1, 0]); the gIoU
    # denominator is the number of targets (2), so one exact hit on the first target gives 50
    a, b = row(0, 2), row(2, 3)
    hit = record(0, "vt_res", [b], [a, b], authors_targets=[1, 0])
    miss = record(0, "vt_res", [b], [a, b])                                 # no mapping order: gt order
    assert score_records([hit], convention="authors").results["vt_res"]["gIoU (authors, V-T RES)"] == \
        pytest.approx(100 * 3 / (3 + 1e-5) / 2)
    assert score_records([miss], convention="authors").results["vt_res"]["cIoU (authors, V-T RES)"] == 0.0
    m = AuthorsVtresMetric()
    with pytest.raises(ValueError, match="at least one target"):
        m.update([a], [])


def test_unknown_convention_is_refused():
    with pytest.raises(ValueError, match="unknown scoring convention 'lisa'; expected one of standard, authors"):
        score_records(GRES, convention="lisa")


# NLTK METEOR by hand (alpha 0.9, beta 3, gamma 0.5): prediction "red square", ground truth "a red square at the
# top"; 2 exact matches in 1 chunk, penalty 0.5 * (1/2) ** 3 = 0.0625.
# authors' order (prediction as reference): P = 2/6, R = 2/2 -> Fmean = PR / (0.9 P + 0.1 R) = 0.8333...
#   -> 0.9375 * 0.8333 = 0.78125
# usual order (ground truth as reference): P = 1, R = 1/3 -> Fmean = (1/3) / (0.9 + 1/30) = 0.357142...
#   -> 0.9375 * 0.357142 = 0.334821...
PRED, GT = "red square", "a red square at the top"


def test_nltk_meteor_swapped_and_usual_order_on_a_hand_computed_pair():
    assert nltk_meteor_bleu({"x": PRED}, {"x": GT})["METEOR"] == pytest.approx(0.78125)
    assert nltk_meteor_bleu({"x": PRED}, {"x": GT}, swapped=False)["METEOR"] == pytest.approx(0.9375 / 2.8)
    same = nltk_meteor_bleu({"x": GT}, {"x": GT})
    assert same["BLEU"] == pytest.approx(1.0) and same["METEOR"] == pytest.approx(1 - 0.5 / 6 ** 3)


@pytest.mark.slow
@needs_java
def test_authors_caption_metric_and_perbench_overall():
    pytest.importorskip("pycocoevalcap")
    records = [record(0, "region_caption", [], [], text=f"<vp_0>: {PRED}", references=[GT]),
               record(1, "vp_mcq", [], [], text="(B)", answer="(B)")] + \
        [dict(r, index=r["index"] + 2) for r in VTRES]
    authors = score_records(records, convention="authors").results
    assert authors["region_caption"]["METEOR (NLTK, swapped)"] == pytest.approx(78.125)
    overall = authors["perbench"]
    assert overall["Overall (PerBench)"] == pytest.approx((78.125 + 100 + (100 + 50 * 4 / (4 + 1e-5)) / 2) / 3)
    standard = score_records(records, convention="standard").results
    assert standard["region_caption"]["METEOR (COCOEvalCap)"] != pytest.approx(78.125)
    assert standard["perbench"]["Overall (PerBench)"] < overall["Overall (PerBench)"]


@needs_java
def test_swapped_cider_puts_the_predictions_in_the_reference_slot():
    pytest.importorskip("pycocoevalcap")
    from pixelsail.metrics import coco_caption_scores

    # CIDEr's document frequencies come from the reference slot: here the predictions
    preds = {"0": "a red square", "1": "a red circle", "2": "a blue circle"}
    gts = {"0": "the red square", "1": "a blue circle", "2": "blue circle on the left"}
    c = AuthorsCaptionMetric()
    for k in preds:
        c.update(k, preds[k], [gts[k]])
    swapped = c.compute()["CIDEr (swapped)"] / 100
    exchanged = coco_caption_scores(gts, {k: [p] for k, p in preds.items()}, metrics=("CIDEr",))["CIDEr"]
    usual = coco_caption_scores(preds, {k: [g] for k, g in gts.items()}, metrics=("CIDEr",))["CIDEr"]
    assert swapped == pytest.approx(exchanged) and swapped - usual > 0.2     # 2.056 against 1.829


def test_wordnet_folder_from_debian_files(tmp_path, monkeypatch):
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    from pixelsail.wordnet import DEBIAN_WORDNET

    if not (DEBIAN_WORDNET / "index.sense").is_file():
        pytest.skip("Debian's wordnet-base / wordnet-sense-index are not installed (scripts/system-deps.sh)")
    root = build_nltk_wordnet(DEBIAN_WORDNET, tmp_path / "nltk_data")
    lexnames = (root / "corpora" / "wordnet" / "lexnames").read_text().splitlines()
    assert len(lexnames) == len(LEXNAMES) == 45 and lexnames[18] == "18\tnoun.person\t1"
    monkeypatch.setattr(nltk.data, "path", [str(root)] + nltk.data.path)   # NLTK opens files on its path only
    with warnings.catch_warnings():  # without the multilingual add-on NLTK warns that it is not there
        warnings.simplefilter("ignore")
        wn = WordNetCorpusReader(str(root / "corpora" / "wordnet"), None)
    assert wn.get_version() == "3.0"
    assert wn.synset("dog.n.01").lexname() == "noun.animal" and wn.synset("run.v.01").lexname() == "verb.motion"
    with pytest.raises(RuntimeError, match="apt-get install wordnet-base wordnet-sense-index"):
        build_nltk_wordnet(tmp_path / "empty", tmp_path / "other")


def test_score_command_writes_one_labelled_table_per_convention(tmp_path):
    preds = tmp_path / "predictions.jsonl"
    write_jsonl(GRES, preds)
    result = CliRunner().invoke(app, ["score", str(preds), "--no-captions", "--convention", "standard",
                                      "--convention", "authors"])
    assert result.exit_code == 0, result.output
    assert "standard convention: json:" in result.output and "authors convention: json:" in result.output
    standard = json.loads((tmp_path / "results.json").read_text())
    authors = json.loads((tmp_path / "results.authors.json").read_text())
    assert standard["convention"] == "standard" and authors["convention"] == "authors"
    assert authors["results"]["gres"]["cIoU (authors, first mask)"] == pytest.approx(100 * 3 / 14)
    assert "Convention: authors (the Pixel-SAIL authors' scripts" in (tmp_path / "results.authors.md").read_text()
    bad = CliRunner().invoke(app, ["score", str(preds), "--convention", "perbench-ish"])
    assert bad.exit_code == 2 and "unknown scoring convention 'perbench-ish'" in bad.output


def test_eval_says_what_to_install_before_running_the_model_when_wordnet_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr("pixelsail.wordnet.nltk_finds_wordnet", lambda: False)
    monkeypatch.setenv("WNSEARCHDIR", str(tmp_path / "no-wordnet"))
    monkeypatch.setenv("PIXELSAIL_NLTK_DATA", str(tmp_path / "nltk_data"))
    result = CliRunner().invoke(app, ["eval", "--task", "shapes", "--limit", "1", "--out", str(tmp_path / "o"),
                                      "--convention", "authors"])
    assert result.exit_code == 2
    assert "lacks cntlist.rev and 13 more: install it with `apt-get install wordnet-base wordnet-sense-index`" \
        in result.output.replace("\n", "")
    assert not (tmp_path / "o").exists()


def test_gcg_is_also_scored_per_object_with_glamms_one_to_one_pairing():
    # image 0 (4 x 5): objects row 0 (5 px) and row 2 (5 px). Predicted: row 0 (IoU 1 with the first), rows 0-3
    # (IoU 5/20 with either) and nothing for row 2 -> pairs (row 0, row 0) = 1.0, then (rows 0-3, row 2) = 0.25:
    # mIoU 0.625, one of two objects recalled at 0.5. The union row (LISA cIoU) sees rows 0-3 against rows 0 + 2:
    # I = 10, U = 20.  Image 1: one object, no mask -> mIoU 0, 0 of 1 recalled.
    everything = row(0, 5) | row(1, 5) | row(2, 5) | row(3, 5)
    recs = [record(0, "gcg", [row(0, 5), everything], [row(0, 5), row(2, 5)], text="There is a <p> x </p> [SEG]."),
            record(1, "gcg", [], [row(1, 5)], text="There is nothing.")]
    got = score_records(recs, captions=False).results["gcg"]
    assert got["mIoU (GLaMM)"] == pytest.approx(100 * (0.625 + 0.0) / 2)
    assert got["mask recall@0.5 (GLaMM pairing)"] == pytest.approx(100 * 1 / 3)
    assert got["cIoU (LISA)"] == pytest.approx(100 * (10 + 0) / (20 + 5))
    # masking every object with every mask: the union scores perfectly, the pairing does not
    lazy = [record(0, "gcg", [row(0, 5) | row(2, 5)] * 2, [row(0, 5), row(2, 5)])]
    got = score_records(lazy, captions=False).results["gcg"]
    assert got["cIoU (LISA)"] == pytest.approx(100.0) and got["mIoU (GLaMM)"] == pytest.approx(50.0)
    assert "mIoU (GLaMM)" not in score_records(recs, captions=False, convention="authors").results.get("gcg", {})
