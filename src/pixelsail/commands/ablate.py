"""``pixelsail ablate`` — the paper's ablation (baseline, + upsampling, + prompt injection, + distillation) on shapes."""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import List, Optional

import typer

DEFAULT_CONFIG = Path("configs/shapes-tiny.yaml")
# the budget: the shipped recipe as it is, three seeds, 300 test samples per task (two 6000-step runs side
# by side take ~41 min on a 2-core CPU with bf16)
# the table in docs/ABLATION.md: the shipped recipe of sessions 16-18 (6000 steps, 12,000 since session 19; no prompt
# geometry, on since session 21)
FULL_BUDGET = ("pixelsail ablate --seeds 3 --jobs 2 --eval-split test --eval-per-task 300 train.max_steps=6000 "
               "model.vp_geometry=")

# --quick: a tiny model and budget, for tests and a first look (minutes on a laptop)
QUICK_MODEL = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
               "intermediate_size": 128, "mask_dim": 32, "mask_num_points": 256, "upsample_max_width": 64,
               "vocab_size": 512}
QUICK_STEPS, QUICK_BATCH, QUICK_EVAL_PER_TASK, QUICK_IMAGE_SIZE, QUICK_MAX_NEW_TOKENS = 2, 2, 2, 64, 12


def base_config(config: Optional[Path], quick: bool, steps: Optional[int], batch_size: Optional[int],
                overrides: list[str]):
    """The base RunConfig every variant starts from: the recipe YAML (shapes-tiny by default), shrunk by --quick."""
    from pixelsail.config import RunConfig, apply_overrides, load_yaml

    path = config or DEFAULT_CONFIG
    if path.is_file():
        run = load_yaml(path, RunConfig)
    elif config is not None:
        raise typer.BadParameter(f"--config {config} does not exist")
    else:
        run = RunConfig()
    items: list[str] = ["data.num_workers=0"]   # the recipe's precision and checkpoints (a stopped run resumes)
    if quick:
        items += [f"model.{k}={v}" for k, v in QUICK_MODEL.items()]
        items += [f"train.max_steps={QUICK_STEPS}", f"train.batch_size={QUICK_BATCH}", "train.log_every=1"]
        for spec in run.data.datasets:
            if spec.name == "shapes":
                spec.args["image_size"] = QUICK_IMAGE_SIZE
    if steps is not None:
        items.append(f"train.max_steps={steps}")
    if batch_size is not None:
        items.append(f"train.batch_size={batch_size}")
    shrunk = apply_overrides(run, items)
    if run.train.text_warmup_steps and shrunk.train.max_steps != run.train.max_steps:
        # the language warm-up keeps its share of the (shorter or longer) run
        share = run.train.text_warmup_steps / run.train.max_steps
        shrunk.train.text_warmup_steps = max(1, round(share * shrunk.train.max_steps))
    return apply_overrides(shrunk, list(overrides))


def _invocation(out: Path, report_only: bool, machine: str) -> tuple[str, str]:
    """(command as typed, machine) of this invocation, kept in <out>/invocation.json; with --report-only, those of
    the invocation that trained the runs."""
    saved = out / "invocation.json"
    if report_only and saved.is_file():
        kept = json.loads(saved.read_text())
        return kept["command"], kept["machine"]
    argv = sys.argv[2:] if len(sys.argv) > 1 and sys.argv[1] == "ablate" else []
    command = " ".join(["pixelsail ablate", *(shlex.quote(a) for a in argv)])
    if not report_only:
        out.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps({"command": command, "machine": machine}, indent=1) + "\n")
    return command, machine


def ablate_command(
    overrides: Optional[List[str]] = typer.Argument(None, help="base-config overrides, e.g. train.lr=5e-4"),
    quick: bool = typer.Option(False, "--quick", help="tiny model, a few steps, a handful of eval samples"),
    seeds: int = typer.Option(3, "--seeds", min=1, help="seeds per variant (0 .. N-1)"),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="training steps per run (default: the config's)"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="batch per step (default: config's)"),
    config: Optional[Path] = typer.Option(None, "--config", help=f"base recipe (default: {DEFAULT_CONFIG})"),
    out: Path = typer.Option(Path("runs/ablation"), "--out", help="runs and their results.json"),
    docs: Path = typer.Option(Path("docs"), "--docs", help="where ABLATION.md and ablation.png go"),
    eval_per_task: Optional[int] = typer.Option(None, "--eval-per-task", min=1,
                                                help="evaluation samples per task (default 40; --quick: 2)"),
    eval_split: str = typer.Option("val", "--eval-split", help="shapes split to evaluate on (val or test)"),
    variants: Optional[List[str]] = typer.Option(None, "--variant", help="only these variants (repeatable)"),
    jobs: int = typer.Option(1, "--jobs", min=1, help="runs trained at the same time (processes)"),
    threads: int = typer.Option(1, "--threads", min=1, help="torch threads per run"),
    stop_after: Optional[float] = typer.Option(None, "--stop-after", min=0.0,
                                               help="minutes: start no run after this; with --jobs > 1 also stop "
                                               "the runs still training (they keep a checkpoint to resume)"),
    report_only: bool = typer.Option(False, "--report-only", help="train nothing: write the report from the "
                                     "finished runs in --out and the records in --docs"),
    captions: bool = typer.Option(True, "--captions/--no-captions",
                                  help="score region descriptions with METEOR (Java); needed for the overall"),
) -> None:
    """Train and evaluate the four ablation variants x seeds; write a table and a bar chart."""
    from pixelsail.ablation import VARIANTS, AblationSettings, run_ablation
    from pixelsail.ablation_report import machine_description, summarize, write_report

    try:
        base = base_config(config, quick, steps, batch_size, list(overrides or []))
    except (ValueError, TypeError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    names = list(variants or [v.name for v in VARIANTS])
    known = [v.name for v in VARIANTS]
    bad = [n for n in names if n not in known]
    if bad:
        raise typer.BadParameter(f"unknown --variant {bad}; expected some of {known}")
    settings = AblationSettings(seeds=list(range(seeds)), eval_split=eval_split,
                                eval_per_task=eval_per_task or (QUICK_EVAL_PER_TASK if quick else 40),
                                max_new_tokens=QUICK_MAX_NEW_TOKENS if quick else 32, threads=threads, jobs=jobs,
                                variants=names, captions=captions)
    try:
        result = run_ablation(base, out, settings, echo=typer.echo, report_only=report_only,
                              stop_after_s=None if stop_after is None else 60.0 * stop_after, records_dir=docs)
    except ValueError as e:   # a finished run of another recipe
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summarize(result.results), indent=1))
    command, machine = _invocation(out, report_only, machine_description(threads, jobs, base.train.precision))
    md, png = write_report(result.results, docs, command=command, machine=machine,
                           wall_s=None if report_only else result.wall_s, full_command=None if quick else FULL_BUDGET,
                           out_dir=out)
    typer.echo(f"{len(result.results)} runs ({len(result.skipped)} skipped as finished)\ntable: {md}\nchart: {png}")
    if result.failed:
        typer.echo(f"{len(result.failed)} run(s) failed: " + "; ".join(f"{v} seed {s}" for v, s, _ in result.failed),
                   err=True)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("ablate")(ablate_command)
