"""The grounding switches (question read-out of the [SEG] query, bag-of-words auxiliary) and the ladder instrument."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model_utils import box_mask, random_image, res_sample, tiny_model
from pixelsail.model.question_pool import QuestionPool, question_key_mask


def test_question_key_mask_selects_the_turn_the_answer_replies_to():
    # ids: 2 vision tokens, then user turn 1 (3 tokens + end), answer (2 + end), user turn 2 (2 + end), answer (1 + end)
    E = 9  # <|im_end|>
    ids = torch.tensor([[1, 1, 5, 6, 7, E, 3, 4, E, 5, 6, E, 4, E]])
    b, t = torch.tensor([0, 0]), torch.tensor([7, 12])  # a token of the first answer, a token of the second
    mask = question_key_mask(ids, E, torch.tensor([2]), b, t)
    assert mask[0].nonzero().flatten().tolist() == [2, 3, 4]          # first question, not the vision block
    assert mask[1].nonzero().flatten().tolist() == [9, 10]             # second question only (its <|im_end|> excluded)


def test_question_key_mask_with_the_answer_reads_the_phrase_since_the_previous_seg():
    # 2 vision tokens, question (2 + end), answer "a 5 6 [SEG] , a 7 [SEG] ." + end; [SEG] = 8
    E, S = 9, 8
    ids = torch.tensor([[1, 1, 3, 4, E, 2, 5, 6, S, 2, 7, S, 2, E]])
    b, t = torch.tensor([0, 0]), torch.tensor([8, 11])
    mask = question_key_mask(ids, E, torch.tensor([2]), b, t, seg_id=S)
    assert mask[0].nonzero().flatten().tolist() == [2, 3, 5, 6, 7]     # question + "a 5 6"
    assert mask[1].nonzero().flatten().tolist() == [2, 3, 9, 10]       # question + ", a 7": not the first phrase
    assert torch.equal(question_key_mask(ids, E, torch.tensor([2]), b, t)[0], torch.tensor(
        [False, False, True, True] + [False] * 10))                     # without seg_id: the question only


def test_question_pool_starts_as_the_mean_of_the_question_and_ignores_other_tokens():
    torch.manual_seed(0)
    pool = QuestionPool(hidden_size=8, num_heads=2)
    context = torch.randn(1, 5, 8)
    keep = torch.tensor([[False, True, True, False, False]])
    out = pool(torch.randn(1, 8), context, keep)
    assert torch.allclose(out, pool.v(context[0, 1:3]).mean(0, keepdim=True), atol=1e-6)
    context[0, 0] += 100.0  # a token outside the question changes nothing
    assert torch.allclose(pool(torch.randn(1, 8), context, keep), out, atol=1e-6)
    assert torch.equal(pool(torch.randn(1, 8), context, torch.zeros(1, 5, dtype=torch.bool)), torch.zeros(1, 8))


@pytest.mark.parametrize("source,reads_answer", [("hidden", False), ("embedding", False), ("embedding", True),
                                                 ("embedding+hidden", True)])
def test_cached_masks_equal_uncached_with_a_pooled_query(source, reads_answer):
    model = tiny_model(seg_query_pool=source, seg_query_norm=True, seg_query_reads_answer=reads_answer).eval()
    prefix = model.prefill_image(random_image(64, 64))
    for q in ("Please segment the red circle.", "Please segment the blue square."):
        a = model.respond(prefix, q, max_new_tokens=0, answer_prefix="Sure, [SEG]")
        b = model.respond(prefix, q, max_new_tokens=0, answer_prefix="Sure, [SEG]", use_cache=False)
        assert len(a.masks) == 1 and np.array_equal(a.masks[0], b.masks[0])
        assert a.mask_scores == pytest.approx(b.mask_scores, abs=1e-5)
    if reads_answer:  # two phrases, two [SEG]: the same on both paths, and each query reads its own phrase
        gcg = "There is a <p> red circle </p> [SEG] and a <p> blue square </p> [SEG]"
        a = model.respond(prefix, "Describe the image.", max_new_tokens=0, answer_prefix=gcg)
        b = model.respond(prefix, "Describe the image.", max_new_tokens=0, answer_prefix=gcg, use_cache=False)
        assert len(a.masks) == 2 and a.mask_scores == pytest.approx(b.mask_scores, abs=1e-5)
        assert a.mask_scores[0] != pytest.approx(a.mask_scores[1], abs=1e-6)


def test_only_the_pooled_query_reads_the_question_tokens():
    """Same hidden states, questions differing in one word: the paper's query cannot tell them apart, the pooled
    one (over input embeddings) can."""
    proc = tiny_model().processor
    ids = [proc.conversation_ids([(f"Please segment the {c} circle.", "Sure, [SEG].")])[0] for c in ("red", "green")]
    assert len(ids[0]) == len(ids[1])
    ids = torch.tensor(ids)
    seg_t = (ids[0] == proc.ids["seg"]).nonzero().flatten()
    hidden = torch.randn(1, ids.shape[1], 64).expand(2, -1, -1)
    b, t, start = torch.tensor([0, 1]), seg_t.repeat(2), torch.zeros(2, dtype=torch.long)
    for source, differ in (("", False), ("embedding", True)):
        model = tiny_model(seg_query_pool=source).eval()
        q = model.seg_queries(hidden, ids, start, b, t)
        assert torch.allclose(q[0], q[1], atol=1e-6) != differ


@pytest.mark.parametrize("stop", [False, True])
def test_stop_grad_keeps_the_mask_loss_off_the_seg_state_but_trains_the_query_layers(stop):
    proc = tiny_model().processor
    ids = torch.tensor([proc.conversation_ids([("Please segment the red circle.", "Sure, [SEG].")])[0]])
    seg_t = (ids[0] == proc.ids["seg"]).nonzero().flatten()
    model = tiny_model(seg_query_pool="embedding", seg_query_norm=True, seg_query_stop_grad=stop).train()
    hidden = torch.randn(2, ids.shape[1], 64, requires_grad=True)
    q = model.seg_queries(hidden, ids.expand(2, -1), torch.zeros(2, dtype=torch.long), torch.tensor([0, 1]),
                          seg_t.repeat(2))
    q.pow(2).sum().backward()
    reached = 0.0 if hidden.grad is None else float(hidden.grad[:, seg_t[0]].abs().sum())
    assert (reached == 0) == stop
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.seg_query.mlp.parameters())
    assert model.question_pool.v.weight.grad.abs().sum() > 0


def test_the_hidden_pool_lets_the_mask_loss_train_the_question_states_but_not_the_seg_state():
    proc = tiny_model().processor
    ids = torch.tensor([proc.conversation_ids([("Please segment the red circle.", "Sure, [SEG].")])[0]])
    seg_t = (ids[0] == proc.ids["seg"]).nonzero().flatten()
    model = tiny_model(seg_query_pool="embedding+hidden", seg_query_norm=True, seg_query_stop_grad=True).train()
    assert model.seg_query.mlp[0].in_features == 3 * 64                       # [SEG] state + two read-outs
    hidden = torch.randn(2, ids.shape[1], 64, requires_grad=True)
    q = model.seg_queries(hidden, ids.expand(2, -1), torch.zeros(2, dtype=torch.long), torch.tensor([0, 1]),
                          seg_t.repeat(2))
    q.pow(2).sum().backward()
    question = question_key_mask(ids, proc.ids["turn_end"], torch.zeros(1, dtype=torch.long), torch.tensor([0]),
                                 seg_t)[0]
    per_token = hidden.grad.abs().sum(dim=(0, 2))                                 # (L,)
    assert float(per_token[seg_t[0]]) == 0.0
    assert bool((per_token[question] > 0).all()) and float(per_token[~question].sum()) == 0.0
    assert model.hidden_pool.v.weight.grad.abs().sum() > 0 and model.question_pool.v.weight.grad.abs().sum() > 0


def test_bow_loss_is_logged_weighted_and_reaches_the_question_embeddings():
    model = tiny_model(seg_bow_weight=0.5).train()
    image = random_image(64, 64)
    batch = model.processor.collate([model.processor(res_sample(image, box_mask(64, 64, 8, 30, 8, 30)))])
    out = model(**batch)
    assert "seg_bow" in out.losses and float(out.losses["seg_bow"]) > 0
    out.loss.backward()
    emb = model.backbone.llm.get_input_embeddings().weight.grad
    red = model.processor.encode(" red")[0]
    assert emb[red].abs().sum() > 0
    plain = tiny_model(seg_bow_weight=0.0).train()
    assert "seg_bow" not in plain(**batch).losses and plain.seg_bow is None


def test_unknown_pool_source_is_a_clear_error():
    with pytest.raises(ValueError, match="seg_query_pool must be one of"):
        tiny_model(seg_query_pool="everything")


def test_switches_survive_save_and_load(tmp_path):
    model = tiny_model(seg_query_pool="embedding", seg_query_norm=True, seg_bow_weight=0.3).eval()
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path)
    assert loaded.config.seg_query_pool == "embedding" and loaded.config.seg_bow_weight == 0.3
    image = random_image(64, 64)
    q = "Please segment the red circle."
    a = model.respond(model.prefill_image(image), q, max_new_tokens=2, answer_prefix="Sure, [SEG]")
    b = loaded.respond(loaded.prefill_image(image), q, max_new_tokens=2, answer_prefix="Sure, [SEG]")
    assert a.mask_scores == pytest.approx(b.mask_scores, abs=1e-5)
    assert json.loads((tmp_path / "config.json").read_text())["pixelsail"]["seg_query_pool"] == "embedding"


def test_text_only_heads_hide_the_vision_block_from_text_queries_in_the_last_heads():
    from pixelsail.model.attention import AttentionLayout, text_only_head_mask

    layout = AttentionLayout(torch.tensor([3, 0]))     # one sequence with a 3-token vision block, one text-only
    mask = text_only_head_mask(layout, 5, 5, num_heads=4, text_only_heads=1, device=torch.device("cpu"))
    plain = layout.allowed(5, 5, torch.device("cpu"))
    assert mask.shape == (2, 4, 5, 5)
    assert torch.equal(mask[:, :3], plain.expand(-1, 3, -1, -1))                  # the first heads: unchanged
    assert torch.equal(mask[0, 3, :3], plain[0, 0, :3])                           # vision rows still see the block
    assert not mask[0, 3, 3:, :3].any()                                            # text rows: text only,
    assert torch.equal(mask[0, 3, 3:, 3:], torch.ones(2, 2, dtype=torch.bool).tril())   # causally
    assert torch.equal(mask[1, 3], plain[1, 0])                                   # no image: nothing to hide


@pytest.mark.parametrize("attn", ["prefix_sdpa", "sdpa", "eager"])
def test_with_every_head_text_only_the_answer_ignores_the_image_and_cached_equals_full(attn):
    model = tiny_model(text_only_heads=4, attn_implementation=attn).eval()
    q = "What colour is the circle?"
    answers = [model.respond(model.prefill_image(random_image(64, 64, seed=s)), q, max_new_tokens=5) for s in (0, 1)]
    assert answers[0].token_ids == answers[1].token_ids
    mixed = tiny_model(text_only_heads=2, attn_implementation=attn).eval()
    prefix = mixed.prefill_image(random_image(64, 64))
    a = mixed.respond(prefix, q, max_new_tokens=6)
    b = mixed.respond(prefix, q, max_new_tokens=6, use_cache=False)
    assert a.token_ids == b.token_ids
    h = [mixed._run_text(mixed.prefill_image(random_image(64, 64, seed=s)), mixed.processor.prompt_ids(q), 0, True)
         for s in (0, 1)]
    assert not torch.allclose(h[0], h[1])                                         # the other heads still see it


def test_text_only_heads_out_of_range_is_a_clear_error():
    with pytest.raises(ValueError, match="text_only_heads must be between 0 and the 4 attention heads"):
        tiny_model(text_only_heads=5)


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
