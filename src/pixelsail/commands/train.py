"""``pixelsail train CONFIG.yaml [section.key=value ...] [--resume]`` — one process, or many under torchrun."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def train_command(
    config: Path = typer.Argument(..., help="run config YAML (model / data / train sections)"),
    overrides: Optional[List[str]] = typer.Argument(None, help="overrides such as train.lr=1e-4 train.max_steps=50"),
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


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
