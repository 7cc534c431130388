"""The grounding switches: the question and image read-outs of the [SEG] query, the stop-gradient, the bag-of-words
auxiliary and the text-only heads."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from model_utils import box_mask, random_image, res_sample, tiny_model
from pixelsail.model.image_readout import MaskFeatureReadout
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


def test_the_image_read_out_starts_as_the_mean_of_the_features():
    torch.manual_seed(0)
    readout = MaskFeatureReadout(hidden_size=8, mask_dim=4, num_heads=2)
    features = torch.randn(1, 4, 3, 5)
    out = readout(torch.randn(1, 8), features)
    assert torch.allclose(out, readout.v(features.flatten(2).transpose(1, 2)).mean(1), atol=1e-6)
    torch.nn.init.normal_(readout.q.weight)                 # once it has learned where to look, the asker matters
    assert not torch.allclose(readout(torch.randn(1, 8), features), readout(torch.randn(1, 8), features))


def test_only_the_image_read_query_sees_the_mask_features():
    """Same hidden states and question, different mask features: only with seg_query_image_read do the queries
    differ; without features the switch is a clear error."""
    proc = tiny_model().processor
    ids = torch.tensor([proc.conversation_ids([("Please segment the red circle.", "Sure, [SEG].")])[0]]).expand(2, -1)
    seg_t = (ids[0] == proc.ids["seg"]).nonzero().flatten().repeat(2)
    hidden = torch.randn(1, ids.shape[1], 64).expand(2, -1, -1)
    b, start = torch.tensor([0, 1]), torch.zeros(2, dtype=torch.long)
    for on in (False, True):
        model = tiny_model(seg_query_pool="embedding", seg_query_image_read=on).eval()
        features = torch.randn(2, model.config.mask_dim, 8, 8)
        q = model.seg_queries(hidden, ids, start, b, seg_t, features=features)
        assert torch.allclose(q[0], q[1], atol=1e-6) != on
    with pytest.raises(ValueError, match="mask features"):
        model.seg_queries(hidden, ids, start, b, seg_t)


def test_image_read_trains_on_images_of_two_sizes_and_cached_masks_equal_uncached(tmp_path):
    model = tiny_model(seg_query_pool="embedding", seg_query_norm=True, seg_query_stop_grad=True,
                       seg_query_image_read=True).train()
    samples = [res_sample(random_image(64, 64), box_mask(64, 64, 8, 30, 8, 30)),
               res_sample(random_image(64, 96, seed=1), box_mask(64, 96, 20, 40, 50, 90))]
    out = model(**model.processor.collate([model.processor(s) for s in samples]))
    out.loss.backward()
    # where to look (q) and what to read (v) learn from the first step; k once q is no longer zero
    assert model.image_readout.q.weight.grad.abs().sum() > 0 and model.image_readout.v.weight.grad.abs().sum() > 0
    model.eval().save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path).eval()
    prefix = model.prefill_image(random_image(64, 96))
    a = model.respond(prefix, "Please segment the red circle.", max_new_tokens=0, answer_prefix="Sure, [SEG]")
    b = model.respond(prefix, "Please segment the red circle.", max_new_tokens=0, answer_prefix="Sure, [SEG]",
                      use_cache=False)
    c = loaded.respond(loaded.prefill_image(random_image(64, 96)), "Please segment the red circle.",
                       max_new_tokens=0, answer_prefix="Sure, [SEG]")
    assert len(a.masks) == 1 and np.array_equal(a.masks[0], b.masks[0])
    assert a.mask_scores == pytest.approx(b.mask_scores, abs=1e-5) and a.mask_scores == pytest.approx(c.mask_scores,
                                                                                                     abs=1e-5)


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
