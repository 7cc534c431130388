"""seg_query_look: the query gets the mask features pooled where its target is thought to be (its first mask or
the box head's box)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from model_utils import box_mask, random_image, res_sample, tiny_model
from pixelsail.model.mask_head import mask_logits
from pixelsail.model.target_look import TargetLook, box_window, core_window, mask_window


def test_window_sums_to_one_peaks_at_the_box_centre_and_spreads_with_the_box():
    boxes = torch.tensor([[0.31, 0.72, 0.2, 0.2], [0.31, 0.72, 0.8, 0.8], [0.5, 0.5, 0.0, 0.0]])
    w = box_window(boxes, (10, 20))
    assert w.shape == (3, 10, 20)
    assert w.flatten(1).sum(1).tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-5)
    # centre (0.31, 0.72) lies in column 6 of 20 and row 7 of 10
    assert divmod(int(w[0].flatten().argmax()), 20) == (7, 6)
    # a box four times larger spreads its weight: less of it on the peak cell
    assert float(w[1].max()) < float(w[0].max()) / 4
    # an empty box still spreads over about one cell, not a division by zero
    assert torch.isfinite(w[2]).all() and float(w[2].max()) < 1.0


def test_windows_read_the_features_of_the_object_under_them():
    """Two flat objects in a feature map: a box or a first mask on either reads that object's vector (the projection
    set to the identity), a box half on each reads a mix, an empty mask reads nothing."""
    feats = torch.zeros(1, 3, 16, 16)
    feats[0, 0, 2:8, 2:8] = 1.0              # object a: rows and columns 2-7
    feats[0, 1, 8:14, 8:14] = 1.0            # object b: rows and columns 8-13
    look = TargetLook(mask_dim=3).requires_grad_(False)
    assert look(box_window(torch.tensor([[0.3, 0.3, 0.4, 0.4]]), (16, 16)), feats).abs().max() == 0.0  # zero at start
    with torch.no_grad():
        look.proj.weight.copy_(torch.eye(3))
    on_a = look(box_window(torch.tensor([[5 / 16, 5 / 16, 6 / 16, 6 / 16]]), (16, 16)), feats)[0]
    on_b = look(box_window(torch.tensor([[11 / 16, 11 / 16, 6 / 16, 6 / 16]]), (16, 16)), feats)[0]
    assert on_a[0] > 0.9 and on_a[1] < 0.05 and on_b[1] > 0.9 and on_b[0] < 0.05
    between = look(box_window(torch.tensor([[0.5, 0.5, 0.5, 0.5]]), (16, 16)), feats)[0]
    assert float(between[0]) == pytest.approx(float(between[1]), abs=1e-5) and 0.1 < float(between[0]) < 0.5
    # a first mask over object b and one background row: b's vector, diluted by the background cells only
    logits = torch.full((2, 16, 16), -3.0)
    logits[0, 8:14, 8:14] = 2.0
    logits[0, 0, :] = 0.5
    window = mask_window(logits)
    assert window[0].sum() == pytest.approx(1.0) and window[1].abs().sum() == 0.0
    read = look(window, feats.expand(2, -1, -1, -1))
    assert read[0].tolist() == pytest.approx([0.0, 36 / 52, 0.0], abs=1e-5) and read[1].abs().max() == 0.0
    # the core window weights the same cells by their logits: the sure middle (2.0) outweighs the rim (0.5) 4 to 1
    window = core_window(logits)
    assert window[0].sum() == pytest.approx(1.0) and window[1].abs().sum() == 0.0
    assert (window[0] > 0).equal(mask_window(logits)[0] > 0)
    read = look(window, feats.expand(2, -1, -1, -1))
    assert read[0].tolist() == pytest.approx([0.0, 72 / 80, 0.0], abs=1e-5)


@pytest.mark.parametrize("source", ["mask", "core", "box"])
def test_switch_starts_as_without_it_learns_and_survives_save_and_load(tmp_path, source):
    plain = tiny_model(seg_box_weight=1.0).eval()
    model = tiny_model(seg_box_weight=1.0, seg_query_look=source).eval()
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing == ["target_look.proj.weight"]
    image = random_image(64, 96)
    ask = dict(max_new_tokens=0, answer_prefix="Sure, [SEG]")
    a = plain.respond(plain.prefill_image(image), "Please segment the red circle.", **ask)
    b = model.respond(model.prefill_image(image), "Please segment the red circle.", **ask)
    assert a.mask_scores == pytest.approx(b.mask_scores, abs=1e-6)
    # two images of different sizes in one batch: the projection gets a gradient from the mask loss
    samples = [res_sample(random_image(64, 64), box_mask(64, 64, 8, 30, 8, 30)),
               res_sample(random_image(64, 96, seed=1), box_mask(64, 96, 20, 40, 50, 90))]
    model.train()
    model(**model.processor.collate([model.processor(s) for s in samples])).loss.backward()
    assert model.target_look.proj.weight.grad.abs().sum() > 0
    with torch.no_grad():
        model.target_look.proj.weight.normal_()
    model.eval().save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path).eval()
    c = model.respond(model.prefill_image(image), "Please segment the red circle.", **ask)
    d = model.respond(model.prefill_image(image), "Please segment the red circle.", use_cache=False, **ask)
    e = loaded.respond(loaded.prefill_image(image), "Please segment the red circle.", **ask)
    assert c.mask_scores != pytest.approx(a.mask_scores, abs=1e-4)            # the look now moves the masks
    assert np.array_equal(c.masks[0], d.masks[0]) and c.mask_scores == pytest.approx(e.mask_scores, abs=1e-5)


def test_unknown_source_and_box_without_its_head_are_clear_errors():
    with pytest.raises(ValueError, match="seg_query_look must be one of"):
        tiny_model(seg_query_look="colour")
    with pytest.raises(ValueError, match="seg_box_weight"):
        tiny_model(seg_query_look="box")


def test_first_mask_loss_is_logged_weighted_and_needs_the_look():
    """seg_look_first_weight scores the first query's mask too: a loss of its own, in the total at its weight."""
    with pytest.raises(ValueError, match="seg_look_first_weight"):
        tiny_model(seg_look_first_weight=0.5)
    with pytest.raises(ValueError, match="seg_look_first_weight"):
        tiny_model(seg_query_look="mask", seg_look_first_weight=-1.0)
    sample = res_sample(random_image(64, 64), box_mask(64, 64, 8, 30, 8, 30))
    parts = {}
    for weight in (0.0, 0.5):
        model = tiny_model(seg_query_look="mask", seg_look_first_weight=weight).train()
        torch.manual_seed(3)
        parts[weight] = model(**model.processor.collate([model.processor(sample)]))
    assert "first_mask" not in parts[0.0].losses and float(parts[0.5].losses["first_mask"]) > 0
    assert float(parts[0.5].losses["mask_dice"]) == float(parts[0.0].losses["mask_dice"])   # same points drawn
    extra = float(parts[0.5].loss.detach() - parts[0.0].loss.detach())
    assert extra == pytest.approx(0.5 * float(parts[0.5].losses["first_mask"]), rel=1e-4)


@pytest.mark.parametrize("source", ["mask", "core"])
def test_second_round_reads_under_the_refined_querys_mask(source):
    """seg_look_rounds: 2 is the look taken again, its window from the mask of the first round's refined query, with
    the same projection: equal to composing the pieces by hand; more rounds than one need a mask window."""
    with pytest.raises(ValueError, match="seg_look_rounds"):
        tiny_model(seg_box_weight=1.0, seg_query_look="box", seg_look_rounds=2)
    with pytest.raises(ValueError, match="seg_look_rounds"):
        tiny_model(seg_query_look=source, seg_look_rounds=0)
    once, twice = (tiny_model(seg_query_look=source, seg_look_rounds=n).eval() for n in (1, 2))
    with torch.no_grad():
        once.target_look.proj.weight.normal_(std=0.5)
    twice.load_state_dict(once.state_dict())
    proc = once.processor
    ids = torch.tensor([proc.conversation_ids([("Please segment the red circle.", "Sure, [SEG].")])[0]])
    seg_t = (ids[0] == proc.ids["seg"]).nonzero().flatten()
    torch.manual_seed(0)
    hidden = torch.randn(1, ids.shape[1], 64)
    features = torch.randn(1, once.config.mask_dim, 8, 8)
    b, start = torch.tensor([0]), torch.zeros(1, dtype=torch.long)
    with torch.no_grad():
        first_round, first = once.seg_queries(hidden, ids, start, b, seg_t, features=features, with_first=True)
        second_round = twice.seg_queries(hidden, ids, start, b, seg_t, features=features)
        windowed = core_window if source == "core" else mask_window
        by_hand = first + once.target_look(windowed(mask_logits(first_round, features)), features)
    assert torch.allclose(second_round, by_hand, atol=1e-5)
    assert not torch.allclose(second_round, first_round, atol=1e-3)   # the refined mask moved the window
