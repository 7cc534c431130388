"""The [SEG] query's standardisation gets exact statistics of the training data (not the last batches' EMA)."""
import torch
from model_utils import box_mask, random_image, res_sample, tiny_model
from typer.testing import CliRunner

from pixelsail.calibration import calibrate_query_norm
from pixelsail.cli import app
from pixelsail.data.sample import Sample
from pixelsail.model import PixelSail


def _batches(model, count: int = 3) -> list[dict]:
    proc = model.processor
    out = []
    for b in range(count):
        samples = [res_sample(random_image(64, 64, seed=10 * b + i), box_mask(64, 64, 4 * i, 4 * i + 20, 8, 40))
                   for i in range(3)]
        samples.append(Sample(image=random_image(64, 64, seed=99), turns=[("What shape is this?", "a circle")],
                              task="vqa"))   # no [SEG]: contributes nothing
        out.append(proc.collate([proc(s) for s in samples]))
    return out


def test_calibration_sets_the_exact_mean_and_variance_of_the_seg_states():
    model = tiny_model(seg_query_norm=True, seg_query_pool="embedding").train()
    norm = model.seg_query.norm
    norm.running_mean.fill_(5.0)
    norm.running_var.fill_(1e-4)
    batches = _batches(model)
    seen = []
    handle = model.seg_query.register_forward_hook(lambda mod, args, out: seen.append(args[0].detach()))
    with torch.no_grad():
        model.eval()
        for b in batches:
            model(**b)
    handle.remove()
    model.train()
    states = torch.cat(seen).double()
    assert states.shape[0] == 9
    count = calibrate_query_norm(model, batches)
    assert count == 9 and model.training
    assert torch.allclose(norm.running_mean.double(), states.mean(0), atol=1e-5)
    assert torch.allclose(norm.running_var.double(), states.var(0, unbiased=True), rtol=1e-4, atol=1e-7)
    assert calibrate_query_norm(model, batches, max_batches=1) == 3


def test_calibration_leaves_models_without_the_standardisation_alone():
    model = tiny_model(seg_query_norm=False)
    assert calibrate_query_norm(model, _batches(model, 1)) == 0


def test_calibrate_command_rewrites_only_the_statistics(tmp_path):
    model = tiny_model(seg_query_norm=True, seg_query_pool="embedding")
    model.seg_query.norm.running_var.fill_(1e-4)
    directory = tmp_path / "model"
    model.save_pretrained(directory)
    (directory / "run.yaml").write_text("kept: true\n")
    config = tmp_path / "run.yaml"
    config.write_text("data:\n  datasets:\n    - name: shapes\n      weight: 1.0\n      args: {split: train, image_size: 64, "
                      "size: 64, tasks: {res: 1.0}}\n")
    before = PixelSail.from_pretrained(directory).state_dict()
    res = CliRunner().invoke(app, ["calibrate", str(directory), str(config), "--batches", "2", "--batch-size", "4"])
    assert res.exit_code == 0, res.output
    assert "from 8 [SEG] states of 2 batches" in res.output
    after = PixelSail.from_pretrained(directory).state_dict()
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    assert changed == {"seg_query.norm.running_mean", "seg_query.norm.running_var"}
    assert (directory / "run.yaml").read_text() == "kept: true\n"
    bad = CliRunner().invoke(app, ["calibrate", str(tmp_path / "missing"), str(config)])
    assert bad.exit_code == 2 and "no such model directory" in bad.output
