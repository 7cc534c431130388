"""A pixelsail checkpoint loaded with other settings (``train.init_from`` with a switch turned on or off): the new
settings take effect, the saved weights are kept, added modules start fresh, a changed shape is an error."""
from __future__ import annotations

import logging

import pytest
import torch

from model_utils import tiny_config, tiny_model
from pixelsail.config import DistillConfig, replace
from pixelsail.model import PixelSail, build_model
from pixelsail.model.pretrained import changed_settings


@pytest.fixture()
def saved(tmp_path):
    model = tiny_model(seed=3, distill=DistillConfig(enabled=True, teachers={"image": {"channels": 8,
                                                                                       "source": "vision_tokens"}}))
    model.save_pretrained(tmp_path)
    return model, tmp_path


def test_same_settings_load_as_saved(saved, caplog):
    model, path = saved
    with caplog.at_level(logging.WARNING, logger="pixelsail.model"):
        loaded = build_model(model.config, init_from=str(path))
    assert not caplog.records
    assert loaded.config == model.config
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())


def test_a_switch_turned_on_takes_effect_and_keeps_the_weights(saved, caplog):
    model, path = saved
    wanted = replace(model.config, seg_query_look="mask")
    with caplog.at_level(logging.WARNING, logger="pixelsail.model"):
        loaded = build_model(wanted, init_from=str(path))
    assert loaded.config.seg_query_look == "mask" and loaded.target_look is not None
    state = loaded.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert [k for k in state if k not in model.state_dict()] == ["target_look.proj.weight"]
    assert torch.count_nonzero(state["target_look.proj.weight"]) == 0       # zero-initialised: starts as saved
    message = caplog.records[-1].getMessage()
    assert "seg_query_look: '' -> 'mask'" in message and "1 parameters start fresh (target_look.proj)" in message
    assert loaded.training                                                   # build_model hands back a model to train


def test_a_section_turned_off_drops_its_weights_and_names_the_setting(saved, caplog):
    model, path = saved
    wanted = replace(model.config, distill=replace(model.config.distill, enabled=False))
    assert changed_settings(model.config, wanted) == {"distill.enabled": (True, False)}
    with caplog.at_level(logging.WARNING, logger="pixelsail.model"):
        loaded = build_model(wanted, init_from=str(path))
    assert not loaded.config.distill.enabled
    assert not any(k.startswith("distill.") for k in loaded.state_dict())
    assert "saved ones are left out (distill.adapters.image)" in caplog.records[-1].getMessage()


def test_the_decoder_shape_and_tokenizer_stay_the_checkpoints(saved):
    """A recipe's backbone fields (e.g. a from-scratch default) cannot resize a saved decoder: they are ignored."""
    model, path = saved
    wanted = replace(tiny_config(hidden_size=128, num_hidden_layers=3, num_vp_tokens=4), seg_query_look="mask",
                     distill=model.config.distill)
    loaded = PixelSail.from_pretrained(path, config=wanted)
    assert (loaded.config.hidden_size, loaded.config.num_hidden_layers) == (64, 2)
    assert loaded.config.num_vp_tokens == model.config.num_vp_tokens and loaded.config.seg_query_look == "mask"
    assert len(loaded.tokenizer) == len(model.tokenizer)


def test_a_changed_shape_is_a_one_line_error(saved):
    model, path = saved
    with pytest.raises(ValueError, match=r"mask_dim: 32 -> 16\): \d+ parameters change shape"):
        PixelSail.from_pretrained(path, config=replace(model.config, mask_dim=16))
