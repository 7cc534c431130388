"""Tiny models and samples shared by the model tests (no downloads, a few hundred kB of weights)."""
from __future__ import annotations

import numpy as np
import torch

from pixelsail.config import PixelSailConfig
from pixelsail.data.sample import Sample
from pixelsail.model import PixelSail
from pixelsail.tokenizer import build_tiny_tokenizer

WORDS = ("Please segment the small large red green blue circle square triangle. Sure, it is. What colour "
         "shape is this? left of right above below No target. in the image not")

_TOKENIZER = None


def tiny_tokenizer():
    global _TOKENIZER
    if _TOKENIZER is None:
        _TOKENIZER = build_tiny_tokenizer([WORDS] * 4, vocab_size=320, num_vp_tokens=16)
    return _TOKENIZER


def tiny_config(**overrides) -> PixelSailConfig:
    base = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=128, patch_size=16, mask_dim=32, mask_num_points=256, upsample_max_width=64)
    base.update(overrides)
    return PixelSailConfig(**base)


def tiny_model(seed: int = 0, **overrides) -> PixelSail:
    torch.manual_seed(seed)
    return PixelSail(tiny_config(**overrides), tiny_tokenizer())


def random_image(h: int = 64, w: int = 96, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def box_mask(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def res_sample(image: np.ndarray, mask: np.ndarray) -> Sample:
    return Sample(image=image, turns=[("Please segment the red circle.", "Sure, [SEG].")], masks=[mask], task="res")


def switched_on_as_papers(**switch) -> tuple[PixelSail, list[str]]:
    """A model with a zero-initialised mask-feature switch on, loaded with the plain model's weights: asserts that it
    draws the paper's mask features, then runs one referring sample's loss backward (train mode). Returns the model
    and the weight names the plain model lacked."""
    plain = tiny_model().eval()
    model = tiny_model(**switch).eval()
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected
    image = random_image(48, 64)
    with torch.no_grad():
        assert torch.equal(plain.prefill_image(image).features, model.prefill_image(image).features)
    batch = model.processor.collate([model.processor(res_sample(image, box_mask(48, 64, 0, 16, 0, 16)))])
    model.train()
    model(batch["input_ids"], batch["labels"], batch["lengths"], batch["images"], batch["masks"]).loss.backward()
    return model, sorted(missing)


def assert_paths_agree_and_round_trip(model: PixelSail, tmp_path) -> None:
    """The training path (whole sequence) and the inference path (image prefill) give one image the same mask
    features, and so does the model saved and loaded again."""
    model.eval()
    image = random_image(48, 64)
    batch = model.processor.collate([model.processor(res_sample(image, box_mask(48, 64, 0, 16, 0, 16)))])
    with torch.no_grad():
        embeds, positions, layout = model.embed_batch(batch["input_ids"], batch["images"])
        hidden = model.backbone(embeds, positions, layout)
        trained_path = model._mask_features_batch(hidden, batch["images"], [0])[0]
        prefix = model.prefill_image(image)
    assert torch.allclose(prefix.features[0], trained_path, atol=1e-4)
    model.save_pretrained(tmp_path)
    loaded = PixelSail.from_pretrained(tmp_path).eval()
    assert loaded.config == model.config
    with torch.no_grad():
        assert torch.allclose(loaded.prefill_image(image).features, prefix.features, atol=1e-5)
