"""``pixelsail eval`` (predict + score + report) and ``pixelsail score`` (re-score a predictions file)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

EVAL_TASKS = ("res", "gres", "region-caption", "perbench", "shapes")
CONVENTION_HELP = ("scoring convention: standard (the field's: LISA, ReLA, COCOEvalCap) or authors (the Pixel-SAIL "
                   "authors' scripts: first mask, PerBench by NLTK METEOR); repeat for several tables. "
                   "See docs/EVALUATION.md")


def _conventions(names: List[str]) -> List[str]:
    from pixelsail.scoring import check_convention

    try:
        return [check_convention(n) for n in names]
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--convention") from None


def _check_caption_scorers(conventions: List[str], task: str, shapes_tasks: Optional[List[str]]) -> None:
    """Fail before the model runs when the caption scores cannot be computed (pycocoevalcap, Java; WordNet under
    the authors' convention), not after every sample has been predicted."""
    from pixelsail.metrics import caption_scorer_problem
    from pixelsail.scoring import TEXT_TASKS

    if task not in ("perbench", "region-caption", "shapes"):
        return
    if task == "shapes" and shapes_tasks is not None and not set(shapes_tasks) & set(TEXT_TASKS):
        return
    problem = caption_scorer_problem()
    if problem:
        typer.echo(f"error: {problem}; or pass --no-captions to score everything else", err=True)
        raise typer.Exit(2)
    if "authors" not in conventions:
        return
    from pixelsail.wordnet import ensure_wordnet

    try:
        ensure_wordnet()
    except RuntimeError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


def eval_command(
    model: Optional[Path] = typer.Option(None, "--model", help="pixelsail checkpoint directory "
                                         "(default: the shipped shapes model)"),
    task: str = typer.Option(..., "--task", help="res | gres | region-caption | perbench | shapes"),
    data: Optional[str] = typer.Option(None, "--data", help="dataset directory or file (not needed for shapes)"),
    split: str = typer.Option("val", "--split", help="split (REFER: val/testA/testB/test; shapes: val/test, or "
                              "test_perturbed: held-out scenes rendered differently)"),
    split_by: Optional[str] = typer.Option(None, "--split-by", help="REFER split_by (unc, umd, google); "
                                           "default: the one refs file present"),
    image_dir: Optional[str] = typer.Option(None, "--image-dir", help="image folder (default: found beside --data)"),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="evaluate only the first N samples"),
    out: Path = typer.Option(..., "--out", help="output directory"),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1),
    gallery: int = typer.Option(8, "--gallery", min=0, help="best / worst samples drawn per gallery (0: none)"),
    device: str = typer.Option("cpu", "--device", help="torch device"),
    convention: List[str] = typer.Option(["standard"], "--convention", help=CONVENTION_HELP),
    shapes_tasks: Optional[str] = typer.Option(None, "--shapes-tasks", help="shapes only: comma-separated tasks "
                                               "(e.g. res,gres; default: all seven)"),
    image_size: int = typer.Option(128, "--image-size", min=32, help="shapes only: scene size in pixels"),
    captions: bool = typer.Option(True, "--captions/--no-captions", help="compute the caption metrics "
                                  "(BLEU/METEOR/CIDEr: pycocoevalcap and Java; NLTK too under --convention authors)"),
) -> None:
    """Evaluate a model on an evaluation set: predictions JSONL, results JSON + Markdown, a gallery."""
    from pixelsail.evaluate import build_eval_dataset, evaluate

    if task not in EVAL_TASKS:
        raise typer.BadParameter(f"--task must be one of {', '.join(EVAL_TASKS)}, got {task!r}")
    if model is None:
        from pixelsail.predictor import shipped_model_dir

        model = shipped_model_dir()
    if not model.is_dir():
        raise typer.BadParameter(f"--model {model} is not a directory")
    conventions = _conventions(convention)
    if captions:
        _check_caption_scorers(conventions, task, shapes_tasks.split(",") if shapes_tasks else None)
    try:
        dataset = build_eval_dataset(task, data, split=split, split_by=split_by, image_dir=image_dir,
                                     shapes_size=limit or 500,
                                     shapes_tasks=shapes_tasks.split(",") if shapes_tasks else None,
                                     shapes_image_size=image_size)
    except (FileNotFoundError, ValueError, KeyError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    from pixelsail.model_check import ModelFileError, check_model_dir

    try:  # the files' own check: one line for a corrupt checkpoint instead of a reader's traceback
        for message in check_model_dir(model):
            typer.echo(f"warning: {message}", err=True)
    except ModelFileError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    from pixelsail import PixelSail

    net = PixelSail.from_pretrained(str(model)).to(device).eval()
    import torch

    info = {"model": str(model), "task": task, "data": data, "split": split, "limit": limit}
    with torch.inference_mode():
        run = evaluate(net, dataset, out, limit=limit, max_new_tokens=max_new_tokens, gallery=gallery, info=info,
                       captions=captions, title=f"{task} {split} — {model.name}", conventions=conventions)
    for name, path in run.files.items():
        typer.echo(f"{name}: {path}")


def score_command(
    predictions: Path = typer.Argument(..., help="predictions.jsonl written by `pixelsail eval`"),
    out: Optional[Path] = typer.Option(None, "--out", help="where results.json / results.md go "
                                       "(default: beside the predictions)"),
    captions: bool = typer.Option(True, "--captions/--no-captions", help="compute the caption metrics "
                                  "(BLEU/METEOR/CIDEr: Java; NLTK too under --convention authors)"),
    convention: List[str] = typer.Option(["standard"], "--convention", help=CONVENTION_HELP),
) -> None:
    """Recompute every metric from a predictions file, without the model."""
    from pixelsail.evaluate import read_jsonl, report, score_records

    conventions = _conventions(convention)
    try:
        records = read_jsonl(predictions)
    except (FileNotFoundError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    title = f"scores of {predictions}"
    for name in dict.fromkeys(conventions):
        try:
            scores = score_records(records, captions=captions, convention=name)
        except RuntimeError as e:  # a missing scorer (Java, WordNet): say what to install
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        json_path, md_path = report(scores, out or predictions.parent, {"predictions": str(predictions)}, title)
        typer.echo(f"{name} convention: json: {json_path}\nmarkdown: {md_path}")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
    app.command("score")(score_command)
