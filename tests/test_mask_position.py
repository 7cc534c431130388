"""The mask-feature place switch (``mask_position``): Gaussian bumps on a lattice, the paper's model at
initialisation, a query that can select a place, the same features in the training and the inference paths."""
import math

import torch
from model_utils import assert_paths_agree_and_round_trip, box_mask, switched_on_as_papers, tiny_model

from pixelsail.model.mask_head import mask_logits, mask_losses
from pixelsail.model.mask_position import MaskPosition

torch.set_grad_enabled(True)


def test_basis_is_a_gaussian_per_lattice_point_at_normalised_pixel_centres():
    pos = MaskPosition(mask_dim=4, grid=2)
    basis = pos.basis((2, 4))                           # 2 rows, 4 columns of pixels; a 2x2 lattice
    assert basis.shape == (8, 4)
    # pixel (row 1, column 0): centre (x, y) = (1/8, 3/4); lattice point (row 1, column 0) sits at (1/4, 3/4)
    dx, dy = (1 / 8 - 1 / 4) * 2, (3 / 4 - 3 / 4) * 2  # in lattice steps (sigma = one step = 1/2)
    assert math.isclose(float(basis[4, 2]), math.exp(-0.5 * (dx * dx + dy * dy)), rel_tol=1e-6)
    assert int(basis[4].argmax()) == 2                  # its nearest lattice point weighs most
    # a place means the same at every map size: the middle pixel of 3x3 is the single pixel of 1x1
    assert torch.allclose(pos.basis((3, 3))[4], pos.basis((1, 1))[0], atol=1e-6)


def test_a_query_learns_to_select_one_place_from_place_features_alone():
    """With content features that say nothing, the query and the projection alone draw a mask of the top-left
    quarter: the spatial map a query adds to the logits can be a bump at one place."""
    torch.manual_seed(0)
    pos = MaskPosition(mask_dim=8, grid=4)
    query = torch.nn.Parameter(torch.randn(1, 8))
    target = torch.from_numpy(box_mask(32, 32, 0, 16, 0, 16)).float()[None]      # (1, 32, 32)
    opt = torch.optim.Adam([query, *pos.parameters()], lr=0.05)
    for _ in range(150):
        feats = pos((16, 16)).permute(2, 0, 1)[None]                              # (1, 8, 16, 16)
        bce, dice = mask_losses(mask_logits(query, feats), target, num_points=256, oversample=3.0,
                                importance=0.75, num_masks=1)
        opt.zero_grad()
        (bce + dice).backward()
        opt.step()
    with torch.no_grad():
        logits = mask_logits(query, pos((16, 16)).permute(2, 0, 1)[None])[0]
    pred = logits > 0
    want = torch.zeros(16, 16, dtype=torch.bool)
    want[:8, :8] = True
    iou = (pred & want).sum() / (pred | want).sum()
    assert float(iou) > 0.8


def test_switched_on_the_model_starts_as_the_papers_and_trains_the_projection():
    model, missing = switched_on_as_papers(mask_position=True)
    assert missing == ["mask_features.position.proj.weight"]
    assert model.mask_features.position.proj.weight.grad.abs().sum() > 0


def test_training_and_inference_paths_add_the_same_place_and_it_round_trips(tmp_path):
    model = tiny_model(mask_position=True)
    torch.nn.init.normal_(model.mask_features.position.proj.weight, std=0.5)
    assert_paths_agree_and_round_trip(model, tmp_path)
