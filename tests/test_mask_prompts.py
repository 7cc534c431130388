"""The prompt switch of the mask features (``mask_prompts``): each prompt's vector on the pixels of the patches it
covers, the paper's model at initialisation, the same features in the training and the inference paths."""
import torch
from model_utils import box_mask, random_image, tiny_model

from pixelsail.data.sample import Sample
from pixelsail.model import PixelSail
from pixelsail.model.mask_prompts import PromptMaps

torch.set_grad_enabled(True)


def _vt_sample() -> Sample:
    """'the other red object': the marked box (patch (0, 0) of a 4x4 grid) is not in the target mask."""
    image = random_image(64, 64, seed=3)
    return Sample(image=image, turns=[("Please segment the object with the same colour as <vp_2>.", "Sure, [SEG].")],
                  prompts={2: box_mask(64, 64, 2, 14, 2, 14)}, masks=[box_mask(64, 64, 40, 60, 40, 60)],
                  task="vt_res")


def test_each_prompt_adds_its_vector_on_the_pixels_of_the_patches_it_covers():
    maps = PromptMaps(num_vp_tokens=4, mask_dim=3)
    with torch.no_grad():
        maps.embed.weight.copy_(torch.arange(12, dtype=torch.float32).view(4, 3))
        maps.shared.fill_(0.5)
    model = tiny_model()
    image = random_image(32, 32)
    # <vp_1> covers patch (0, 0); <vp_3> covers the top row, patches (0, 0) and (0, 1)
    inputs = model.processor.image_inputs(image, {1: box_mask(32, 32, 0, 8, 0, 8), 3: box_mask(32, 32, 0, 4, 0, 32)})
    out = maps([inputs, None], inputs.grid, (8, 8))                      # a 2x2 patch grid, features at stride 4
    assert out.shape == (2, 3, 8, 8)
    e1, e3 = maps.embed.weight[1] + 0.5, maps.embed.weight[3] + 0.5
    assert torch.equal(out[0, :, 0, 0], e1 + e3) and torch.equal(out[0, :, 3, 3], e1 + e3)   # patch (0, 0)
    assert torch.equal(out[0, :, 0, 4], e3) and torch.equal(out[0, :, 3, 7], e3)            # patch (0, 1)
    assert not out[0, :, 4:].any() and not out[1].any()                  # the bottom row; the image-less row


def test_switched_on_the_model_starts_as_the_papers_and_trains_the_present_prompt_only():
    plain = tiny_model().eval()
    model = tiny_model(mask_prompts=True).eval()
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["mask_prompts.embed.weight", "mask_prompts.shared"] and not unexpected
    sample = _vt_sample()
    with torch.no_grad():
        a = plain.prefill_image(sample.image, sample.prompts).features
        b = model.prefill_image(sample.image, sample.prompts).features
    assert torch.equal(a, b)
    batch = model.processor.collate([model.processor(sample)])
    model.train()
    out = model(batch["input_ids"], batch["labels"], batch["lengths"], batch["images"], batch["masks"])
    out.loss.backward()
    grad = model.mask_prompts.embed.weight.grad
    assert grad[2].abs().sum() > 0 and not grad[[0, 1, 3]].any()
    assert model.mask_prompts.shared.grad.abs().sum() > 0


def test_training_and_inference_paths_add_the_same_prompts_and_it_round_trips(tmp_path):
    model = tiny_model(mask_prompts=True).eval()
    torch.nn.init.normal_(model.mask_prompts.embed.weight, std=0.5)
    torch.nn.init.normal_(model.mask_prompts.shared, std=0.5)
    sample = _vt_sample()
    batch = model.processor.collate([model.processor(sample)])
    with torch.no_grad():
        embeds, positions, layout = model.embed_batch(batch["input_ids"], batch["images"])
        hidden = model.backbone(embeds, positions, layout)
        trained_path = model._mask_features_batch(hidden, batch["images"], [0])[0]
        prefix = model.prefill_image(sample.image, sample.prompts)
        unprompted = model.prefill_image(sample.image)
    assert torch.allclose(prefix.features[0], trained_path, atol=1e-4)
    moved = (prefix.features - unprompted.features).abs().sum(1)[0]      # (h, w): where the prompt changed them
    assert float(moved[:4, :4].min()) > 0 and float(moved[4:].max()) < float(moved[:4, :4].min())
    model.save_pretrained(tmp_path)
    loaded = PixelSail.from_pretrained(tmp_path).eval()
    assert loaded.config.mask_prompts
    with torch.no_grad():
        assert torch.allclose(loaded.prefill_image(sample.image, sample.prompts).features, prefix.features, atol=1e-5)
