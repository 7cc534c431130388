"""The training engine: mixture sampling, length grouping, torchrun (DDP/FSDP), atomic checkpoints, exact resume.

Most tests use the tiny stand-in model of ``train_toy.py`` (same API as PixelSail); the last one trains the real
tiny PixelSail on the shapes world for a few steps.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

import train_toy
from pixelsail.config import DatasetSpec, RunConfig, apply_overrides
from pixelsail.data.mixture import (BatchStream, Mixture, MixtureSampler, SamplerState, micro_batch_indices,
                                    micro_batches)
from pixelsail.run_log import read_metrics
from pixelsail.train import latest_checkpoint, lr_factor, train

TOY_SCRIPT = Path(train_toy.__file__)


def toy_run(output_dir: Path, **train_fields) -> RunConfig:
    run = RunConfig()
    run.model.hidden_size = 16
    run.data.datasets = [DatasetSpec("toy", 1.0, {"size": 40})]
    fields = {"output_dir": str(output_dir), "max_steps": 6, "batch_size": 4, "lr": 1e-2, "precision": "fp32",
              "save_every": 2, "log_every": 1, **train_fields}
    return apply_overrides(run, [f"train.{k}={v}" for k, v in fields.items()])


def write_config(run: RunConfig, path: Path) -> Path:
    from pixelsail.config import save_yaml

    save_yaml(run, path)
    return path


def losses_by_step(output_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(output_dir / "metrics.jsonl")}


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path), **extra)
    env.pop(train_toy.STEP_SLEEP_ENV, None)
    env.update(extra)
    return env


def run_toy_here(config: Path, *args: str) -> None:
    """The launcher of ``run_toy`` in this process (saves an interpreter start-up; same single thread)."""
    threads = torch.get_num_threads()
    try:
        train_toy.main([str(config), *args])
    finally:
        torch.set_num_threads(threads)


def run_toy(config: Path, *args: str, nproc: int = 1, timeout: float = 120, **env: str
            ) -> subprocess.CompletedProcess:
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               str(TOY_SCRIPT), str(config), *args]
    else:
        cmd = [sys.executable, str(TOY_SCRIPT), str(config), *args]
    proc = subprocess.run(cmd, env=subprocess_env(**env), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


# ---------------------------------------------------------------------------------------------------------------
# schedule


def test_overrides_index_lists_add_dataset_args_and_name_what_is_wrong():
    from pixelsail.config import load_yaml

    run = load_yaml(Path(__file__).parents[1] / "configs" / "shapes-tiny.yaml", RunConfig)
    new = apply_overrides(run, ["data.datasets.0.weight=2", "data.datasets.0.args.dataset.args.seed=7",
                                "model.seg_query_pool=hidden"])
    assert new.data.datasets[0].weight == 2.0 and new.model.seg_query_pool == "hidden"
    assert new.data.datasets[0].args["dataset"]["args"]["seed"] == 7                # a new key of a dataset's args
    assert "seed" not in run.data.datasets[0].args["dataset"]["args"]               # the original is untouched
    emptied = apply_overrides(apply_overrides(run, ["model.vp_geometry=tags"]), ["model.vp_geometry="])
    assert emptied.model.vp_geometry == ""                       # an empty value empties a text setting (not None)
    assert apply_overrides(run, ["train.init_from="]).train.init_from is None       # an unset one stays unset
    for bad, why in (("data.datasets.1.weight=1", "datasets has no item '1' \\(it has 1\\)"),
                     ("data.datasets.first.weight=1", "has no item 'first'"),
                     ("train.nope=1", "no such field 'nope'"), ("model.distill.x.y=1", "no such section 'x'"),
                     ("train.lr", "not of the form")):
        with pytest.raises(ValueError, match=why):
            apply_overrides(run, [bad])


def test_lr_factor_warms_up_linearly_then_follows_cosine_to_zero():
    # 200 steps, 5% warm-up = 10 steps: 0.1, 0.2, ... 1.0, then cosine over the remaining 190 steps
    assert lr_factor(0, 200, 0.05) == pytest.approx(0.1)
    assert lr_factor(4, 200, 0.05) == pytest.approx(0.5)
    assert lr_factor(9, 200, 0.05) == pytest.approx(1.0)
    assert lr_factor(10, 200, 0.05) == pytest.approx(1.0)
    assert lr_factor(105, 200, 0.05) == pytest.approx(0.5)          # half-way through the cosine
    assert lr_factor(200, 200, 0.05) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(0, 200, 0.0) == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------------------------
# mixture and sampler


def test_mixture_weights_are_repeat_factors():
    a, b = train_toy.ToyDataset(10), train_toy.ToyDataset(6)
    mix = Mixture([a, b], [2.0, 0.5], ["a", "b"])
    assert len(mix) == 16 and mix.epoch_size() == 2 * 10 + 3
    idx = mix.epoch_indices(seed=0, epoch=0)
    counts = np.bincount(idx, minlength=16)
    assert (counts[:10] == 2).all()                       # weight 2: every sample of a twice
    assert sorted(np.unique(idx[idx >= 10])) == sorted(set(idx[idx >= 10])) and (counts[10:] <= 1).all()
    assert counts[10:].sum() == 3                         # weight 0.5: a random half of b, without repeats
    assert mix[12].meta["index"] == 2                     # global 12 is b[2]
    assert not np.array_equal(idx, mix.epoch_indices(seed=0, epoch=1))
    np.testing.assert_array_equal(idx, Mixture([a, b], [2.0, 0.5]).epoch_indices(seed=0, epoch=0))


def test_mixture_rejects_bad_weights_and_unknown_datasets():
    with pytest.raises(ValueError, match="weight"):
        Mixture([train_toy.ToyDataset(4)], [-1.0], ["neg"])
    with pytest.raises(ValueError, match="no samples"):
        Mixture([train_toy.ToyDataset(4)], [0.0], ["zero"])
    from pixelsail.config import DataConfig

    with pytest.raises(ValueError, match="data.datasets entry .nonexistent.*unknown dataset"):
        Mixture.from_config(DataConfig(datasets=[DatasetSpec("nonexistent")]))

    def broken(sample):
        if sample.meta["index"] == 3:
            raise ValueError("bad mask")
        return train_toy.ToyProcessor()(sample)

    mix = Mixture([train_toy.ToyDataset(2), train_toy.ToyDataset(6)], [1.0, 1.0], ["ok", "flaky"])
    stream = BatchStream(MixtureSampler(mix, 8, 0), broken, train_toy.ToyProcessor().collate, rank=0,
                         world_size=1, grad_accum=1)
    with pytest.raises(RuntimeError, match="dataset 'flaky' sample 3: .*ValueError: bad mask"):
        stream.build_window(0, 0, 1)


def test_global_batches_do_not_depend_on_world_size_or_accumulation():
    sampler = MixtureSampler(Mixture([train_toy.ToyDataset(40)], [1.0]), global_batch=8, seed=3)
    assert sampler.steps_per_epoch == 5
    gb = sampler.global_batch_at(0, 2)
    for world, accum in [(1, 1), (1, 4), (2, 1), (2, 2), (4, 2), (8, 1)]:
        shards = [micro_batch_indices(gb, r, world, accum) for r in range(world)]
        assert sorted(i for s in shards for mb in s for i in mb) == sorted(gb)
        # micro-step a of every rank together is chunk a of the global batch
        assert [i for r in range(world) for i in shards[r][0]] == gb[:len(gb) // accum]
    with pytest.raises(ValueError, match="does not split"):
        micro_batch_indices(gb, 0, 3, 1)
    # the same (seed, epoch) gives the same batches; epochs roll over in advance()
    again = MixtureSampler(Mixture([train_toy.ToyDataset(40)], [1.0]), global_batch=8, seed=3)
    assert again.global_batch_at(0, 2) == gb
    assert MixtureSampler.advance(SamplerState(0, 4), 5) == SamplerState(1, 0)
    assert MixtureSampler.advance(SamplerState(1, 3), 5, n=9) == SamplerState(3, 2)


def toy_stream(world=1, rank=0, accum=1, batch=4, grouped=True, start=None, group=3, size=40, seed=0):
    proc = train_toy.ToyProcessor()
    sampler = MixtureSampler(Mixture([train_toy.ToyDataset(size)], [1.0]), batch * world * accum, seed)
    return BatchStream(sampler, proc, proc.collate, rank=rank, world_size=world, grad_accum=accum,
                       group_batches=group, length_grouped=grouped, start=start)


def stream_steps(stream, n, num_workers=0):
    """The first n steps as (state after the step, per-micro-batch (indices, targets))."""
    out = []
    it = micro_batches(stream, num_workers=num_workers)
    for _ in range(n):
        state, mbs = next(it)
        out.append((state, [mb["target"].tolist() for mb in mbs]))
    return out


def test_stream_resumes_mid_window_and_across_epochs():
    # 40 samples / 4 = 10 steps per epoch, windows of 3 steps: 0-2, 3-5, 6-8, 9
    full = stream_steps(toy_stream(), 16)
    assert full[9][0] == SamplerState(1, 0) and full[15][0] == SamplerState(1, 6)
    for start in (1, 4, 9, 11):
        state = full[start - 1][0]
        resumed = stream_steps(toy_stream(start=state), 16 - start)
        assert resumed == full[start:], f"resuming after step {start}"


def test_processing_is_seeded_per_sample_and_workers_do_not_change_the_stream():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    main = stream_steps(toy_stream(), 7, num_workers=0)
    assert torch.equal(torch.get_rng_state(), before)      # processing left the training RNG alone
    assert stream_steps(toy_stream(), 7, num_workers=2) == main
    assert stream_steps(toy_stream(seed=1), 7) != main


def test_length_grouping_cuts_sorted_runs_and_keeps_the_window_samples():
    lengths = {i: 6 + 2 * (i % 4) for i in range(40)}
    grouped, plain = toy_stream(grouped=True, group=5), toy_stream(grouped=False, group=5)
    wg, wp = grouped.build_window(0, 0, 5), plain.build_window(0, 0, 5)
    assert sorted(i for mb in wg.indices for i in mb) == sorted(i for mb in wp.indices for i in mb)
    sorted_lengths = sorted(lengths[i] for mb in wg.indices for i in mb)
    runs = sorted(sorted(lengths[i] for i in mb) for mb in wg.indices)
    assert [x for r in runs for x in r] == sorted_lengths    # each micro-batch is a contiguous run of lengths

    def padding(w):
        return sum(len(mb) * max(lengths[i] for i in mb) - sum(lengths[i] for i in mb) for mb in w.indices)

    assert padding(wg) < padding(wp)
    # with two ranks, the window's samples are the same as with one rank (only their order within it differs)
    ranks = [toy_stream(world=2, rank=r, batch=2, group=5).build_window(0, 0, 5) for r in range(2)]
    assert sorted(i for w in ranks for mb in w.indices for i in mb) == sorted(i for mb in wg.indices for i in mb)


# ---------------------------------------------------------------------------------------------------------------
# training runs


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory) -> Path:
    """4 steps, one process, global batch 4 (length grouping off: it groups within each rank's share)."""
    out = tmp_path_factory.mktemp("one") / "run"
    run = toy_run(out, batch_size=4, max_steps=4, save_every=0, length_grouped=False)
    run_toy_here(write_config(run, out.parent / "one.yaml"))
    return out


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, parallel, one_process_run):
    two = toy_run(tmp_path / "two", batch_size=2, max_steps=4, save_every=0, length_grouped=False, parallel=parallel)
    run_toy(write_config(two, tmp_path / "two.yaml"), nproc=2)
    w0 = load_file(str(tmp_path / "two" / "weights_rank0.safetensors"))
    w1 = load_file(str(tmp_path / "two" / "weights_rank1.safetensors"))
    ref = load_file(str(one_process_run / "weights_rank0.safetensors"))
    assert sorted(w0) == sorted(ref)
    for k in ref:
        assert torch.equal(w0[k], w1[k]), f"ranks disagree on {k}"
        torch.testing.assert_close(w0[k], ref[k], rtol=1e-5, atol=1e-6)
    l1, l2 = losses_by_step(one_process_run), losses_by_step(tmp_path / "two")
    assert sorted(l1) == sorted(l2) == [1, 2, 3, 4]
    for step in l1:
        assert l2[step] == pytest.approx(l1[step], rel=1e-6, abs=1e-7)
    assert l1[4] < l1[1]


def test_gradient_accumulation_matches_the_whole_batch_at_once(tmp_path):
    models = []

    def build(run):
        models.append(train_toy.build_toy(0.0)(run))
        return models[-1]

    for name, batch, accum in [("whole", 4, 1), ("accum", 2, 2)]:
        train(toy_run(tmp_path / name, batch_size=batch, grad_accum=accum, max_steps=3, save_every=0,
                      length_grouped=False), resume=False, build=build)
    whole, accum = losses_by_step(tmp_path / "whole"), losses_by_step(tmp_path / "accum")
    for step in whole:
        assert accum[step] == pytest.approx(whole[step], rel=1e-6)
    for (name, p), q in zip(models[0].named_parameters(), models[1].parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=name)


def test_sigkilled_run_resumes_to_the_same_loss_curve(tmp_path):
    # dropout on: the resumed run must also restore the RNG states
    run = toy_run(tmp_path / "killed", max_steps=10, save_every=2)
    cfg = write_config(run, tmp_path / "killed.yaml")
    ref_cfg = write_config(toy_run(tmp_path / "ref", max_steps=10, save_every=2), tmp_path / "ref.yaml")
    run_toy_here(ref_cfg, "--dropout", "0.3")

    env = subprocess_env(**{train_toy.STEP_SLEEP_ENV: "0.25"})
    proc = subprocess.Popen([sys.executable, str(TOY_SCRIPT), str(cfg), "--dropout", "0.3"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    marker = tmp_path / "killed" / "checkpoints" / "step-00000004" / "trainer_state.json"
    deadline = time.time() + 60
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "no checkpoint at step 4 within 60 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()
    done = latest_checkpoint(tmp_path / "killed")
    assert done is not None and int(done.name.split("-")[1]) < 10, "the run finished before it was killed"

    run_toy_here(cfg, "--dropout", "0.3", "--resume")
    ref, resumed = losses_by_step(tmp_path / "ref"), losses_by_step(tmp_path / "killed")
    assert sorted(resumed) == list(range(1, 11))
    for step in ref:
        assert resumed[step] == pytest.approx(ref[step], abs=1e-6), f"step {step}"
    w_ref = load_file(str(tmp_path / "ref" / "weights_rank0.safetensors"))
    w_res = load_file(str(tmp_path / "killed" / "weights_rank0.safetensors"))
    for k in w_ref:
        torch.testing.assert_close(w_res[k], w_ref[k], rtol=0, atol=1e-6)


def sigterm_a_running_toy(run: RunConfig, config: Path, *, whole_group: bool) -> int:
    """Start the toy launcher, SIGTERM it (or its whole process group) after 3 logged steps, check it exited 0 with a
    checkpoint of its last step; return that step."""
    env = subprocess_env(**{train_toy.STEP_SLEEP_ENV: "0.1"})
    proc = subprocess.Popen([sys.executable, str(TOY_SCRIPT), str(config)], env=env, start_new_session=whole_group,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    out = Path(run.train.output_dir)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 60
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        assert proc.poll() is None and time.time() < deadline, "the run did not get going"
        time.sleep(0.05)
    if whole_group:
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=60)
    stderr = proc.stderr.read().decode()
    proc.stderr.close()
    assert code == 0, stderr[-3000:]
    ckpt = latest_checkpoint(out)
    logged = max(losses_by_step(out))
    assert ckpt is not None and int(ckpt.name.split("-")[1]) == logged < run.train.max_steps
    return logged


def test_sigterm_saves_a_checkpoint_and_stops(tmp_path):
    run = toy_run(tmp_path / "run", max_steps=200, save_every=0)
    sigterm_a_running_toy(run, write_config(run, tmp_path / "run.yaml"), whole_group=False)
    assert not (tmp_path / "run" / "model").exists()       # the final model is only exported when training ends


def test_sigterm_to_the_process_group_with_data_workers_checkpoints_exits_0_and_resumes(tmp_path):
    # timeout, SLURM and Kubernetes signal the whole group: the DataLoader workers get SIGTERM too
    run = apply_overrides(toy_run(tmp_path / "run", max_steps=200, save_every=0), ["data.num_workers=2"])
    stopped_at = sigterm_a_running_toy(run, write_config(run, tmp_path / "run.yaml"), whole_group=True)
    resumed = apply_overrides(run, [f"train.max_steps={stopped_at + 2}"])
    run_toy_here(write_config(resumed, tmp_path / "resumed.yaml"), "--resume")
    assert sorted(losses_by_step(tmp_path / "run")) == list(range(1, stopped_at + 3))


def test_partial_checkpoints_are_never_picked_up(tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(toy_run(out, max_steps=4, save_every=2), resume=False, build=train_toy.build_toy(0.0))
    root = out / "checkpoints"
    assert [p.name for p in sorted(root.iterdir())] == ["step-00000002", "step-00000004"]
    # a crash while writing step 6 leaves only the temporary directory; a step dir without its state is incomplete
    (root / ".tmp-step-00000006" / "model").mkdir(parents=True)
    (root / ".tmp-step-00000006" / "trainer_state.json").write_text("{}")
    (root / "step-00000008" / "model").mkdir(parents=True)
    assert latest_checkpoint(out) == root / "step-00000004"

    # a save that fails before its rename publishes nothing
    import pixelsail.checkpoints as checkpoints

    def crash(tmp, final):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoints, "publish", crash)
    with pytest.raises(OSError, match="disk full"):
        train(toy_run(out, max_steps=6, save_every=2), resume=True, build=train_toy.build_toy(0.0))
    assert latest_checkpoint(out) == root / "step-00000004"
    monkeypatch.undo()

    summary = train(toy_run(out, max_steps=6, save_every=2), resume=True, build=train_toy.build_toy(0.0))
    assert summary.steps == 6 and latest_checkpoint(out) == root / "step-00000006"
    assert sorted(losses_by_step(out)) == [1, 2, 3, 4, 5, 6]
    state = json.loads((root / "step-00000006" / "trainer_state.json").read_text())
    assert (state["step"], state["epoch"], state["epoch_step"], state["global_batch"]) == (6, 0, 6, 4)
    assert (out / "loss_curves.png").stat().st_size > 0 and (out / "model" / "model.safetensors").is_file()
    assert yaml.safe_load((out / "run.yaml").read_text())["train"]["max_steps"] == 6


def test_refuses_to_overwrite_checkpoints_and_to_resume_with_another_global_batch(tmp_path):
    out = tmp_path / "run"
    train(toy_run(out, max_steps=2, save_every=0), resume=False, build=train_toy.build_toy(0.0))
    with pytest.raises(FileExistsError, match="--resume"):
        train(toy_run(out, max_steps=4), resume=False, build=train_toy.build_toy(0.0))
    with pytest.raises(ValueError, match="global batch"):
        train(toy_run(out, max_steps=4, batch_size=8), resume=True, build=train_toy.build_toy(0.0))


def test_metrics_log_every_loss_component_lr_speed_and_memory(tmp_path):
    out = tmp_path / "run"
    summary = train(toy_run(out, max_steps=6, log_every=3, save_every=0, warmup_ratio=0.5),
                    resume=False, build=train_toy.build_toy(0.0))
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [3, 6]
    for r in records:
        assert {"loss", "loss/mse", "loss/l1", "lr", "samples_per_s", "peak_rss_mb", "grad_norm"} <= set(r)
        assert r["loss"] == pytest.approx(r["loss/mse"] + 0.1 * r["loss/l1"], rel=1e-5)
        assert r["samples_per_s"] > 0 and r["peak_rss_mb"] > 10
    # warm-up is 3 steps: the lr used at step 3 (0-based 2) is the peak; step 6 is at cos(pi * 2/3)
    assert records[0]["lr"] == pytest.approx(1e-2)
    assert records[1]["lr"] == pytest.approx(1e-2 * 0.5 * (1 + math.cos(math.pi * 2 / 3)))
    assert summary.steps == 6 and summary.final_loss == pytest.approx(records[-1]["loss"])


# ---------------------------------------------------------------------------------------------------------------
# the real model


def test_trains_and_resumes_the_real_tiny_pixelsail_on_shapes(tmp_path):
    from model_utils import tiny_config, tiny_tokenizer

    from pixelsail import PixelSail
    from pixelsail.config import to_dict

    tiny_tokenizer().save_pretrained(str(tmp_path / "tokenizer"))
    run = RunConfig()
    run.model = tiny_config()
    run.data.datasets = [DatasetSpec("shapes", 1.0, {"split": "train", "image_size": 64, "size": 32,
                                                     "tasks": {"res": 1.0, "gres": 1.0, "vp_mcq": 1.0}})]
    out = tmp_path / "run"
    fields = {"output_dir": str(out), "max_steps": 3, "batch_size": 2, "lr": 1e-3, "precision": "fp32",
              "save_every": 2, "log_every": 1, "tokenizer": str(tmp_path / "tokenizer"),
              "gradient_checkpointing": True}
    run = apply_overrides(run, [f"train.{k}={v}" for k, v in fields.items()])
    reference = train(run, resume=False)
    ref_losses = losses_by_step(out)
    assert reference.steps == 3 and all(math.isfinite(v) for v in ref_losses.values())
    logged = {k for r in read_metrics(out / "metrics.jsonl") for k in r}
    assert {"loss/lm", "loss/mask_bce", "loss/mask_dice"} <= logged

    # resume from the step-2 checkpoint (written by PixelSail.save_pretrained) and redo step 3
    import shutil

    shutil.rmtree(out / "checkpoints" / "step-00000003")
    shutil.rmtree(out / "model")
    resumed = train(run, resume=True)
    assert resumed.steps == 3
    assert losses_by_step(out)[3] == pytest.approx(ref_losses[3], abs=1e-6)

    model = PixelSail.from_pretrained(out / "model")
    assert to_dict(model.config)["hidden_size"] == 64
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    resp = model.respond(model.prefill_image(image), "Please segment the red circle.", max_new_tokens=4)
    assert isinstance(resp.text, str)


def test_a_curriculum_first_stage_is_any_mixture(tmp_path):
    """The shipped recipe's first stage is referring segmentation only: data.warmup_datasets may be any mixture.
    Here the first stage has masks and the main mixture (region descriptions) has none, so the loss parts tell which
    mixture each step drew from."""
    from model_utils import tiny_config, tiny_tokenizer

    tiny_tokenizer().save_pretrained(str(tmp_path / "tokenizer"))
    run = RunConfig()
    run.model = tiny_config()
    shapes = {"split": "train", "image_size": 64, "size": 32}
    run.data.warmup_datasets = [DatasetSpec("shapes", 1.0, {**shapes, "tasks": {"res": 1.0}})]
    run.data.datasets = [DatasetSpec("shapes", 1.0, {**shapes, "tasks": {"region_caption": 1.0}})]
    out = tmp_path / "run"
    fields = {"output_dir": str(out), "max_steps": 4, "batch_size": 2, "lr": 1e-3, "precision": "fp32",
              "save_every": 0, "log_every": 1, "tokenizer": str(tmp_path / "tokenizer"), "text_warmup_steps": 2}
    train(apply_overrides(run, [f"train.{k}={v}" for k, v in fields.items()]), resume=False)
    records = {r["step"]: r for r in read_metrics(out / "metrics.jsonl")}
    assert all("loss/mask_bce" in records[s] for s in (1, 2))
    assert all("loss/mask_bce" not in records[s] for s in (3, 4))


def test_language_warm_up_comes_first_and_resumes_across_the_switch(tmp_path):
    """text_warmup_steps draw text-only echo samples (no mask losses); then the main mixture starts. A run resumed
    from the checkpoint written on the warm-up's last step continues exactly like the uninterrupted one."""
    import shutil

    from model_utils import tiny_config, tiny_tokenizer

    tiny_tokenizer().save_pretrained(str(tmp_path / "tokenizer"))
    run = RunConfig()
    run.model = tiny_config()
    run.data.datasets = [DatasetSpec("shapes", 1.0, {"split": "train", "image_size": 64, "size": 32,
                                                     "tasks": {"res": 1.0}})]
    run.model.seg_query_norm = True  # its running statistics are checkpointed state too
    run.data.warmup_datasets = [DatasetSpec("shapes_echo", 1.0, {"split": "train", "size": 32})]
    out = tmp_path / "run"
    fields = {"output_dir": str(out), "max_steps": 4, "batch_size": 2, "lr": 1e-3, "precision": "fp32",
              "save_every": 2, "log_every": 1, "tokenizer": str(tmp_path / "tokenizer"), "text_warmup_steps": 2}
    run = apply_overrides(run, [f"train.{k}={v}" for k, v in fields.items()])
    train(run, resume=False)
    records = {r["step"]: r for r in read_metrics(out / "metrics.jsonl")}
    assert all("loss/mask_bce" not in records[s] for s in (1, 2))
    assert all("loss/mask_bce" in records[s] for s in (3, 4))
    reference = losses_by_step(out)

    shutil.rmtree(out / "checkpoints" / "step-00000004")
    shutil.rmtree(out / "model")
    train(run, resume=True)
    resumed = losses_by_step(out)
    assert [resumed[s] for s in (3, 4)] == pytest.approx([reference[s] for s in (3, 4)], abs=1e-6)


def test_warm_up_without_its_datasets_is_refused(tmp_path):
    run = toy_run(tmp_path / "run", text_warmup_steps=2)
    with pytest.raises(ValueError, match="warmup_datasets"):
        train(run, resume=False)


def test_shipped_recipe_loads_and_builds_its_mixture():
    from pixelsail.config import load_yaml

    import pixelsail.experts.cache  # noqa: F401  (registers the `distilled` wrapper, as the CLI's plugins do)

    run = load_yaml(Path(__file__).parents[1] / "configs" / "shapes-tiny.yaml", RunConfig)
    # the shapes world, every sample carrying the shapes expert's maps for the distillation the recipe switches on
    assert [d.name for d in run.data.datasets] == ["distilled"] and run.train.batch_size == 16
    inner = run.data.datasets[0].args["dataset"]
    assert inner["name"] == "shapes" and run.data.datasets[0].args["teacher"] == "shapes"
    assert run.model.distill.enabled and set(run.model.distill.teachers) == {"pixel", "image"}
    mixture = Mixture.from_config(run.data)
    assert mixture.epoch_size() == inner["args"]["size"]
    sample = mixture[0]
    assert sample.task in inner["args"]["tasks"]
    assert set(sample.meta["teacher_features"]) == {"pixel", "image"}


def test_train_command_reports_bad_configs_clearly(tmp_path):
    from typer.testing import CliRunner

    from pixelsail.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["train", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2 and "does not exist" in result.output
    cfg = write_config(toy_run(tmp_path / "run"), tmp_path / "run.yaml")
    result = runner.invoke(app, ["train", str(cfg), "train.no_such_field=1"])
    assert result.exit_code == 2 and "no_such_field" in result.output


def test_float_fields_written_without_a_dot_are_numbers():
    run = apply_overrides(RunConfig(), ["train.lr=1e-4", "train.weight_decay=5e-2"])  # PyYAML reads 1e-4 as a string
    assert run.train.lr == pytest.approx(1e-4) and isinstance(run.train.lr, float)
    assert run.train.weight_decay == pytest.approx(0.05)
    with pytest.raises(ValueError, match="TrainConfig.lr: expected a number, got 'fast'"):
        apply_overrides(RunConfig(), ["train.lr=fast"])


def test_a_non_finite_loss_stops_training_with_the_step_named(tmp_path):
    class Exploding(train_toy.ToyModel):
        def forward(self, **batch):
            out = super().forward(**batch)
            return train_toy.ToyOutput(loss=out.loss * float("nan"), losses=out.losses)

    with pytest.raises(FloatingPointError, match="step 1, micro-batch 0: the loss is nan"):
        train(toy_run(tmp_path / "run"), resume=False, build=lambda run: Exploding(width=16))
    assert latest_checkpoint(tmp_path / "run") is None


def test_backbone_lr_trains_the_decoder_transformer_at_its_own_rate_and_keeps_the_schedule():
    from model_utils import tiny_model

    from pixelsail.train import build_optimizer

    model = tiny_model()
    backbone = {id(p) for p in model.backbone.parameters()}
    plain = build_optimizer(model, 2e-3, (0.9, 0.999), 0.05)
    assert [g["lr"] for g in plain.param_groups] == [2e-3, 2e-3]          # as before: decay, no decay
    opt = build_optimizer(model, 2e-3, (0.9, 0.999), 0.05, backbone_lr=5e-4)
    seen = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters() if p.requires_grad)   # each once
    for g in opt.param_groups:
        inside = {id(p) in backbone for p in g["params"]}
        assert len(inside) == 1 and g["lr"] == (5e-4 if inside.pop() else 2e-3)
        assert g["weight_decay"] == (0.05 if all(p.ndim >= 2 for p in g["params"]) else 0.0)
    assert {g["lr"] for g in opt.param_groups} == {5e-4, 2e-3}
    torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)   # the warm-up/cosine factor scales both
    assert sorted({g["lr"] for g in opt.param_groups}) == [2.5e-4, 1e-3]
    assert apply_overrides(RunConfig(), ["train.backbone_lr=5e-4"]).train.backbone_lr == 5e-4   # YAML's "5e-4"
    with pytest.raises(ValueError, match="has no .backbone"):
        build_optimizer(torch.nn.Linear(2, 2), 1e-3, (0.9, 0.999), 0.0, backbone_lr=1e-4)


def test_relation_stage_is_the_recipe_with_only_its_stated_changes():
    """configs/shapes-tiny-relations.yaml (stage 2) = stage 1's recipe but for what its header lists."""
    from dataclasses import asdict

    from pixelsail.config import load_yaml

    configs = Path(__file__).parents[1] / "configs"
    one = asdict(load_yaml(configs / "shapes-tiny.yaml", RunConfig))
    two = asdict(load_yaml(configs / "shapes-tiny-relations.yaml", RunConfig))
    assert two["train"]["init_from"] == one["train"]["output_dir"] + "/model"
    changed = {"model": {"seg_query_look": "core", "seg_box_weight": 1.0, "seg_query_stop_grad": False},
               "train": {"max_steps": 1500, "text_warmup_steps": 0, "lr": 1.0e-3, "backbone_lr": 2.5e-4,
                         "output_dir": "runs/shapes-tiny-relations", "init_from": "runs/shapes-tiny/model"}}
    for section, values in changed.items():
        for key, value in values.items():
            assert two[section][key] == value, (section, key)
            two[section][key] = one[section][key]
    shapes_args = two["data"]["datasets"][0]["args"]["dataset"]["args"]
    assert shapes_args.pop("relation_rate") == 1.0 and shapes_args["tasks"]["res"] == 6.0
    shapes_args["tasks"]["res"] = one["data"]["datasets"][0]["args"]["dataset"]["args"]["tasks"]["res"]
    assert two["data"]["warmup_datasets"] == []
    two["data"]["warmup_datasets"] = one["data"]["warmup_datasets"]
    assert two == one
