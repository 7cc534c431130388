"""FSDP2 on two gloo processes (CPU): per-decoder-layer sharding and checkpoints that load like the others."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from test_train import subprocess_env
from pixelsail.config import DatasetSpec, RunConfig, apply_overrides, save_yaml

TESTS = Path(__file__).resolve().parent


def torchrun(*args: str, timeout: float = 180) -> None:
    import subprocess

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    proc = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=timeout, cwd=TESTS)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


def test_fsdp_shards_per_decoder_layer_so_ranks_hold_and_gather_less(tmp_path):
    torchrun(str(TESTS / "fsdp_probe.py"), str(tmp_path))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    full = ranks[0]["per_layer"]["full"]
    layer = ranks[0]["per_layer"]["layer_bytes"] / 4            # one decoder layer's projections (4 layers)
    for r in ranks:
        per_layer, one_unit = r["per_layer"], r["one_unit"]
        # at rest each rank holds about half of every parameter
        assert per_layer["local"] <= 0.6 * full
        # while a layer runs, only the root unit and that one layer are gathered whole (forward and backward) ...
        assert per_layer["peak_forward"] == per_layer["peak_backward"] == full - 3 * layer
        assert per_layer["peak_forward"] <= 0.5 * full
        # ... where a single unit gathers the whole model; the sharding does not change the maths
        assert one_unit["peak_forward"] == one_unit["peak_backward"] == full
        assert per_layer["loss"] == pytest.approx(one_unit["loss"], rel=1e-6)
    assert ranks[0]["per_layer"]["local"] + ranks[1]["per_layer"]["local"] == full
    # untied embedding and LM head are units of their own: neither is gathered while a layer runs forward; in
    # backward the embedding stays gathered from its last use (the question pool) on: FSDP2 frees a unit after the
    # backward through its inputs, and token ids have none
    for r in ranks:
        untied, one_unit = r["untied"], r["untied_one_unit"]
        layer, table = untied["layer_bytes"] / 4, untied["embedding_bytes"]
        assert untied["peak_forward"] == untied["full"] - 3 * layer - 2 * table
        assert untied["peak_backward"] == untied["peak_forward"] + table
        assert one_unit["peak_forward"] == untied["full"]
        assert untied["loss"] == pytest.approx(one_unit["loss"], rel=1e-6)


def test_fsdp_checkpoints_carry_config_and_tokenizer_load_with_from_pretrained_and_resume(tmp_path):
    """Per-layer FSDP with gradient checkpointing (the 3B recipe's setting) for 3 steps; the saved models load in
    one process, and a run resumed from the step-2 checkpoint redoes step 3 with the same loss."""
    import shutil

    from model_utils import tiny_config, tiny_tokenizer

    from pixelsail import PixelSail
    from pixelsail.model_check import check_model_dir
    from pixelsail.run_log import read_metrics

    tiny_tokenizer().save_pretrained(str(tmp_path / "tokenizer"))
    run = RunConfig()
    run.model = tiny_config()
    run.data.datasets = [DatasetSpec("shapes", 1.0, {"split": "train", "image_size": 64, "size": 16,
                                                     "tasks": {"res": 1.0}})]
    out = tmp_path / "run"
    fields = {"output_dir": str(out), "max_steps": 3, "batch_size": 1, "lr": 1e-3, "precision": "fp32",
              "save_every": 1, "log_every": 1, "tokenizer": str(tmp_path / "tokenizer"), "parallel": "fsdp",
              "gradient_checkpointing": True}
    run = apply_overrides(run, [f"train.{k}={v}" for k, v in fields.items()])
    save_yaml(run, tmp_path / "run.yaml")
    torchrun("-m", "pixelsail.cli", "train", str(tmp_path / "run.yaml"))
    losses = {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl")}

    checkpoint = out / "checkpoints" / "step-00000003" / "model"
    for directory in (out / "model", checkpoint):
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in directory.iterdir()}
    assert check_model_dir(out / "model") == []        # what `pixelsail eval --model` checks before loading
    model = PixelSail.from_pretrained(out / "model")
    assert model.config.hidden_size == 64 and len(model.tokenizer) == len(tiny_tokenizer())
    # the loaded weights are the final ones, gathered from both ranks' shards: equal to the last checkpoint's file,
    # and different from the step before (training moved them)
    saved = load_file(str(checkpoint / "model.safetensors"))
    before = load_file(str(out / "checkpoints" / "step-00000002" / "model" / "model.safetensors"))
    state = model.state_dict()
    for name, value in saved.items():
        torch.testing.assert_close(state[name], value, rtol=0, atol=0, msg=name)
    assert not torch.equal(before["seg_query.mlp.0.weight"], saved["seg_query.mlp.0.weight"])
    resp = model.respond(model.prefill_image(np.zeros((64, 64, 3), np.uint8)), "Please segment the red circle.",
                         max_new_tokens=3)
    assert isinstance(resp.text, str)

    shutil.rmtree(out / "checkpoints" / "step-00000003")
    shutil.rmtree(out / "model")
    torchrun("-m", "pixelsail.cli", "train", str(tmp_path / "run.yaml"), "--resume")
    resumed = {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl")}
    assert resumed[3] == pytest.approx(losses[3], abs=1e-6)
    assert PixelSail.from_pretrained(out / "model").config.hidden_size == 64
