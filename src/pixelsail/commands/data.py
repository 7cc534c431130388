"""``pixelsail data validate | preview | dry-run``: check, look at, and walk training data before a GPU run."""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import typer

from pixelsail.commands import fail as _fail
from pixelsail.commands import load_dataset_plugins

data_app = typer.Typer(help="Check, preview and dry-run training data.", no_args_is_help=True)


@data_app.command("validate")
def validate_command(
    path: Path = typer.Argument(..., help="a pixelsail JSONL file (format: docs/DATA.md)"),
    num_vp_tokens: int = typer.Option(16, "--num-vp-tokens", min=1, help="the model's number of <vp_k> tokens"),
    max_shown: int = typer.Option(200, "--max-shown", min=1, help="print at most this many problems"),
) -> None:
    """Check every record (image, masks, [SEG] references, <vp_k> prompts, text, ids); list all problems."""
    from pixelsail.data.annotations import FormatError
    from pixelsail.data.validate import validate_jsonl

    try:
        report = validate_jsonl(path, num_vp_tokens=num_vp_tokens, progress=True)
    except FormatError as e:
        _fail(str(e))
    for p in report.problems[:max_shown]:
        typer.echo(f"{path}:{p}")
    if len(report.problems) > max_shown:
        typer.echo(f"... and {len(report.problems) - max_shown} more")
    typer.echo(report.summary())
    if not report.ok:
        raise typer.Exit(1)


def _datasets_of(path: Path, dataset: Optional[str], args: list[str]) -> list[tuple[str, float, Any]]:
    """(label, weight, dataset) from a JSONL file, a registered dataset name + args, or a training config."""
    import yaml

    from pixelsail.config import RunConfig, load_yaml
    from pixelsail.data.registry import build_dataset

    load_dataset_plugins()
    if dataset is not None:
        kwargs = {}
        for item in args:
            if "=" not in item:
                _fail(f"--arg {item!r} is not of the form key=value")
            key, raw = item.split("=", 1)
            kwargs[key] = yaml.safe_load(raw)
        if str(path) not in ("", "."):
            kwargs.setdefault("path" if dataset == "jsonl" else "annotation_file", str(path))
        return [(dataset, 1.0, build_dataset(dataset, **kwargs))]
    if path.suffix in (".yaml", ".yml"):
        run = load_yaml(path, RunConfig)
        return [(f"{spec.name}#{i}", spec.weight, build_dataset(spec.name, **spec.args))
                for i, spec in enumerate(run.data.datasets)]
    return [("jsonl", 1.0, build_dataset("jsonl", path=str(path)))]


def _caption(sample, width: int = 400) -> str:
    lines = [f"[{sample.task}] {sample.image_id}"]
    for q, a in sample.turns:
        lines.append(f"Q: {q}")
        lines.append(f"A: {a}")
    text = "\n".join(lines)
    return text if len(text) <= width else text[: width - 3] + "..."


@data_app.command("preview")
def preview_command(
    path: Path = typer.Argument(..., help="a JSONL file, a training config YAML, or (with --dataset) a data file"),
    out: Path = typer.Option(Path("preview.png"), "-o", "--out", help="PNG to write"),
    n: int = typer.Option(8, "--n", min=1, help="samples drawn (from each dataset of a config)"),
    ncols: int = typer.Option(4, "--ncols", min=1),
    tile: int = typer.Option(320, "--tile", min=32, help="tile width in pixels"),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="a registered dataset name instead of JSONL"),
    arg: list[str] = typer.Option([], "--arg", help="dataset argument key=value (repeatable)"),
) -> None:
    """Draw samples: target masks filled, visual prompts outlined and tagged, the conversation underneath."""
    from pixelsail.data.annotations import FormatError
    from pixelsail.viz import draw_prompts, image_grid, overlay_masks

    try:
        sources = _datasets_of(path, dataset, arg)
        tiles, captions = [], []
        for label, _, ds in sources:
            for i in range(min(n, len(ds))):
                s = ds[i]
                picture = overlay_masks(s.image, s.masks)
                if s.prompts:
                    picture = draw_prompts(picture, s.prompts)
                tiles.append(picture)
                captions.append(f"{label} {i}: " + _caption(s))
    except (FormatError, KeyError, ValueError) as e:
        _fail(str(e))
    if not tiles:
        _fail(f"{path}: no samples to draw")
    out.parent.mkdir(parents=True, exist_ok=True)
    image_grid(tiles, captions, ncols=ncols, tile_size=tile).save(out)
    typer.echo(f"wrote {out} ({len(tiles)} samples)")


@dataclass
class DatasetTally:
    label: str
    weight: float
    records: int = 0
    samples: int = 0
    turns: int = 0
    masks: int = 0
    prompts: int = 0
    tasks: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)


def walk_mixture(sources: list[tuple[str, float, Any]], *, processor=None, limit: int | None = None,
                 progress: bool = False) -> list[DatasetTally]:
    """Build every sample of every dataset once (and process it when a processor is given); count what it holds.

    A sample that fails is recorded with its error instead of stopping the walk.
    """
    from tqdm import tqdm

    tallies = []
    for label, weight, ds in sources:
        t = DatasetTally(label, weight, records=len(ds))
        count = len(ds) if limit is None else min(limit, len(ds))
        for i in tqdm(range(count), desc=label, unit="sample", disable=not progress):
            try:
                s = ds[i]
                s.validate()
                if processor is not None:
                    t.lengths.append(int(processor(s)["length"]))
            except Exception as e:  # noqa: BLE001 - a dry run reports every failure, whatever its type
                t.errors.append(f"{label}[{i}]: {type(e).__name__}: {e}")
                continue
            t.samples += 1
            t.turns += len(s.turns)
            t.masks += len(s.masks)
            t.prompts += len(s.prompts)
            t.tasks[s.task] += 1
        tallies.append(t)
    return tallies


def _processor_for(config_path: Path, tokenizer: Optional[str]):
    from pixelsail.config import RunConfig, load_yaml
    from pixelsail.model import tiny_tokenizer_corpus
    from pixelsail.processing import Processor
    from pixelsail.tokenizer import build_tiny_tokenizer, load_tokenizer

    run = load_yaml(config_path, RunConfig)
    source = tokenizer or run.train.tokenizer or run.train.init_from
    if source and Path(source).is_dir():
        tok = load_tokenizer(source, run.model.num_vp_tokens)
        note = f"tokenizer {source}"
    else:
        tok = build_tiny_tokenizer(tiny_tokenizer_corpus(), vocab_size=1024, num_vp_tokens=run.model.num_vp_tokens)
        note = (f"tokenizer {source} not found: token counts use the built-in tiny tokenizer (longer than a real "
                "LLM tokenizer's)" if source else "built-in tiny tokenizer")
    return Processor(tok, run.model), note


@data_app.command("dry-run")
def dry_run_command(
    config: Path = typer.Argument(..., help="training config YAML (data.datasets is walked)"),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="at most N samples per dataset"),
    tokens: bool = typer.Option(False, "--tokens", help="also process each sample and report sequence lengths"),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="tokenizer dir for --tokens"),
) -> None:
    """Walk the whole mixture once: samples per dataset and per task, masks, prompts, failures (exit 1 if any)."""
    from rich.console import Console
    from rich.table import Table

    from pixelsail.config import RunConfig, load_yaml
    from pixelsail.data.annotations import FormatError
    from pixelsail.data.mixture import Mixture

    try:
        sources = _datasets_of(config, None, [])
        run = load_yaml(config, RunConfig)
        epoch = Mixture([ds for _, _, ds in sources], [w for _, w, _ in sources]).epoch_size()
    except (FormatError, KeyError, ValueError, TypeError) as e:
        _fail(f"{config}: {e}")
    max_length = run.data.max_length
    processor, note = _processor_for(config, tokenizer) if tokens else (None, "")
    tallies = walk_mixture(sources, processor=processor, limit=limit, progress=True)
    console = Console(width=None if Console().is_terminal else 160)
    table = Table(title=f"dry run of {config}")
    for col in ("dataset", "weight", "records", "per epoch", "samples", "turns", "masks", "prompts", "tasks",
                "failed"):
        table.add_column(col, justify="left" if col in ("dataset", "tasks") else "right")
    if tokens:
        table.add_column("tokens mean/max", justify="right")
        table.add_column(f"> {max_length}", justify="right")
    total_weight = sum(t.weight * t.samples for t in tallies) or 1.0
    per_task: Counter = Counter()
    for t in tallies:
        row = [t.label, f"{t.weight:g}", str(t.records), str(round(t.weight * t.records)), str(t.samples),
               str(t.turns), str(t.masks), str(t.prompts),
               ", ".join(f"{k} {v}" for k, v in sorted(t.tasks.items())), str(len(t.errors))]
        if tokens:
            row += [f"{sum(t.lengths) / len(t.lengths):.0f}/{max(t.lengths)}" if t.lengths else "-",
                    str(sum(n > max_length for n in t.lengths))]
        table.add_row(*row)
        for task, count in t.tasks.items():
            per_task[task] += count * t.weight
    console.print(table)
    task_table = Table(title="samples per task (and share of the weighted mixture)")
    task_table.add_column("task")
    task_table.add_column("samples", justify="right")
    task_table.add_column("weighted share", justify="right")
    raw = Counter()
    for t in tallies:
        raw.update(t.tasks)
    for task in sorted(raw):
        task_table.add_row(task, str(raw[task]), f"{100 * per_task[task] / total_weight:.1f}%")
    console.print(task_table)
    if note:
        console.print(note)
    errors = [e for t in tallies for e in t.errors]
    for e in errors[:20]:
        console.print(f"[red]{e}[/red]")
    per_gpu = run.train.batch_size * run.train.grad_accum
    console.print(f"one epoch = {epoch} samples; train.max_steps for one epoch = ceil({epoch} / (batch_size "
                  f"{run.train.batch_size} x grad_accum {run.train.grad_accum} x GPUs)): "
                  f"{math.ceil(epoch / per_gpu)} on 1 GPU, {math.ceil(epoch / (8 * per_gpu))} on 8 GPUs")
    console.print(f"{sum(t.samples for t in tallies)} samples walked, {len(errors)} failed")
    if errors:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
