"""The batched training path (one patch embedding, injection, upsampler and loss call per patch grid) computes
exactly what the samples would give one at a time."""
import numpy as np
import pytest
import torch
from model_utils import box_mask, random_image, res_sample, tiny_model

from pixelsail.config import DistillConfig
from pixelsail.data.sample import Sample
from pixelsail.model import mask_head
from pixelsail.model.batch_inputs import batch_positions, vision_positions, vp_token_index
from pixelsail.model.patch_embed import prompt_owner

TEACHERS = {"pixel": {"channels": 8, "source": "upsampled"}, "image": {"channels": 12, "source": "vision_tokens"}}


def _samples() -> list[Sample]:
    rng = np.random.default_rng(0)

    def teacher(h: int, w: int) -> dict:
        return {"teacher_features": {"pixel": rng.standard_normal((8, h // 4, w // 4)).astype(np.float32),
                                     "image": rng.standard_normal((12, h // 16, w // 16)).astype(np.float32)}}

    square = random_image(64, 64, seed=1)
    wide = random_image(48, 96, seed=2)
    one = res_sample(square, box_mask(64, 64, 5, 30, 10, 40))
    one.meta.update(teacher(64, 64))
    two = Sample(image=wide, turns=[("Please segment the red circle.", "Sure, [SEG] and [SEG].")],
                 masks=[box_mask(48, 96, 0, 20, 0, 30), box_mask(48, 96, 10, 48, 50, 96)], task="res",
                 meta=teacher(48, 96))
    prompted = Sample(image=random_image(64, 64, seed=3), turns=[("What colour is <vp_3>?", "<vp_3> is red.")],
                      prompts={3: box_mask(64, 64, 0, 40, 0, 40), 5: box_mask(64, 64, 8, 20, 8, 20)}, task="vp_qa")
    text_only = Sample(image=square, turns=[("What shape is this?", "a circle")], task="vqa", meta={"text_only": True})
    three = res_sample(random_image(64, 64, seed=4), box_mask(64, 64, 30, 64, 0, 64))
    three.meta.update(teacher(64, 64))
    return [one, two, prompted, text_only, three]


def _fixed_points(logits, num_points, oversample, importance, generator=None):
    """Deterministic loss points (the same for every mask), so per-sample and batched losses can be compared."""
    side = int(num_points ** 0.5)
    ys, xs = torch.meshgrid(torch.linspace(0.02, 0.98, side), torch.linspace(0.03, 0.97, side), indexing="ij")
    coords = torch.stack([xs.flatten(), ys.flatten()], dim=-1)
    return coords[None].expand(logits.shape[0], -1, -1).to(logits.device)


@pytest.mark.parametrize("vp_text_pool,vp_geometry", [("", ""), ("tags", ""), ("", "tags"), ("", "patches")])
def test_batched_embeddings_and_positions_equal_one_sample_at_a_time(vp_text_pool, vp_geometry):
    model = tiny_model(vp_text_pool=vp_text_pool, vp_geometry=vp_geometry).eval()
    if model.vp_text_proj is not None:
        torch.nn.init.normal_(model.vp_text_proj.weight, std=0.1)   # zero-initialised: make the tag's addition show
    if model.prompt_geometry is not None:
        torch.nn.init.constant_(model.prompt_geometry.gate, 0.5)    # the same for the geometry's closed gate
    proc = model.processor
    features = [proc(s) for s in _samples()]
    batch = proc.collate(features)
    with torch.no_grad():
        embeds, positions, layout = model.embed_batch(batch["input_ids"], batch["images"])
        for i, f in enumerate(features):
            alone = proc.collate([f])
            e, p, lay = model.embed_batch(alone["input_ids"], alone["images"])
            n = f["input_ids"].numel()
            assert torch.allclose(embeds[i, :n], e[0], atol=1e-6)
            assert torch.equal(positions[:, i, :n], p[:, 0])
            assert int(layout.vision_lens[i]) == int(lay.vision_lens[0])
        # each patch lands on its own <vpatch> token (row 0 plain, row 2 with its prompts injected)
        for i in (0, 2):
            image = batch["images"][i]
            n = image.grid[0] * image.grid[1]
            expected = model.backbone.embed(batch["input_ids"][i, 1:1 + n]) + model._patch_embeds(image)[0]
            assert torch.allclose(embeds[i, 1:1 + n], expected, atol=1e-6)
    # the prompted row's <vp_3> text tokens got its region (tags mode) or geometry, or nothing (injection only)
    row = 2
    vp3 = batch["input_ids"][row] == proc.ids["vp_3"]
    plain = model.backbone.embed(batch["input_ids"][row])
    changed = (embeds[row] - plain).abs().amax(-1) > 0
    assert bool(changed[vp3].all()) == bool(vp_text_pool or vp_geometry == "tags")


def test_batched_losses_combine_the_per_sample_losses(monkeypatch):
    monkeypatch.setattr(mask_head, "importance_points", _fixed_points)
    model = tiny_model(distill=DistillConfig(enabled=True, teachers=TEACHERS, weight=1.0)).eval()
    proc = model.processor
    features = [proc(s) for s in _samples()]
    out = model(**proc.collate(features))
    singles = [model(**proc.collate([f])) for f in features]
    masks = [int(f["masks"].shape[0]) for f in features]
    answer_tokens = [int((f["labels"][1:] != -100).sum()) for f in features]
    with_image = [f["image"] is not None for f in features]

    def weighted(name: str, weights: list[float]) -> torch.Tensor:
        return sum(w * s.losses[name] for w, s in zip(weights, singles) if w) / sum(weights)

    assert torch.allclose(out.losses["lm"], weighted("lm", answer_tokens), atol=1e-5)
    for name in ("mask_bce", "mask_dice"):
        assert torch.allclose(out.losses[name], weighted(name, masks), atol=1e-5)
    teacher = [bool(f["teacher_features"]) for f in features]
    for name in ("distill_pixel", "distill_image"):
        expected = sum(s.losses[name] for s, t in zip(singles, teacher) if t) / sum(with_image)
        assert torch.allclose(out.losses[name], expected, atol=1e-5)


def test_batched_gradients_flow_to_every_part():
    model = tiny_model(distill=DistillConfig(enabled=True, teachers=TEACHERS, weight=1.0)).train()
    proc = model.processor
    out = model(**proc.collate([proc(s) for s in _samples()]))
    out.loss.backward()
    for name in ("patch_embed.proj.weight", "prompt_injector.proj.weight", "mask_features.mlp.2.weight",
                 "distill.adapters.pixel.weight", "distill.adapters.image.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and bool(grad.abs().sum() > 0), name


def test_positions_owner_and_tag_index_helpers():
    grid_a, grid_b = (2, 3), (1, 1)

    class Image:
        def __init__(self, grid):
            self.grid = grid

    pos = batch_positions([Image(grid_a), None, Image(grid_b)], seq_len=10)
    va, start_a = vision_positions(grid_a)
    assert torch.equal(pos[:, 0, :8], va) and pos[:, 0, 8:].tolist() == [[start_a, start_a + 1]] * 3
    assert pos[:, 1].tolist() == [list(range(10))] * 3                     # text-only: plain 1-D positions
    vb, start_b = vision_positions(grid_b)
    assert torch.equal(pos[:, 2, :3], vb) and pos[0, 2, 3:].tolist() == list(range(start_b, start_b + 7))

    cover = torch.tensor([[1, 1, 1, 0], [0, 1, 0, 0]], dtype=torch.bool)   # prompt 7 (larger) then prompt 2
    assert prompt_owner(torch.tensor([7, 2]), cover).tolist() == [7, 2, 7, -1]
    assert prompt_owner(torch.zeros(0, dtype=torch.long), torch.zeros(0, 4, dtype=torch.bool)).tolist() == [-1] * 4

    ids = torch.tensor([[5, 10, 11, 5], [12, 0, 0, 10]])
    assert vp_token_index(ids, torch.tensor([10, 11, 12])).tolist() == [[-1, 0, 1, -1], [2, -1, -1, 0]]
