"""The grounding ladder (benchmarks.grounding, benchmarks.ladder): its rungs, its optimiser, its scores and the quick
colour rung learning."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from model_utils import tiny_model


@pytest.mark.slow
def test_ladder_quick_colour_rung_learns_far_above_the_expression_blind_level(tmp_path):
    """The grounding switches (configs/shapes-quick.yaml) learn to follow a colour word: 4,800 samples at 64 px,
    128 held-out expressions, teacher-forced [SEG] masks (measured 64.0 % at seed 0; masking every object: 26.8 %)."""
    from benchmarks import grounding

    grounding.main(["--quick", "--threads", "1", "--out", str(tmp_path)])
    run = json.loads((tmp_path / "runs.jsonl").read_text().splitlines()[0])
    final = run["curve"][-1][1]
    assert run["rung"] == "colour" and run["curve"][-1][0] == 4800 and run["overrides"] == []
    assert final >= run["chance"] + 15, (final, run["chance"])
    assert (tmp_path / "ladder.png").is_file() and "| colour | own |" in (tmp_path / "ladder.md").read_text()


def test_ladder_trains_the_decoder_at_the_recipes_backbone_rate_and_the_rest_at_the_heads_rate():
    from benchmarks.grounding import ladder_optimizer
    from benchmarks.ladder import AttributeOracle
    from pixelsail.config import TrainConfig

    model, oracle = tiny_model(), AttributeOracle(16, ("color",))
    params, optimizer = ladder_optimizer(model, oracle, TrainConfig(), 2e-3, 5e-4)
    rate = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert len(rate) == len(list(params.parameters())) == len(list(model.parameters())) + 1
    assert {rate[id(p)] for p in model.backbone.parameters()} == {5e-4}
    assert rate[id(oracle.tables["color"].weight)] == 2e-3 and rate[id(model.seg_query.mlp[0].weight)] == 2e-3
    _, one_rate = ladder_optimizer(model, None, TrainConfig(), 2e-3, None)
    assert {g["lr"] for g in one_rate.param_groups} == {2e-3}


def test_destination_map_labels_each_pixel_by_what_its_object_shares_with_the_target():
    """colour+shape targets are singled out by both words only, so each val scene has an object of the target's
    colour (another shape) and one of its shape (another colour): the two ways a mask that missed can go wrong."""
    from benchmarks.ladder import DESTINATIONS, RUNGS, rung_samples

    for s in rung_samples(RUNGS["colour_shape"], "val", 6, 64):
        where = s.meta["destinations"]
        assert np.array_equal(where == DESTINATIONS.index("target"), s.masks[0])
        assert np.array_equal(where == DESTINATIONS.index("background"), ~s.meta["all_objects"])
        assert (where == DESTINATIONS.index("same colour")).any() and (where == DESTINATIONS.index("same shape")).any()
    assert "destinations" not in rung_samples(RUNGS["colour_shape"], "train", 1, 64)[0].meta


def test_list_outcomes_tell_an_empty_mask_a_mask_over_two_objects_and_two_masks_on_one_object_apart():
    """Three targets (three 4x4 squares of an 8 x 16 image); each case's counts worked out by hand:
    [found, targets, empty, over two, repeating, masks]."""
    from benchmarks.ladder import list_outcomes, list_shares

    targets = [np.zeros((8, 16), dtype=bool) for _ in range(3)]
    for k, t in enumerate(targets):
        t[2:6, 5 * k:5 * k + 4] = True
    empty = np.zeros((8, 16), dtype=bool)
    assert list_outcomes(np.stack(targets[::-1]), targets).tolist() == [3, 3, 0, 0, 0, 3]   # any order: all found
    assert list_outcomes(np.stack([targets[0], targets[1], empty]), targets).tolist() == [2, 3, 1, 0, 0, 3]
    both = targets[0] | targets[1]
    both[6, :9] = True                                      # IoU 16 / 41 with either target: found by neither
    assert list_outcomes(np.stack([both, targets[2], empty]), targets).tolist() == [1, 3, 1, 1, 0, 3]
    assert list_outcomes(np.stack([targets[0], targets[0], targets[2]]), targets).tolist() == [2, 3, 0, 0, 1, 3]
    half = targets[1].copy()
    half[:, 5:7] = False                                    # IoU 0.5 with its target: still found
    assert list_outcomes(np.stack([targets[0], half, targets[2]]), targets)[0] == 3
    summed = list_outcomes(np.stack([both, targets[2], empty]), targets) + list_outcomes(np.stack(targets), targets)
    assert list_shares(summed) == [66.7, 16.7, 16.7, 0.0]


def test_list_gallery_sorts_each_lost_target_by_what_covered_it_and_names_the_question_s_words():
    """Same three 4x4 squares as above; per target: found, shared (its mask also holds another target), partly
    (a mask holds half of it but is too large for IoU 0.5), missed (no mask holds half of it)."""
    from benchmarks.list_gallery import named_by, target_covers, union_losses

    targets = [np.zeros((8, 16), dtype=bool) for _ in range(3)]
    for k, t in enumerate(targets):
        t[2:6, 5 * k:5 * k + 4] = True
    empty = np.zeros((8, 16), dtype=bool)
    assert target_covers(np.stack(targets[::-1]), targets) == ["found"] * 3
    both = targets[0] | targets[1]
    both[6, :9] = True                                       # IoU 16 / 41 with either target
    assert target_covers(np.stack([both, empty, empty]), targets) == ["shared", "shared", "missed"]
    assert target_covers(np.stack([targets[0] | targets[1], empty, empty]), targets)[0] == "found"   # IoU 16 / 32
    grown = targets[2].copy()
    grown[:, 10:16] = True                                   # IoU 16 / 48 with its target, no other target in it
    assert target_covers(np.stack([targets[0], empty, grown]), targets) == ["found", "missed", "partly"]
    assert target_covers(np.zeros((0, 8, 16), dtype=bool), targets) == ["missed"] * 3
    # union losses: target 0 three quarters covered (4 pixels missed), target 1 wholly missed, target 2 inside
    # grown (rows 0-7, columns 10-15: 32 pixels beyond it, 4 of them on a fourth object that is not a target)
    objects = targets[0] | targets[1] | targets[2]
    objects[7, 12:] = True
    partial = targets[0].copy()
    partial[2, :4] = False
    assert union_losses(np.stack([partial, empty, grown]), targets, objects).tolist() == [48 + 32, 4, 16, 4, 28]
    assert named_by("Please segment all small red objects.") == "size + colour"
    assert named_by("Please segment all circles.") == "shape"


def test_gcg_rung_pairs_each_seg_with_its_phrase_object_and_its_blind_level_is_per_mask():
    from benchmarks.ladder import RUNGS, chance_level, rung_samples

    rung = RUNGS["gcg"]
    samples = rung_samples(rung, "val", 6, 64)
    for s in samples:
        answer = s.turns[0][1]
        assert answer.count("[SEG]") == len(s.masks) == len(s.meta["oracle"]) >= 2
        assert s.task == "gcg" and answer.startswith("There is a <p>")
    # every [SEG] masking every object: per mask |target| / |all objects|, pooled over masks
    inter = sum(int(m.sum()) for s in samples for m in s.masks)
    union = sum(len(s.masks) * int(s.meta["all_objects"].sum()) for s in samples)
    assert chance_level(rung, samples) == pytest.approx(100.0 * inter / union)
    assert chance_level(rung, samples) < chance_level(RUNGS["multi"], rung_samples(RUNGS["multi"], "val", 6, 64))


def test_position_accuracy_scores_each_answer_token_against_its_label(monkeypatch):
    from benchmarks import grounding
    from benchmarks.ladder import RUNGS, rung_samples

    model = tiny_model().eval()
    samples = rung_samples(RUNGS["vp_colour"], "val", 4, 64)          # answers "<vp_k>: colour."
    batch = grounding._encode(model, samples)
    labels = batch["labels"][:, 1:]
    vocab = model.backbone.logits(torch.zeros(1, model.config.hidden_size)).shape[-1]

    def logits_right_but_the_tag(h):                                 # every answer token right except the first
        target = labels.clamp(min=0).clone()
        first = (labels != -100).int().argmax(dim=1)
        target[torch.arange(len(target)), first] = (target[torch.arange(len(target)), first] + 1) % vocab
        return torch.nn.functional.one_hot(target, vocab).float()

    monkeypatch.setattr(model.backbone, "logits", logits_right_but_the_tag)
    got = grounding.position_accuracy(model, samples)
    assert got[0] == 0.0 and all(v == 100.0 for v in got[1:]) and len(got) >= 4


def test_product_task_rungs_serve_the_shapes_mix_questions_with_their_prompts():
    import re

    from benchmarks.ladder import RUNGS, rung_samples

    mcq = rung_samples(RUNGS["vp_mcq"], "val", 6, 64)
    assert all(re.fullmatch(r"\([A-D]\) \S+\.", s.turns[0][1]) and s.prompts for s in mcq)
    assert {s.meta["rung"] for s in mcq} == {"vp_mcq"} and all(s.meta["oracle"] == [] for s in mcq)
    qa = rung_samples(RUNGS["vp_qa"], "val", 6, 64)
    assert all(s.turns[0][1].startswith("<vp_") and s.task == "vp_qa" for s in qa)


def test_the_multiple_choice_rungs_differ_only_in_where_the_letter_stands():
    from benchmarks.ladder import RUNGS, rung_samples

    plain, word_first, induction = (rung_samples(RUNGS[n], "val", 12, 64)
                                    for n in ("vp_mcq", "vp_mcq_word_first", "vp_mcq_induction"))
    for a, b, c in zip(plain, word_first, induction):
        meta = a.meta
        assert a.turns[0][1] == f"{meta['answer']} {meta['correct']}." and b.turns[0][0] == a.turns[0][0]
        assert b.turns[0][1] == c.turns[0][1] == f"It is {meta['correct']} {meta['answer']}."
        # the induction pattern: what follows "<option> (" in the answer follows it in the question too
        assert f"{meta['correct']} {meta['answer']}" in c.turns[0][0]
        assert c.turns[0][0].startswith(a.turns[0][0].split(" (A) ")[0]) and np.array_equal(a.image, c.image)


def test_the_comparison_rungs_ask_one_kind_each_and_answer_it_right():
    import re

    from benchmarks.ladder import RUNGS, rung_samples
    from pixelsail.data.shapes_scene import generate_scene

    for name, kind in (("vp_side", "side"), ("vp_larger", "larger")):
        samples = rung_samples(RUNGS[name], "val", 8, 64)
        assert len(samples) == 8 and {s.meta["question_kind"] for s in samples} == {kind}
        for s in samples:
            assert s.turns[0][1].startswith(f"It is {s.meta['correct']} (")
            if kind == "side":   # the first-named object's side of the second
                m = s.meta
                scene = generate_scene(m["split"], m["index"], m["seed"], 64, m["attempt"])
                first, second = (scene.objects[m["prompt_objects"][int(t)]] for t in
                                 re.findall(r"<vp_(\d+)>", s.turns[0][0].split(" (A) ")[0]))
                assert m["correct"] == ("left" if first.centroid[0] < second.centroid[0] else "right")


def test_option_lookup_rung_trains_on_lookups_and_is_scored_on_the_multiple_choice_alone():
    import re

    from benchmarks.ladder import MCQ_LETTERS, RUNGS, rung_samples

    rung = RUNGS["vp_mcq_lookup"]
    train = rung_samples(rung, "train", 40, 64)
    lookups = [s for s in train if s.meta["rung"] == "option_lookup"]
    assert 8 <= len(lookups) <= 32 and all(
        s.turns[0][1].startswith("It is") for s in train if s.meta["rung"] != "option_lookup")
    for s in lookups:   # each "word (X)" of the answer names the option that letter stands before
        question, answer = s.turns[0]
        options = dict(re.findall(r"\(([A-D])\) (\S+?)(?= \(|\. Answer)", question))
        pairs = re.findall(r"(\S+) \(([A-D])\)", answer)
        assert pairs and all(options[letter] == word for word, letter in pairs)
        assert len({w for w, _ in pairs}) == len(pairs) and set(options) == set(MCQ_LETTERS[:len(options)])
    assert all(s.meta["rung"] == "vp_mcq_lookup" for s in rung_samples(rung, "val", 12, 64))


def test_letter_lookup_rung_asks_one_word_and_answers_the_letter_before_it_in_the_options():
    import re

    from benchmarks.ladder import RUNGS, rung_samples

    samples = rung_samples(RUNGS["letter_lookup"], "train", 30, 64)
    letters = set()
    for s in samples:
        question, answer = s.turns[0]
        word = re.match(r"Which letter is (\S+)\? ", question).group(1)
        options = dict(re.findall(r"\(([A-D])\) (\S+?)(?= \(|\.$)", question))
        assert sorted(options) == list("ABCD") and len(set(options.values())) == 4
        letter = next(k for k, v in options.items() if v == word)
        assert answer == f"It is {word} ({letter})."
        letters.add(letter)
    assert len(letters) >= 3   # the right letter moves: a constant guess scores a quarter


def test_option_lookup_rung_is_the_dense_lookup_on_both_splits_and_scores_its_letters():
    from benchmarks.ladder import RUNGS, rung_samples

    rung = RUNGS["option_lookup"]
    assert rung.metric == "accuracy" and rung.chance == 0.25
    for split in ("train", "val"):
        samples = rung_samples(rung, split, 12, 64)
        endings = ("Answer with the options' letters.", "Answer with the option's letter.")
        assert all(s.meta["rung"] == "option_lookup" and s.turns[0][0].endswith(endings) for s in samples)


def test_letter_accuracy_scores_only_the_letters_after_their_bracket(monkeypatch):
    from benchmarks import grounding
    from benchmarks.ladder import RUNGS, rung_samples

    model = tiny_model().eval()
    samples = rung_samples(RUNGS["vp_mcq_word_first"], "val", 4, 64)   # "It is red (B)."
    batch = grounding._encode(model, samples)
    labels, inputs = batch["labels"][:, 1:], batch["input_ids"][:, :-1]
    paren = model.processor.encode(" (")[-1]
    vocab = model.backbone.logits(torch.zeros(1, model.config.hidden_size)).shape[-1]

    def wrong_everywhere_but(keep):
        def logits(h):
            target = labels.clamp(min=0).clone()
            flip = ~keep & (labels != -100)
            target[flip] = (target[flip] + 1) % vocab
            return torch.nn.functional.one_hot(target, vocab).float()
        return logits

    monkeypatch.setattr(model.backbone, "logits", wrong_everywhere_but(inputs == paren))
    assert grounding.letter_accuracy(model, samples) == 100.0
    monkeypatch.setattr(model.backbone, "logits", wrong_everywhere_but(inputs != paren))
    assert grounding.letter_accuracy(model, samples) == 0.0


def test_option_accuracy_scores_the_words_before_the_letter_and_ignores_the_letter(monkeypatch):
    import benchmarks.grounding as grounding
    from benchmarks.ladder import RUNGS, rung_samples

    model = tiny_model().eval()
    samples = rung_samples(RUNGS["vp_side"], "val", 4, 64)
    proc = model.processor
    paren, left, right = proc.encode(" (")[-1], proc.encode(" left")[-1], proc.encode(" right")[-1]

    def forced(corrupt):
        def next_tokens(model, batch, hidden):
            labels = batch["labels"][:, 1:]
            pred = labels.clone()
            after = torch.zeros_like(pred, dtype=torch.bool)
            after[:, 1:] = batch["input_ids"][:, 1:-1] == paren           # the letter's position
            words = (labels == left) | (labels == right)
            pred[after if corrupt == "letter" else words if corrupt == "word" else torch.zeros_like(after)] = 0
            return pred, labels
        return next_tokens

    for corrupt, want in (("nothing", 100.0), ("letter", 100.0), ("word", 0.0)):
        monkeypatch.setattr(grounding, "_next_tokens", forced(corrupt))
        assert grounding.option_accuracy(model, samples) == want


def test_ladder_weight_average_with_decay_zero_is_the_live_model_and_is_recorded(tmp_path):
    """--ema scores an exponential moving average of the weights beside the live ones; at decay 0 the average is the
    live model, so both curves must agree."""
    from benchmarks import grounding

    grounding.main(["--rungs", "colour", "--samples", "32", "--eval-every", "16", "--eval-samples", "8",
                    "--threads", "1", "--ema", "0.0", "--out", str(tmp_path)])
    run = json.loads((tmp_path / "runs.jsonl").read_text().splitlines()[0])
    assert run["ema"] == 0.0 and [n for n, _ in run["ema_curve"]] == [n for n, _ in run["curve"]] == [16, 32]
    assert [v for _, v in run["ema_curve"]] == [round(v, 1) for _, v in run["curve"]]


def test_ladder_keeps_its_latest_model_at_every_evaluation(tmp_path, monkeypatch):
    """--save-model replaces the run's model at every evaluation (a run stopped between two leaves the last one) and
    at the end; what is on disk loads as the model that was trained, with no partial directory left beside it."""
    import torch

    from benchmarks import grounding
    from pixelsail.model import PixelSail

    states, save = [], grounding.save_latest

    def keep(model, *args):
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return save(model, *args)

    monkeypatch.setattr(grounding, "save_latest", keep)
    models = tmp_path / "models"
    grounding.main(["--rungs", "colour", "--samples", "48", "--eval-every", "16", "--eval-samples", "8",
                    "--threads", "1", "--save-model", str(models), "--out", str(tmp_path)])
    assert len(states) == 3 and any(not torch.equal(states[0][k], v) for k, v in states[2].items())  # it trained
    assert [p.name for p in models.iterdir()] == ["colour-own-seed0"]
    loaded = PixelSail.from_pretrained(models / "colour-own-seed0").state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in states[-1].items())
