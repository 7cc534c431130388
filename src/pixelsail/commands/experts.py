"""``pixelsail expert train-shapes`` and ``pixelsail distill-cache``: the distillation teachers' commands."""
from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any, Optional

import typer

from pixelsail.commands import fail as _fail

expert_app = typer.Typer(help="Vision experts (distillation teachers).", no_args_is_help=True)


@expert_app.command("train-shapes")
def train_shapes_command(
    out: Path = typer.Option(..., "--out", help="directory for model.safetensors, config.json, training.json"),
    steps: int = typer.Option(500, "--steps", min=1, help="optimizer steps (fresh scenes every step)"),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    lr: float = typer.Option(1e-2, "--lr"),
    seed: int = typer.Option(0, "--seed"),
    image_size: int = typer.Option(128, "--image-size", min=32, help="scene size the expert is trained on"),
    eval_scenes: int = typer.Option(128, "--eval-scenes", min=1, help="val scenes for the accuracy report"),
    fp16: bool = typer.Option(True, "--fp16/--fp32", help="store the weights in half precision (half the size)"),
    threads: Optional[int] = typer.Option(None, "--threads", min=1,
                                          help="torch CPU threads (1 is fastest on a machine busy with other jobs)"),
) -> None:
    """Train the shapes-world segmentation expert and report its per-pixel val accuracy."""
    import torch
    from tqdm import tqdm

    if threads is not None:
        torch.set_num_threads(threads)

    from pixelsail.experts.shapes_expert import ShapesExpert, ShapesExpertConfig, evaluate_expert, train_shapes_expert

    command = (f"pixelsail expert train-shapes --out {out} --steps {steps} --batch-size {batch_size} --lr {lr} "
               f"--seed {seed} --image-size {image_size} --eval-scenes {eval_scenes}"
               + ("" if fp16 else " --fp32") + (f" --threads {threads}" if threads is not None else ""))
    bar = tqdm(total=steps, desc="train-shapes", unit="step", dynamic_ncols=True)

    def progress(step: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    config = ShapesExpertConfig.for_shapes_world(image_size=image_size)
    try:
        model, summary = train_shapes_expert(steps=steps, batch_size=batch_size, lr=lr, seed=seed, config=config,
                                             eval_scenes=eval_scenes, progress=progress)
    finally:
        bar.close()
    summary.update(command=command, torch=torch.__version__, threads=torch.get_num_threads(),
                   machine=platform.machine(), weights_dtype="float16" if fp16 else "float32")
    model.save(out, extra=summary, fp16=fp16)
    if fp16:   # report the accuracy of the weights as stored
        model = ShapesExpert.load(out)
        summary["val_before_fp16"] = summary["val"]
        summary["val"] = evaluate_expert(model, split="val", n_scenes=eval_scenes, seed=seed)
        model.save(out, extra=summary, fp16=True)
    _print_accuracy(summary["val"])
    typer.echo(f"saved the shapes expert to {out} ({summary['parameters']} parameters, "
               f"{summary['train_seconds']} s training)")


@expert_app.command("eval-shapes")
def eval_shapes_command(
    path: Path = typer.Argument(..., help="a shapes-expert directory"),
    scenes: int = typer.Option(128, "--scenes", min=1),
    split: str = typer.Option("val", "--split"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Per-pixel accuracy of a shapes expert (colour / shape / size) against the trivial baselines."""
    from pixelsail.experts import TeacherError
    from pixelsail.experts.shapes_expert import ShapesExpert, evaluate_expert

    try:
        model = ShapesExpert.load(path)
    except TeacherError as e:
        _fail(str(e))
    _print_accuracy(evaluate_expert(model, split=split, n_scenes=scenes, seed=seed))


def _print_accuracy(metrics: dict[str, float]) -> None:
    from rich.console import Console
    from rich.table import Table

    from pixelsail.experts.shapes_expert import LABEL_GROUPS

    table = Table(title="shapes expert, per-pixel accuracy")
    for col in ("label", "all pixels", "majority baseline", "object pixels", "object baseline"):
        table.add_column(col)
    for g in LABEL_GROUPS:
        table.add_row(g, *(f"{metrics[k]:.3f}" for k in (f"{g}_acc", f"{g}_baseline_acc", f"{g}_object_acc",
                                                          f"{g}_object_baseline_acc")))
    Console().print(table)


def _parse_args(items: list[str]) -> dict[str, Any]:
    import yaml

    kwargs: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            _fail(f"--arg {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        kwargs[key] = yaml.safe_load(raw)
    return kwargs


def load_datasets(data: str, args: list[str]) -> tuple[list[Any], dict[str, Any]]:
    """Datasets of a training config's mixture (``data`` = a YAML file) or one registered dataset + ``--arg``s,
    and a JSON description of them (stored in the cache so a resumed run can check it reads the same data).

    A ``distilled`` entry of the mixture contributes the dataset it wraps: its cache is the one being built (so a
    recipe names its own cache step: ``pixelsail distill-cache --data RECIPE.yaml --out ITS_CACHE``)."""
    from pixelsail.config import DataConfig, DatasetSpec, RunConfig, load_yaml, to_dict
    from pixelsail.data.registry import build_dataset

    path = Path(data)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            _fail(f"config file not found: {path}")
        if args:
            _fail("--arg applies to a dataset name, not to a config file")
        try:
            specs = load_yaml(path, RunConfig).data.datasets
        except (ValueError, TypeError):
            specs = load_yaml(path, DataConfig).datasets
        specs = [DatasetSpec(s.args["dataset"]["name"], s.weight, s.args["dataset"].get("args", {}))
                 if s.name == "distilled" else s for s in specs]
        described = [to_dict(s) for s in specs]
        return [build_dataset(s.name, **s.args) for s in specs], {"config": str(path.resolve()),
                                                                  "datasets": described}
    kwargs = _parse_args(args)
    return [build_dataset(data, **kwargs)], {"datasets": [{"name": data, "args": kwargs}]}


def distill_cache_command(
    teacher: str = typer.Option(..., "--teacher", help="'shapes', a teacher directory (shapes expert, Mask2Former, "
                                "SAM, SAM2), 'module:factory', NAME=SPEC to rename, SPEC+SPEC to combine"),
    data: str = typer.Option(..., "--data", help="a training config YAML (its data mixture) or a dataset name"),
    out: Path = typer.Option(..., "--out", help="cache directory (resumes if it already holds a partial cache)"),
    arg: list[str] = typer.Option([], "--arg", help="key=value for the named dataset (repeatable)"),
    dtype: str = typer.Option("float32", "--dtype", help="storage dtype: float32 or float16"),
    shard_size: int = typer.Option(64, "--shard-size", min=1, help="images per shard"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="images per teacher forward"),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="stop after this many distinct images"),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="teacher input size (Mask2Former)"),
    device: str = typer.Option("cpu", "--device"),
) -> None:
    """Run a teacher over a dataset's images and store its dense features (resumable safetensors shards)."""
    from pixelsail.experts import TeacherError, load_teacher
    from pixelsail.experts.cache import CacheError, build_cache, unique_images

    if dtype not in ("float32", "float16"):
        _fail(f"--dtype must be float32 or float16, got {dtype!r}")
    options = {} if image_size is None else {"image_size": image_size}
    try:
        t = load_teacher(teacher, device=device, batch_size=batch_size, **options)
        datasets, described = load_datasets(data, arg)
        if limit is not None:
            described["limit"] = limit
        # the number of distinct images is unknown until the data is read (many samples may share one image)
        summary = build_cache(t, unique_images(datasets, limit=limit), out, dtype=dtype, shard_size=shard_size,
                              data=described, total=limit)
    except (TeacherError, CacheError, KeyError, ValueError) as e:
        _fail(str(e))
    typer.echo(json.dumps(summary, indent=1))


def register(app: typer.Typer) -> None:
    app.add_typer(expert_app, name="expert")
    app.command("distill-cache")(distill_cache_command)
