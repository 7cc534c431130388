"""benchmarks.switch_copy: a trained model with a zero-initialised switch turned on computes what it did."""
import pytest
import torch
from model_utils import box_mask, random_image, res_sample, tiny_model

from benchmarks.switch_copy import main, with_switches
from pixelsail.model import PixelSail


def _loss(model, image):
    sample = res_sample(image, box_mask(48, 64, 0, 16, 0, 16))
    batch = model.processor.collate([model.processor(sample)])
    torch.manual_seed(0)   # the mask loss samples its points
    with torch.no_grad():
        return model(batch["input_ids"], batch["labels"], batch["lengths"], batch["images"], batch["masks"]).loss


def test_the_copy_with_mask_position_and_mask_prompts_computes_the_originals_loss_and_saves(tmp_path):
    original = tiny_model(seed=3).eval()
    original.save_pretrained(tmp_path / "original")
    main([str(tmp_path / "original"), str(tmp_path / "copy"), "mask_position", "mask_prompts"])
    copy = PixelSail.from_pretrained(tmp_path / "copy").eval()
    assert copy.config.mask_position and copy.config.mask_prompts
    assert not original.config.mask_position and not original.config.mask_prompts
    image = random_image(48, 64)
    assert torch.allclose(_loss(copy, image), _loss(original, image), atol=1e-5)
    new = set(copy.state_dict()) - set(original.state_dict())
    assert any(k.startswith("mask_features.position") for k in new) and len(new) >= 2


def test_only_boolean_switches_that_are_off_can_be_turned_on():
    model = tiny_model()
    with pytest.raises(ValueError, match="'mask_dim' is not a boolean switch"):
        with_switches(model, ["mask_dim"])
    with pytest.raises(ValueError, match="'vp_geometry' is not a boolean switch"):
        with_switches(model, ["vp_geometry"])                 # a string switch needs its value
    with pytest.raises(ValueError, match="'upsample' is already on"):
        with_switches(model, ["upsample"])


def test_a_string_switch_is_turned_on_with_its_value_and_starts_as_the_original():
    original = tiny_model(seed=3).eval()
    copy = with_switches(original, ["vp_geometry=tags"]).eval()
    assert copy.config.vp_geometry == "tags" and not original.config.vp_geometry
    image = random_image(48, 64)
    assert torch.allclose(_loss(copy, image), _loss(original, image), atol=1e-5)
    with pytest.raises(ValueError, match="'vp_geometry' is already on"):
        with_switches(copy, ["vp_geometry=patches"])
