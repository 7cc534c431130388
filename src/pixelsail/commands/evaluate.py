"""``pixelsail eval`` (predict + score + report) and ``pixelsail score`` (re-score a predictions file)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

EVAL_TASKS = ("res", "gres", "region-caption", "perbench", "shapes")


def eval_command(
    model: Path = typer.Option(..., "--model", help="pixelsail checkpoint directory"),
    task: str = typer.Option(..., "--task", help="res | gres | region-caption | perbench | shapes"),
    data: Optional[str] = typer.Option(None, "--data", help="dataset directory or file (not needed for shapes)"),
    split: str = typer.Option("val", "--split", help="split (REFER: val/testA/testB/test; shapes: val/test)"),
    split_by: Optional[str] = typer.Option(None, "--split-by", help="REFER split_by (unc, umd, google); "
                                           "default: the one refs file present"),
    image_dir: Optional[str] = typer.Option(None, "--image-dir", help="image folder (default: found beside --data)"),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="evaluate only the first N samples"),
    out: Path = typer.Option(..., "--out", help="output directory"),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1),
    gallery: int = typer.Option(8, "--gallery", min=0, help="best / worst samples drawn per gallery (0: none)"),
    device: str = typer.Option("cpu", "--device", help="torch device"),
) -> None:
    """Evaluate a model on an evaluation set: predictions JSONL, results JSON + Markdown, a gallery."""
    from pixelsail.evaluate import build_eval_dataset, evaluate

    if task not in EVAL_TASKS:
        raise typer.BadParameter(f"--task must be one of {', '.join(EVAL_TASKS)}, got {task!r}")
    if not model.is_dir():
        raise typer.BadParameter(f"--model {model} is not a directory")
    try:
        dataset = build_eval_dataset(task, data, split=split, split_by=split_by, image_dir=image_dir,
                                     shapes_size=limit or 500)
    except (FileNotFoundError, ValueError, KeyError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    from pixelsail import PixelSail

    net = PixelSail.from_pretrained(str(model)).to(device).eval()
    import torch

    info = {"model": str(model), "task": task, "data": data, "split": split, "limit": limit}
    with torch.inference_mode():
        run = evaluate(net, dataset, out, limit=limit, max_new_tokens=max_new_tokens, gallery=gallery, info=info,
                       title=f"{task} {split} — {model.name}")
    for name, path in run.files.items():
        typer.echo(f"{name}: {path}")


def score_command(
    predictions: Path = typer.Argument(..., help="predictions.jsonl written by `pixelsail eval`"),
    out: Optional[Path] = typer.Option(None, "--out", help="where results.json / results.md go "
                                       "(default: beside the predictions)"),
    captions: bool = typer.Option(True, "--captions/--no-captions", help="compute BLEU/METEOR/CIDEr (Java)"),
) -> None:
    """Recompute every metric from a predictions file, without the model."""
    from pixelsail.evaluate import print_results, read_jsonl, save_results, score_records

    try:
        records = read_jsonl(predictions)
    except (FileNotFoundError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    scores = score_records(records, captions=captions)
    title = f"scores of {predictions}"
    print_results(scores.results, title)
    json_path, md_path = save_results(scores.results, out or predictions.parent,
                                      {"predictions": str(predictions)}, title)
    typer.echo(f"json: {json_path}\nmarkdown: {md_path}")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
    app.command("score")(score_command)
