"""The raw-pixel switch (``mask_image_skip``): each mask-feature cell reads its own pixels only, the model starts as
the paper's, the mask loss trains it, and training and inference add the same maps."""
import torch
from model_utils import assert_paths_agree_and_round_trip, random_image, switched_on_as_papers, tiny_model

from pixelsail.model.image_skip import ImageSkip

torch.set_grad_enabled(True)


def test_each_cell_reads_exactly_its_own_pixels():
    """One changed pixel changes the one feature cell that covers it (row-major patches, row-major cells)."""
    model = tiny_model(mask_image_skip=True).eval()
    skip = model.image_skip
    torch.nn.init.normal_(skip.mlp[-1].weight, std=0.5)
    stride = skip.stride
    image = random_image(48, 64)
    y, x = 37, 29                      # patch (2, 1) of 16 px; within it row 5, column 13 (cell row 1, cell column 3)
    edited = image.copy()
    edited[y, x] = 255 - edited[y, x]
    with torch.no_grad():
        before = skip([model.processor.image_inputs(image)])[0]          # (mask_dim, 48 / s, 64 / s)
        after = skip([model.processor.image_inputs(edited)])[0]
    assert before.shape[-2:] == (48 // stride, 64 // stride)
    changed = (after - before).abs().sum(0) > 1e-6                          # (h, w)
    want = torch.zeros_like(changed)
    want[y // stride, x // stride] = True
    assert torch.equal(changed, want)


def test_the_cell_mlp_sees_the_pixels_in_channel_row_column_order():
    """The cell's input is its (3, s, s) block of the normalised image, as the patch holds it."""
    skip = ImageSkip(patch_size=4, stride=2, mask_dim=3, width=5)
    captured = {}
    skip.mlp[0].register_forward_pre_hook(lambda module, args: captured.update(x=args[0]))
    pixels = torch.arange(2 * 4 * 3 * 4 * 4, dtype=torch.float32).view(2 * 4, 3, 4, 4)  # (N=gh*gw, 3, P, P)

    class Inputs:
        grid = (2, 4)
        patches = pixels.reshape(8, -1)

    skip([Inputs()])
    x = captured["x"]                                       # (1, 4, 8, 12)
    assert x.shape == (1, 4, 8, 12)
    # cell (row 2, column 5) = patch (1, 2) = patch index 6, its cell (0, 1): pixels rows 0:2, columns 2:4
    assert torch.equal(x[0, 2, 5], pixels[6, :, 0:2, 2:4].reshape(-1))


def test_switched_on_the_model_starts_as_the_papers_and_the_mask_loss_trains_it():
    model, missing = switched_on_as_papers(mask_image_skip=True)
    assert missing == [f"image_skip.mlp.{i}.{p}" for i in (0, 2) for p in ("bias", "weight")]
    assert model.image_skip.mlp[-1].weight.grad.abs().sum() > 0


def test_training_and_inference_paths_add_the_same_maps_and_it_round_trips(tmp_path):
    model = tiny_model(mask_image_skip=True)
    torch.nn.init.normal_(model.image_skip.mlp[-1].weight, std=0.5)
    image = random_image(48, 64)
    with torch.no_grad():   # the maps are not zero, so the agreement below is about them
        assert model.image_skip([model.processor.image_inputs(image)]).abs().mean() > 1e-2
    assert_paths_agree_and_round_trip(model, tmp_path)
