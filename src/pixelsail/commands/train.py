"""``pixelsail train CONFIG.yaml [section.key=value ...] [--resume]`` — one process, or many under torchrun."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def train_command(
    config: Path = typer.Argument(..., help="run config YAML (model / data / train sections)"),
    overrides: Optional[List[str]] = typer.Argument(
        None, help="overrides such as train.lr=1e-4 train.max_steps=50 (a number indexes a list: "
                   "data.datasets.0.weight=2)"),
    resume: bool = typer.Option(False, "--resume", help="continue from the newest checkpoint in train.output_dir"),
    keep_last: int = typer.Option(2, "--keep-last", min=1, help="checkpoints to keep"),
) -> None:
    """Train a model. Multi-process: torchrun --nproc_per_node N -m pixelsail.cli train CONFIG.yaml ..."""
    import logging

    from pixelsail.commands import load_dataset_plugins
    from pixelsail.config import RunConfig, apply_overrides, load_yaml
    from pixelsail.train import leave_distributed, train

    load_dataset_plugins()

    if not config.is_file():
        raise typer.BadParameter(f"config file {config} does not exist")
    try:
        run = apply_overrides(load_yaml(config, RunConfig), list(overrides or []))
    except (ValueError, TypeError) as e:
        typer.echo(f"error: {config}: {e}", err=True)
        raise typer.Exit(2) from None
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = train(run, resume=resume, keep_last=keep_last)
    except (OSError, ValueError) as e:  # bad paths, a full disk, a deleted output directory: one line
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        peak_gpu = f", peak GPU {summary.peak_gpu_mb:.0f} MB" if summary.peak_gpu_mb is not None else ""
        loss = f"{summary.final_loss:.4f}" if summary.final_loss is not None else "n/a"
        typer.echo(f"{'stopped' if summary.stopped_early else 'done'} at step {summary.steps}: loss {loss}, "
                   f"{summary.samples_per_s:.1f} samples/s, peak RSS {summary.peak_rss_mb:.0f} MB{peak_gpu}, "
                   f"{summary.wall_s:.0f} s")
        typer.echo(f"checkpoint: {summary.checkpoint}")
        if not summary.stopped_early:
            typer.echo(f"model: {Path(summary.output_dir) / 'model'}")
    leave_distributed()


def calibrate_command(
    model_dir: Path = typer.Argument(..., help="a trained model directory (rewritten in place, atomically)"),
    config: Path = typer.Argument(..., help="the run config YAML it was trained with (its data.datasets are used)"),
    batches: int = typer.Option(32, "--batches", min=1, help="training batches whose [SEG] states are averaged"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="default: the config's train.batch_size"),
) -> None:
    """Give a model's [SEG] query standardisation the exact statistics of 32 training batches: for checkpoints
    taken mid-run, whose running averages describe the last few batches (a finished run's are better left as they
    are; see pixelsail.calibration)."""
    import shutil

    import torch

    from pixelsail.calibration import calibrate_query_norm, query_norm
    from pixelsail.checkpoints import publish
    from pixelsail.commands import load_dataset_plugins
    from pixelsail.config import RunConfig, load_yaml
    from pixelsail.data.mixture import BatchStream, Mixture, MixtureSampler, SamplerState, micro_batches
    from pixelsail.hardware import autocast_dtype
    from pixelsail.model import PixelSail
    from pixelsail.train import GROUP_SAMPLES

    load_dataset_plugins()
    if not config.is_file():
        raise typer.BadParameter(f"config file {config} does not exist")
    try:
        run = load_yaml(config, RunConfig)
        model = PixelSail.from_pretrained(model_dir)
    except (OSError, ValueError, TypeError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    if query_norm(model) is None:
        typer.echo(f"{model_dir}: the model has no [SEG] standardisation (seg_query_norm is off); nothing to do")
        return
    proc = model.processor
    size = batch_size or run.train.batch_size
    # the batches the engine calibrates on at the end of a one-process run of this config
    stream = BatchStream(MixtureSampler(Mixture.from_config(run.data), size, run.train.seed), proc, proc.collate,
                         rank=0, world_size=1, grad_accum=1, length_grouped=run.train.length_grouped,
                         start=SamplerState(), group_batches=max(1, GROUP_SAMPLES // size))
    steps = micro_batches(stream, 0, run.train.seed)
    dtype = autocast_dtype(run.train.precision, "cpu")
    try:
        count = calibrate_query_norm(model, (mb for _, mbs in steps for mb in mbs), max_batches=batches,
                                     autocast=torch.autocast("cpu", dtype=dtype or torch.bfloat16,
                                                             enabled=dtype is not None))
    finally:
        steps.close()
    if count < 2:
        typer.echo(f"error: the first {batches} batches of {config} have no [SEG] answers to calibrate on", err=True)
        raise typer.Exit(2)
    tmp = model_dir.with_name(f".tmp-{model_dir.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, dtype=_stored_float_dtype(model_dir / "model.safetensors"))
    for extra in model_dir.iterdir():  # run.yaml, training.json and the like travel with the weights
        if not (tmp / extra.name).exists() and extra.is_file():
            shutil.copy2(extra, tmp / extra.name)
    publish(tmp, model_dir)
    typer.echo(f"{model_dir}: [SEG] standardisation set from {count} [SEG] states of {batches} batches of {config}")


def _stored_float_dtype(weights: Path):
    """The dtype the floating-point weights were stored in (the shipped model keeps fp16 on disk)."""
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        for key in f.keys():
            tensor = f.get_tensor(key)
            if tensor.is_floating_point():
                return tensor.dtype
    return None


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
    app.command("calibrate")(calibrate_command)
