"""Batched inference gives the answers of one-at-a-time inference: padded prefixes/prompts are invisible."""
from __future__ import annotations

import numpy as np
import pytest

from pixelsail import Predictor
from pixelsail.data.registry import build_dataset
from pixelsail.model.batched import respond_batch
from pixelsail.predictor import InputError

QUESTIONS = ["Please segment the red circle.", "What colour is the square?", "Please segment all circles.",
             "Please segment the small blue triangle."]


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor(max_new_tokens=16)


@pytest.fixture(scope="module")
def scenes() -> list[np.ndarray]:
    ds = build_dataset("shapes", split="val", image_size=128, size=4)
    images = [ds[i].image for i in range(4)]
    images[3] = images[3][:96, :112]  # a smaller image: a shorter prefix, padded in the batch
    return images


def assert_same(single, batched) -> None:
    """Model responses compare token ids; Predictor results (no ids) their text."""
    assert getattr(single, "token_ids", single.text) == getattr(batched, "token_ids", batched.text)
    assert len(single.masks) == len(batched.masks)
    for a, b in zip(single.masks, batched.masks):
        assert a.shape == b.shape and (a == b).mean() > 0.999


def test_respond_batch_equals_respond_over_images_of_different_sizes(predictor, scenes):
    model = predictor.model
    prefixes = [model.prefill_image(im) for im in scenes]
    pairs = [(prefixes[i % 4], QUESTIONS[(i + i // 4) % 4]) for i in range(8)]
    batched = respond_batch(model, [p for p, _ in pairs], [q for _, q in pairs], max_new_tokens=16)
    singles = [model.respond(p, q, max_new_tokens=16) for p, q in pairs]
    for s, b in zip(singles, batched):
        assert_same(s, b)
    assert len({tuple(s.token_ids) for s in singles}) > 1  # the answers differ: the comparison is informative
    assert sum(len(s.masks) for s in singles) >= 8
    assert all(len(p.cache) == p.length for p in prefixes)  # the prefixes are left as they were


def test_ask_many_shares_one_prefill_and_equals_ask(predictor, scenes):
    predictor.clear_cache()
    before = predictor.vision_prefill_count
    many = predictor.ask_many(scenes[0], QUESTIONS, batch_size=3)
    assert predictor.vision_prefill_count == before + 1
    for q, got in zip(QUESTIONS, many):
        assert got.question == q and got.seconds > 0
        assert_same(predictor.ask(scenes[0], q), got)


def test_ask_batch_pairs_images_with_questions_and_checks_lengths(predictor, scenes):
    results = predictor.ask_batch(scenes, QUESTIONS)
    for image, q, got in zip(scenes, QUESTIONS, results):
        assert got.image.shape == image.shape
        assert_same(predictor.ask(image, q), got)
    with pytest.raises(InputError, match="one question per image"):
        predictor.ask_batch(scenes[:2], QUESTIONS)
    with pytest.raises(InputError, match="question is empty"):
        predictor.ask_many(scenes[0], ["What colour is the square?", "  "])


@pytest.mark.parametrize("attn", ["eager", "sdpa", "prefix_sdpa"])
def test_padded_keys_are_invisible_to_every_attention(attn):
    import torch

    from pixelsail.model.attention import AttentionLayout, bind_attention

    torch.manual_seed(0)
    hq, hkv, d, past, q_len = 4, 2, 8, 6, 3
    # sequence 0 has all 6 cached keys; sequence 1 only 4, then 2 padding slots holding large garbage
    q = torch.randn(2, hq, q_len, d)
    k, v = torch.randn(2, hkv, past + q_len, d), torch.randn(2, hkv, past + q_len, d)
    k[1, :, 4:6], v[1, :, 4:6] = 50 * torch.randn(hkv, 2, d), 50 * torch.randn(hkv, 2, d)
    valid = torch.ones(2, past + q_len, dtype=torch.bool)
    valid[1, 4:6] = False
    layout = AttentionLayout(torch.tensor([3, 3]), past, valid)
    out = bind_attention(attn, layout, q_len, q.dtype, q.device)(q, k, v, d ** -0.5, 0.0)
    # the reference: sequence 1 alone, its padding slots removed
    keep = torch.tensor([0, 1, 2, 3, 6, 7, 8])
    alone = AttentionLayout(torch.tensor([3]), 4)
    ref = bind_attention(attn, alone, q_len, q.dtype, q.device)(q[1:], k[1:, :, keep], v[1:, :, keep], d ** -0.5, 0.0)
    assert torch.allclose(out[1:], ref, atol=1e-5)


def test_evaluation_predicts_the_same_records_in_batches(predictor):
    from pixelsail.evaluate import predict

    ds = build_dataset("shapes", split="val", image_size=128, size=10)
    one = predict(predictor.model, ds, max_new_tokens=16, progress=False, batch_size=1)
    batched = predict(predictor.model, ds, max_new_tokens=16, progress=False, batch_size=4)
    assert [r["index"] for r in one] == [r["index"] for r in batched]
    assert [r["text"] for r in one] == [r["text"] for r in batched]
    assert [r["pred_masks"] for r in one] == [r["pred_masks"] for r in batched]
    assert len({r["task"] for r in one}) > 1 and any(r["pred_masks"] for r in one)
