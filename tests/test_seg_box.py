"""seg_box_weight: each [SEG] state predicts its target's box; the loss reaches the state and follows the matching."""
from __future__ import annotations

import pytest
import torch

from model_utils import box_mask, random_image, res_sample, tiny_model
from pixelsail.data.sample import Sample
from pixelsail.model.seg_box import generalized_iou, mask_boxes, seg_box_loss


def test_mask_boxes_span_whole_pixels_and_flag_empty_masks():
    masks = torch.zeros(3, 4, 8, dtype=torch.bool)
    masks[0, 0, 0] = True                                  # one pixel: 1/8 wide, 1/4 high
    masks[1, 1:3, 2:8] = True                              # rows 1-2, columns 2-7
    boxes, present = mask_boxes(masks)
    assert present.tolist() == [True, True, False]
    assert boxes[0].tolist() == pytest.approx([0.0625, 0.125, 0.125, 0.25])
    assert boxes[1].tolist() == pytest.approx([0.625, 0.5, 0.75, 0.5])
    assert boxes[2].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_generalized_iou_by_hand():
    a = torch.tensor([[0.5, 0.5, 1.0, 1.0], [0.5, 0.5, 1.0, 1.0], [0.25, 0.5, 0.5, 1.0]])
    b = torch.tensor([[0.5, 0.5, 1.0, 1.0], [2.5, 0.5, 1.0, 1.0], [0.5, 0.5, 1.0, 1.0]])
    # equal: 1; unit boxes [0,1] and [2,3] apart: IoU 0, hull 3, union 2 -> -1/3; half inside the other: IoU 0.5
    assert generalized_iou(a, b).tolist() == pytest.approx([1.0, -1 / 3, 0.5], abs=1e-5)


def test_box_loss_scores_each_query_against_its_assigned_target_and_skips_empty_ones():
    a, b = torch.from_numpy(box_mask(32, 32, 0, 8, 0, 16)), torch.from_numpy(box_mask(32, 32, 16, 32, 8, 32))
    empty = torch.zeros(1, 32, 32, dtype=torch.bool)
    boxes, _ = mask_boxes(torch.stack([a, b]))
    exact = seg_box_loss(boxes.flip(0), [torch.stack([a, b])], torch.tensor([1, 0]))
    assert float(exact) == pytest.approx(0.0, abs=1e-5)
    swapped = seg_box_loss(boxes.flip(0), [torch.stack([a, b])], torch.tensor([0, 1]))
    assert float(swapped) > 1.0
    # a sample without an object adds no box term; only one does: still zero, and attached to the graph
    pred = boxes[:1].clone().requires_grad_(True)
    none = seg_box_loss(pred, [empty], torch.tensor([0]))
    assert float(none.detach()) == 0.0 and none.requires_grad


def test_box_loss_is_logged_weighted_and_reaches_the_seg_state_past_the_stop():
    """Only the box term left (the mask and language weights at zero, the [SEG] state cut off from the mask loss):
    the transformer still gets a gradient, through the [SEG] state the head reads."""
    model = tiny_model(seg_box_weight=1.0, seg_query_stop_grad=True, mask_bce_weight=0.0, mask_dice_weight=0.0,
                       lm_weight_with_masks=0.0).train()
    batch = model.processor.collate([model.processor(res_sample(random_image(64, 64), box_mask(64, 64, 8, 30, 8, 30)))])
    out = model(**batch)
    assert float(out.losses["seg_box"]) > 0 and float(out.loss.detach()) == pytest.approx(
        float(out.losses["seg_box"]), rel=1e-5)
    out.loss.backward()
    layer = model.backbone.llm.model.layers[-1].mlp.down_proj.weight.grad
    assert layer is not None and layer.abs().sum() > 0
    plain = tiny_model(seg_box_weight=0.0).train()
    assert "seg_box" not in plain(**batch).losses and plain.seg_box is None


def _box_loss(model, masks):
    sample = Sample(image=random_image(64, 64), turns=[("Please segment all red objects.", "Sure, [SEG] and [SEG].")],
                    masks=masks, task="gres")
    torch.manual_seed(5)
    return float(model(**model.processor.collate([model.processor(sample)])).losses["seg_box"])


def test_with_matching_the_box_loss_does_not_depend_on_the_order_of_a_lists_targets():
    a, b = box_mask(64, 64, 4, 24, 4, 24), box_mask(64, 64, 36, 60, 30, 62)
    for on in (False, True):
        model = tiny_model(seg_box_weight=1.0, mask_set_matching=on).train()
        same = _box_loss(model, [a, b]) == pytest.approx(_box_loss(model, [b, a]), abs=1e-6)
        assert same == on


def test_negative_weight_is_a_clear_error_and_the_head_survives_save_and_load(tmp_path):
    with pytest.raises(ValueError, match="seg_box_weight"):
        tiny_model(seg_box_weight=-1.0)
    model = tiny_model(seg_box_weight=0.5)
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path)
    assert loaded.config.seg_box_weight == 0.5
    assert all(torch.equal(p, q) for p, q in zip(model.seg_box.parameters(), loaded.seg_box.parameters()))
