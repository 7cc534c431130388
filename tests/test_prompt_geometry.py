"""The prompt geometry switch (``vp_geometry``): each prompt's centre, box and area measured from its mask, the
paper's model at initialisation, then added to the <vp_k> text tokens only, the same in the training, cached and
batched paths, and saved with the model."""
import math

import numpy as np
import pytest
import torch
from model_utils import box_mask, random_image, tiny_model

from pixelsail.data.sample import Sample
from pixelsail.model import PixelSail
from pixelsail.model.patch_embed import prompt_owner
from pixelsail.model.prompt_geometry import GEOMETRY_DIM, PromptGeometry
from pixelsail.processing import prompt_geometry

torch.set_grad_enabled(True)

QUESTION = "Is <vp_3> left or right of <vp_7>?"
PROMPTS = {3: box_mask(64, 64, 0, 16, 40, 64), 7: box_mask(64, 64, 32, 64, 0, 32)}   # box_mask(h, w, y0, y1, x0, x1)


def test_geometry_of_a_box_and_of_a_point_by_hand():
    mask = np.zeros((40, 80), dtype=bool)
    mask[10:20, 60:80] = True                           # rows 10-19, columns 60-79
    got = prompt_geometry(mask)
    want = [(69.5 + 0.5) / 80, (14.5 + 0.5) / 40, 20 / 80, 10 / 40, math.sqrt(200 / 3200)]
    assert np.allclose(got, want)
    point = np.zeros((40, 80), dtype=bool)
    point[0, 0] = True
    assert np.allclose(prompt_geometry(point), [0.5 / 80, 0.5 / 40, 1 / 80, 1 / 40, math.sqrt(1 / 3200)])


def test_the_processor_keeps_geometry_in_the_prompts_order():
    model = tiny_model()
    inputs = model.processor.image_inputs(random_image(64, 64), PROMPTS)
    assert inputs.prompt_ids.tolist() == [7, 3]         # largest first
    assert inputs.prompt_geometry.shape == (2, GEOMETRY_DIM)
    assert np.allclose(inputs.prompt_geometry[1].numpy(), prompt_geometry(PROMPTS[3]))
    assert model.processor.image_inputs(random_image(64, 64)).prompt_geometry.shape == (0, GEOMETRY_DIM)


def test_features_hold_the_values_and_their_fourier_bands():
    module = PromptGeometry(hidden_size=8, num_bands=2)
    g = torch.tensor([[0.25, 0.5, 0.1, 0.2, 0.3]])
    feats = module.features(g)
    assert feats.shape == (1, GEOMETRY_DIM * 5)
    assert torch.allclose(feats[0, :5], g[0])
    assert torch.allclose(feats[0, 5], torch.tensor(math.sin(math.pi * 0.25)), atol=1e-6)   # x, band 0
    assert torch.allclose(feats[0, 6], torch.tensor(math.sin(2 * math.pi * 0.25)), atol=1e-6)  # x, band 1
    assert not module(g, torch.tensor([3.0])).any()      # zero-initialised gate
    with torch.no_grad():
        module.gate.fill_(0.7)
    two = torch.cat([g, g.flip(-1)])
    out = module(two, torch.tensor([3.0, 0.5]))          # each vector's length: tanh(gate) times its norm
    assert torch.allclose(out.norm(dim=-1), math.tanh(0.7) * torch.tensor([3.0, 0.5]), atol=1e-5)
    assert torch.allclose(module(two, torch.tensor(2.0)).norm(dim=-1), torch.full((2,), 2 * math.tanh(0.7)))
    with torch.no_grad():
        module.gate.fill_(50.0)                         # however far the gate is trained, never past the norm
    assert torch.allclose(module(g, torch.tensor([3.0])).norm(), torch.tensor(3.0))


def _embeds(model, sample):
    batch = model.processor.collate([model.processor(sample)])
    return batch, model.embed_batch(batch["input_ids"], batch["images"])[0]


def test_switched_on_the_model_starts_as_the_papers_then_moves_only_the_tags(tmp_path):
    sample = Sample(image=random_image(64, 64), turns=[(QUESTION, "It is right (B).")], prompts=PROMPTS,
                    task="vp_mcq")
    plain, model = tiny_model().eval(), tiny_model(vp_geometry="tags").eval()
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["prompt_geometry.gate", "prompt_geometry.proj.weight"] and not unexpected
    with torch.no_grad():
        batch, a = _embeds(plain, sample)
        assert torch.equal(a, _embeds(model, sample)[1])          # exactly the paper's inputs at the start
        model.prompt_geometry.gate.fill_(0.8)
        b = _embeds(model, sample)[1]
    ids = batch["input_ids"][0]
    inputs = model.processor.image_inputs(sample.image, PROMPTS)
    for k in (3, 7):
        tag = ids == model.processor.ids[f"vp_{k}"]
        row = inputs.prompt_ids.tolist().index(k)
        with torch.no_grad():
            tag_norm = model.backbone.embed(torch.tensor([model.processor.ids[f"vp_{k}"]])).norm(dim=-1)
            vec = model.prompt_geometry(inputs.prompt_geometry[row:row + 1], tag_norm)[0]
        assert torch.allclose(vec.norm(), math.tanh(0.8) * tag_norm[0])     # as long as tanh(gate) x the tag
        assert torch.allclose(b[0, tag] - a[0, tag], vec.expand(int(tag.sum()), -1), atol=1e-6)
    tags = (ids == model.processor.ids["vp_3"]) | (ids == model.processor.ids["vp_7"])
    assert torch.equal(a[0, ~tags], b[0, ~tags])                    # patches and other words untouched
    # the cached and uncached answers agree, and the switch round-trips through save / load
    prefix = model.prefill_image(sample.image, PROMPTS)
    x = model.respond(prefix, QUESTION, max_new_tokens=5)
    assert x.token_ids == model.respond(prefix, QUESTION, max_new_tokens=5, use_cache=False).token_ids
    model.save_pretrained(tmp_path)
    loaded = PixelSail.from_pretrained(tmp_path).eval()
    assert loaded.config.vp_geometry
    assert loaded.respond(loaded.prefill_image(sample.image, PROMPTS), QUESTION, max_new_tokens=5).token_ids == \
        x.token_ids


def test_a_training_step_reaches_the_projection():
    model = tiny_model(vp_geometry="tags")
    sample = Sample(image=random_image(64, 64), turns=[(QUESTION, "It is right (B).")], prompts=PROMPTS,
                    task="vp_mcq")
    batch = model.processor.collate([model.processor(sample)])
    out = model(batch["input_ids"], batch["labels"], batch["lengths"], batch["images"], batch["masks"])
    out.loss.backward()
    assert model.prompt_geometry.gate.grad.abs() > 0                # closed, the gate is what learns first
    with torch.no_grad():
        model.prompt_geometry.gate.fill_(0.5)
    model.zero_grad()
    model(batch["input_ids"], batch["labels"], batch["lengths"], batch["images"], batch["masks"]).loss.backward()
    assert model.prompt_geometry.proj.weight.grad.abs().sum() > 0   # open, the direction learns too


@pytest.mark.parametrize("injection", [True, False])
def test_geometry_adds_to_the_baselines_pooled_region_too(injection):
    sample = Sample(image=random_image(64, 64), turns=[(QUESTION, "It is right (B).")], prompts=PROMPTS,
                    task="vp_mcq")
    model = tiny_model(vp_geometry="tags", vp_injection=injection).eval()
    with torch.no_grad():
        model.prompt_geometry.gate.fill_(0.8)
        batch, with_geo = _embeds(model, sample)
        model.prompt_geometry.gate.zero_()
        without = _embeds(model, sample)[1]
    tag = batch["input_ids"][0] == model.processor.ids["vp_3"]
    assert (with_geo[0, tag] - without[0, tag]).abs().amax() > 0


def test_on_the_patches_each_covered_patch_gets_its_prompts_vector_and_the_tags_stay_plain():
    sample = Sample(image=random_image(64, 64), turns=[(QUESTION, "It is right (B).")], prompts=PROMPTS,
                    task="vp_mcq")
    plain, model = tiny_model().eval(), tiny_model(vp_geometry="patches").eval()
    model.load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad():
        batch, a = _embeds(plain, sample)
        assert torch.equal(a, _embeds(model, sample)[1])          # exactly the paper's inputs at the start
        model.prompt_geometry.gate.fill_(0.8)
        b = _embeds(model, sample)[1]
    inputs = model.processor.image_inputs(sample.image, PROMPTS)
    owner = prompt_owner(inputs.prompt_ids, inputs.prompt_cover)               # (16,) the k each patch gets
    with torch.no_grad():
        raw = model._raw_patch_embeds(inputs.patches, inputs.grid)       # scaled to the mean patch's norm
        vectors = dict(zip(inputs.prompt_ids.tolist(),
                           model.prompt_geometry(inputs.prompt_geometry, raw.norm(dim=-1).mean())))
    patches = slice(1, 1 + owner.numel())
    for n, k in enumerate(owner.tolist()):
        want = vectors[k] if k >= 0 else torch.zeros_like(vectors[3])
        assert torch.allclose(b[0, patches][n] - a[0, patches][n], want, atol=1e-5)
    assert torch.equal(a[0, 1 + owner.numel():], b[0, 1 + owner.numel():])   # every text token untouched
    assert (owner == 3).any() and (owner == 7).any() and (owner < 0).any()
    prefix = model.prefill_image(sample.image, PROMPTS)                     # cached == uncached
    x = model.respond(prefix, QUESTION, max_new_tokens=5)
    assert x.token_ids == model.respond(prefix, QUESTION, max_new_tokens=5, use_cache=False).token_ids
    with pytest.raises(ValueError, match="vp_geometry"):
        tiny_model(vp_geometry="everywhere")
