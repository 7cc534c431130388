"""Faults outside the inputs: a second server on a busy port, a full disk while checkpointing, the run's directory
deleted mid-run. Each is one clear error, and nothing half-written is left behind or picked up later."""
import errno
import json
import os
import shutil
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

import pixelsail.commands.use as use
import pixelsail.checkpoints as checkpoints
import pixelsail.train as engine
import train_toy
from fake_pixelsail import FakePixelSail, scene
from pixelsail.cli import app
from pixelsail.config import DatasetSpec, RunConfig, apply_overrides
from pixelsail.predictor import Predictor
from pixelsail.train import latest_checkpoint, train
from pixelsail.web import DemoApp, DemoServer

runner = CliRunner()
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "shapes-tiny.yaml"


def toy_run(output_dir: Path, max_steps: int) -> RunConfig:
    run = RunConfig()
    run.model.hidden_size = 16
    run.data.datasets = [DatasetSpec("toy", 1.0, {"size": 40})]
    fields = {"output_dir": str(output_dir), "max_steps": max_steps, "batch_size": 4, "lr": 1e-2,
              "precision": "fp32", "save_every": 2, "log_every": 1}
    return apply_overrides(run, [f"train.{k}={v}" for k, v in fields.items()])


def run_toy(output_dir: Path, max_steps: int, resume: bool):
    return train(toy_run(output_dir, max_steps), resume=resume, build=train_toy.build_toy(0.0))


def entries(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


# ------------------------------------------------------------------------------------------------ the web server
def test_a_second_server_on_the_same_port_is_refused_before_loading_a_model(monkeypatch):
    first = DemoServer(DemoApp(Predictor(model=FakePixelSail()), samples=[("scene", scene())]), port=0).start()
    try:
        port = first.server_address[1]
        with pytest.raises(OSError) as ei:
            DemoServer(None, "127.0.0.1", port)
        assert ei.value.errno == errno.EADDRINUSE

        def no_model(*args, **kwargs):
            raise AssertionError("the model was loaded although the port is taken")

        monkeypatch.setattr(use, "_predictor", no_model)
        res = runner.invoke(app, ["serve", "--port", str(port), "--samples", "1"])
        assert res.exit_code == 2
        assert res.output.splitlines() == [f"error: cannot listen on 127.0.0.1:{port}: Address already in use "
                                           "(is another server running there? pick another --port)"]
        with urllib.request.urlopen(first.url + "/api/config", timeout=10) as r:  # the first one is unharmed
            assert r.status == 200 and json.loads(r.read())["samples"][0]["name"] == "scene"
    finally:
        first.stop()
    DemoServer(None, "127.0.0.1", port).server_close()  # once the first has stopped, the port binds again at once


# ------------------------------------------------------------------------------------------------ checkpoints
def test_a_full_disk_while_checkpointing_is_one_clear_error_and_leaves_no_partial_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    run_toy(out, max_steps=4, resume=False)
    root = out / "checkpoints"
    assert entries(root) == ["step-00000002", "step-00000004"]

    def disk_full(model, state, path, sharded):  # half a weights file, then the disk is full
        path.mkdir(parents=True)
        with open(path / "model.safetensors", "wb") as f:
            f.write(b"\0" * 1000)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path / "model.safetensors"))

    monkeypatch.setattr(checkpoints, "save_model_dir", disk_full)
    with pytest.raises(OSError) as ei:
        run_toy(out, max_steps=6, resume=True)
    assert ei.value.errno == errno.ENOSPC
    assert str(ei.value) == (f"[Errno 28] checkpoint step-00000006 not written (No space left on device); "
                             f"earlier checkpoints in {root} are unchanged")
    assert entries(root) == ["step-00000002", "step-00000004"]  # the partial .tmp-step-00000006 is gone
    assert latest_checkpoint(out) == root / "step-00000004"
    monkeypatch.undo()
    assert run_toy(out, max_steps=6, resume=True).steps == 6  # once there is room, the run resumes and finishes
    assert latest_checkpoint(out) == root / "step-00000006"


def test_the_train_command_reports_a_failed_checkpoint_in_one_line(monkeypatch):
    def fail(run, **kwargs):
        raise OSError(errno.ENOSPC, "checkpoint step-00000006 not written (No space left on device)")

    monkeypatch.setattr(engine, "train", fail)
    res = runner.invoke(app, ["train", str(CONFIG)])
    assert res.exit_code == 2
    assert res.output.splitlines() == ["error: [Errno 28] checkpoint step-00000006 not written "
                                       "(No space left on device)"]


def test_a_run_directory_deleted_mid_run_stops_with_a_clear_error_and_is_not_recreated(tmp_path, monkeypatch):
    out = tmp_path / "run"
    save = engine.save_checkpoint

    def delete_before_step_4(output_dir, step, *args, **kwargs):
        if step == 4:
            shutil.rmtree(output_dir)
        return save(output_dir, step, *args, **kwargs)

    monkeypatch.setattr(engine, "save_checkpoint", delete_before_step_4)
    with pytest.raises(FileNotFoundError) as ei:
        run_toy(out, max_steps=6, resume=False)
    assert str(ei.value) == (f"[Errno 2] checkpoint step-00000004 not written (the output directory {out} was "
                             "deleted during the run)")
    assert not out.exists()


def test_a_checkpoints_folder_deleted_between_saves_gets_complete_checkpoints_again(tmp_path, monkeypatch):
    out = tmp_path / "run"
    save = engine.save_checkpoint

    def delete_before_step_4(output_dir, step, *args, **kwargs):
        if step == 4:
            shutil.rmtree(output_dir / "checkpoints")
        return save(output_dir, step, *args, **kwargs)

    monkeypatch.setattr(engine, "save_checkpoint", delete_before_step_4)
    assert run_toy(out, max_steps=6, resume=False).steps == 6
    root = out / "checkpoints"
    assert entries(root) == ["step-00000004", "step-00000006"]
    assert all((root / name / "trainer_state.json").is_file() for name in entries(root))
