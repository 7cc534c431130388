"""The absolute patch position switch (``patch_position``): the paper's model at initialisation, a different
embedding per place once trained, the same in the training and the inference paths."""
import math

import torch
from model_utils import box_mask, random_image, res_sample, tiny_model

from pixelsail.model import PixelSail
from pixelsail.model.patch_position import PatchPosition

torch.set_grad_enabled(True)


def _embeds(model, sample):
    batch = model.processor.collate([model.processor(sample)])
    embeds, positions, layout = model.embed_batch(batch["input_ids"], batch["images"])
    return batch, embeds, positions, layout


def test_features_are_fourier_features_of_the_normalised_patch_centres():
    pos = PatchPosition(hidden_size=8, num_bands=2)
    feats = pos.features((2, 3))                        # 2 rows, 3 columns, row-major
    assert feats.shape == (6, 8)
    x, y = 5 / 6, 1 / 4                                 # patch (row 0, column 2): centre (5/6, 1/4)
    angles = [math.pi * x, 2 * math.pi * x, math.pi * y, 2 * math.pi * y]
    want = torch.tensor([math.sin(a) for a in angles] + [math.cos(a) for a in angles])
    assert torch.allclose(feats[2], want, atol=1e-6)
    # a cell means the same place at every grid size: the centre patch of a 3x3 grid is the middle of a 1x1 grid
    assert torch.allclose(pos.features((3, 3))[4], pos.features((1, 1))[0], atol=1e-6)


def test_switched_on_the_model_starts_as_the_papers_and_then_tells_places_apart():
    plain = tiny_model().eval()
    model = tiny_model(patch_position=True).eval()
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert missing == ["patch_position.proj.weight"] and not unexpected
    image = random_image(48, 64)
    sample = res_sample(image, box_mask(48, 64, 0, 16, 0, 16))
    with torch.no_grad():
        _, a, _, _ = _embeds(plain, sample)
        _, b, _, _ = _embeds(model, sample)
    assert torch.equal(a, b)                           # zero-initialised projection: exactly the paper's inputs
    # a training step reaches the projection
    batch = model.processor.collate([model.processor(sample)])
    model.train()
    out = model(batch["input_ids"], batch["labels"], batch["lengths"], batch["images"], batch["masks"])
    out.loss.backward()
    assert model.patch_position.proj.weight.grad.abs().sum() > 0


def test_training_and_inference_paths_add_the_same_positions_and_it_round_trips(tmp_path):
    model = tiny_model(patch_position=True).eval()
    torch.nn.init.normal_(model.patch_position.proj.weight, std=0.5)
    image = random_image(48, 64)                        # a 3 x 4 patch grid
    sample = res_sample(image, box_mask(48, 64, 0, 16, 0, 16))
    inputs = model.processor.image_inputs(image)
    with torch.no_grad():
        batch, embeds, _, _ = _embeds(model, sample)
        added, raw = model._patch_embeds(inputs)
        plain = model.patch_embed(inputs.patches, inputs.grid)
        tokens = model.backbone.embed(batch["input_ids"])[0, 1:13]
    assert torch.allclose(embeds[0, 1:13], tokens + added, atol=1e-5)      # the <vpatch> tokens of the batch path
    moved = (raw - plain).norm(dim=1)                    # every patch moved, each by its own place
    assert float(moved.min()) > 0 and torch.unique(moved.round(decimals=4)).numel() == 12
    model.save_pretrained(tmp_path)
    loaded = PixelSail.from_pretrained(tmp_path).eval()
    assert loaded.config.patch_position
    with torch.no_grad():
        assert torch.allclose(loaded._patch_embeds(inputs)[1], raw, atol=1e-6)
