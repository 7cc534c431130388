"""scripts/ship_shapes_tiny.py: a finished run becomes the package's shipped model, fp16, with its record."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml

from model_utils import tiny_model
from pixelsail.model import PixelSail

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def ship(tmp_path, monkeypatch):
    """scripts/ship_shapes_tiny.py as a module, writing its asset to tmp_path / "asset" instead of the package."""
    spec = importlib.util.spec_from_file_location("ship_shapes_tiny", REPO / "scripts" / "ship_shapes_tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "ASSET", tmp_path / "asset")
    return module


def _fake_run(root: Path) -> Path:
    run = root / "run"
    model = tiny_model()
    model.save_pretrained(run / "model")
    (run / "run.yaml").write_text(yaml.safe_dump({"train": {"seed": 3, "max_steps": 40, "batch_size": 4}}))
    lines = [{"step": s, "loss": 2.0 - s / 100, "loss/lm": 1.0, "samples_per_s": 50.0, "peak_rss_mb": 900.0 + s,
              "time_s": 2.0 * s} for s in (10, 20, 30, 40)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return run


def test_ship_writes_fp16_weights_that_load_back_to_the_same_model_and_the_runs_record(tmp_path, ship):
    asset = ship.ASSET
    run = _fake_run(tmp_path)
    ship.main([str(run), "--command", "pixelsail train x.yaml", "--machine", "a test box"])
    record = json.loads((asset / "training.json").read_text())
    assert record["seed"] == 3 and record["steps"] == 40 and record["samples_seen"] == 160
    assert record["wall_s"] == 80.0 and record["peak_rss_mb"] == 940.0 and record["machine"] == "a test box"
    assert record["final_losses"]["loss"] == pytest.approx((1.9 + 1.8 + 1.7 + 1.6) / 4)
    from safetensors.torch import load_file
    assert {t.dtype for t in load_file(asset / "model.safetensors").values() if t.is_floating_point()} == {torch.float16}
    shipped, original = PixelSail.from_pretrained(asset), PixelSail.from_pretrained(run / "model")
    for (name, a), (_, b) in zip(shipped.state_dict().items(), original.state_dict().items()):
        assert a.dtype == b.dtype and torch.allclose(a, b.to(torch.float16).to(b.dtype)), name


def test_a_second_stage_keeps_the_first_stages_record(tmp_path, ship):
    asset = ship.ASSET
    run = _fake_run(tmp_path)
    ship.main([str(run), "--command", "stage one", "--machine", "m"])
    # the first stage's record is the asset's own file, which shipping the second overwrites
    ship.main([str(run), "--command", "stage two", "--machine", "m", "--config", "configs/two.yaml",
               "--init-record", str(asset / "training.json")])
    record = json.loads((asset / "training.json").read_text())
    assert record["command"] == "stage two" and record["config"].startswith("configs/two.yaml")
    assert record["init_from"]["command"] == "stage one" and "init_from" not in record["init_from"]


def test_ship_refuses_an_unfinished_run(tmp_path, ship):
    (tmp_path / "run").mkdir()
    with pytest.raises(SystemExit, match="no model.safetensors"):
        ship.main([str(tmp_path / "run"), "--command", "c", "--machine", "m"])
    assert not (tmp_path / "asset").exists()
