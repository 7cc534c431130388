"""The paper's ablation on the shapes world: plain baseline, + learnable upsampling, + visual-prompt injection,
+ vision-expert distillation (= full Pixel-SAIL), each trained with several seeds on the same budget and data and
evaluated with :mod:`pixelsail.evaluate`.

Layout of the output directory::

    <out>/<variant>/seed-<s>/          the training run (run.yaml, metrics.jsonl, checkpoints/, model/)
    <out>/<variant>/seed-<s>/eval/     predictions.jsonl of the evaluation set
    <out>/<variant>/seed-<s>/results.json   the run's metrics (written last: its presence marks the run finished)
    <out>/summary.json                 mean / std per variant and metric

and ``<docs>/ABLATION.md`` (table of mean ± std, budget, machine, command) plus ``<docs>/ablation.png``
(:mod:`pixelsail.ablation_report`).
A finished (variant, seed) is skipped on a re-run; a run interrupted during training resumes from its checkpoint.
"""
from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from pixelsail.ablation_records import (RESULTS_FILE, finished_result, load_result, recipe_differences,
                                        recorded_seeds, run_dir, training_curve)
from pixelsail.config import DatasetSpec, DistillConfig, RunConfig, from_dict, to_dict

EVAL_TASKS = ("res", "gres", "vt_res", "vp_mcq", "region_caption")
TEACHER = "shapes"
READING_START = "<!-- reading:start -->"
READING_END = "<!-- reading:end -->"


@dataclass(frozen=True)
class Variant:
    """One row of the ablation: which of the paper's three improvements are switched on."""

    name: str
    title: str
    upsample: bool
    vp_injection: bool
    distill: bool


# cumulative, as in the paper: each row adds one improvement to the row above
VARIANTS: tuple[Variant, ...] = (
    Variant("baseline", "plain baseline", upsample=False, vp_injection=False, distill=False),
    Variant("upsample", "+ learnable upsampling", upsample=True, vp_injection=False, distill=False),
    Variant("vp_injection", "+ visual-prompt injection", upsample=True, vp_injection=True, distill=False),
    Variant("distill", "+ expert distillation (full Pixel-SAIL)", upsample=True, vp_injection=True, distill=True),
)


@dataclass(frozen=True)
class Metric:
    key: str          # key in a run's results.json
    label: str        # column header
    scale: float = 1.0  # multiplier for the bar chart (MCQ accuracy is a fraction; the chart is in %)


METRICS: tuple[Metric, ...] = (
    Metric("res_single_ciou", "RES single cIoU"),
    Metric("res_single_giou", "RES single gIoU"),
    Metric("res_multi_ciou", "RES multi cIoU"),
    Metric("res_multi_giou", "RES multi gIoU"),
    Metric("res_none_giou", "no-target gIoU"),
    Metric("res_none_nacc", "no-target N-acc"),
    Metric("vt_res_ciou", "V-T RES cIoU"),
    Metric("vt_res_giou", "V-T RES gIoU"),
    Metric("mcq_acc", "VP MCQ acc", scale=100.0),
    Metric("meteor", "caption METEOR"),
    Metric("overall", "PerBench overall"),
)


@dataclass
class AblationSettings:
    """The budget and evaluation every run shares."""

    seeds: Sequence[int] = (0, 1, 2)
    eval_split: str = "val"
    eval_per_task: int = 40          # evaluation samples per task (EVAL_TASKS)
    eval_seed: int = 0
    max_new_tokens: int = 32          # the longest shapes answer (a region description) is 26 tokens
    captions: bool = True            # METEOR (Java); without it METEOR and the PerBench overall are not computed
    threads: int = 1                 # torch threads per run
    jobs: int = 1                    # runs trained at the same time (separate processes)
    variants: Sequence[str] = field(default_factory=lambda: [v.name for v in VARIANTS])


# ---------------------------------------------------------------------------------------------------------------
# building the variants


def teacher_channels() -> dict[str, int]:
    """Channels of the shipped shapes expert's "pixel" and "image" features (from its config)."""
    from pixelsail.experts import load_teacher

    return load_teacher(TEACHER).channels()


def distill_teachers() -> dict[str, dict[str, Any]]:
    """``distill.teachers``: the "pixel" map into the upsampled features, the "image" map into the vision tokens."""
    from pixelsail.experts.cache import DEFAULT_SOURCES

    return {name: {"channels": c, "source": DEFAULT_SOURCES[name]} for name, c in teacher_channels().items()}


def with_teacher(spec: DatasetSpec) -> DatasetSpec:
    """The same dataset, its samples carrying the shapes expert's features (computed online, per sample)."""
    return DatasetSpec("distilled", spec.weight,
                       {"dataset": {"name": spec.name, "args": copy.deepcopy(spec.args)}, "teacher": TEACHER})


def without_teacher(spec: DatasetSpec) -> DatasetSpec:
    """The dataset a ``distilled`` wrapper holds (any other spec as it is)."""
    if spec.name != "distilled":
        return spec
    inner = spec.args["dataset"]
    return DatasetSpec(inner["name"], spec.weight, copy.deepcopy(inner.get("args", {})))


def variant_run(base: RunConfig, variant: Variant, seed: int, out_dir: str | Path,
                teachers: dict[str, dict[str, Any]] | None = None) -> RunConfig:
    """``base`` with ``variant``'s switches, ``seed`` and its own output directory; nothing else changes.

    Distillation also wraps every training dataset, both stages', so its samples carry teacher features (same
    samples, same order); the other variants train on the plain datasets (a base that distils, as the shipped
    recipe does since session 9, is unwrapped first).
    """
    run = from_dict(RunConfig, copy.deepcopy(to_dict(base)))
    run.model.upsample = variant.upsample
    run.model.vp_injection = variant.vp_injection
    run.data.datasets = [without_teacher(s) for s in run.data.datasets]
    run.data.warmup_datasets = [without_teacher(s) for s in run.data.warmup_datasets]
    if variant.distill:
        run.model.distill = DistillConfig(enabled=True, teachers=teachers or distill_teachers(),
                                          weight=base.model.distill.weight)
        run.data.datasets = [with_teacher(s) for s in run.data.datasets]
        run.data.warmup_datasets = [with_teacher(s) for s in run.data.warmup_datasets]
    else:
        run.model.distill = DistillConfig(enabled=False, teachers={}, weight=base.model.distill.weight)
    run.train.seed = int(seed)
    run.train.output_dir = str(Path(out_dir) / variant.name / f"seed-{seed}")
    return run


def variant_by_name(name: str) -> Variant:
    for v in VARIANTS:
        if v.name == name:
            return v
    raise ValueError(f"unknown ablation variant {name!r}; expected one of {[v.name for v in VARIANTS]}")


# ---------------------------------------------------------------------------------------------------------------
# evaluation set


class EvalSet:
    """``per_task`` shapes samples of each task in EVAL_TASKS, interleaved so one scene's tasks are adjacent."""

    def __init__(self, split: str, per_task: int, image_size: int, seed: int = 0,
                 tasks: Sequence[str] = EVAL_TASKS):
        from pixelsail.data.shapes import ShapesDataset

        self.tasks = list(tasks)
        self.parts = [ShapesDataset(split=split, tasks=[t], image_size=image_size, size=per_task, seed=seed)
                      for t in self.tasks]
        self.per_task = per_task

    def __len__(self) -> int:
        return self.per_task * len(self.tasks)

    def __getitem__(self, i: int):
        if not 0 <= i < len(self):
            raise IndexError(f"evaluation index {i} out of range [0, {len(self)})")
        return self.parts[i % len(self.tasks)][i // len(self.tasks)]


def training_image_size(run: RunConfig) -> int:
    """The shapes image size of the training mixture (looking inside 'distilled' wrappers)."""
    for spec in map(without_teacher, run.data.datasets):
        if spec.name == "shapes":
            return int(spec.args.get("image_size", 128))
    raise ValueError("the ablation's base config must train on the 'shapes' dataset")


def ablation_metrics(records: list[dict], captions: bool = True) -> dict[str, float]:
    """The ablation's numbers from prediction records, scored by :func:`pixelsail.evaluate.score_records`.

    Referring segmentation is split three ways: ``res`` (one target), ``gres`` with targets (multi) and ``gres``
    without (no target). Under the LISA convention a no-target sample has I = 0, so its cIoU is 0 whatever the model
    does; its gIoU (1 for an empty prediction, else 0) and ReLA's N-acc are the informative numbers.
    """
    from pixelsail.evaluate import score_records
    from pixelsail.metrics import METEOR_KEY

    full = score_records(records, captions=captions).results
    multi = [r for r in records if r["task"] == "gres" and not r.get("meta", {}).get("no_target")]
    none = [r for r in records if r["task"] == "gres" and r.get("meta", {}).get("no_target")]
    multi_res = score_records(multi, captions=False).results.get("gres", {})
    none_res = score_records(none, captions=False).results.get("gres", {})
    nan = float("nan")
    out = {
        "res_single_ciou": full.get("res", {}).get("cIoU (LISA)", nan),
        "res_single_giou": full.get("res", {}).get("gIoU (LISA)", nan),
        "res_multi_ciou": multi_res.get("cIoU (LISA)", nan),
        "res_multi_giou": multi_res.get("gIoU (LISA)", nan),
        "res_none_ciou": none_res.get("cIoU (LISA)", nan),
        "res_none_giou": none_res.get("gIoU (LISA)", nan),
        "res_none_nacc": none_res.get("N-acc (ReLA)", nan),
        "vt_res_ciou": full.get("vt_res", {}).get("cIoU (LISA)", nan),
        "vt_res_giou": full.get("vt_res", {}).get("gIoU (LISA)", nan),
        "mcq_acc": full.get("vp_mcq", {}).get("MCQ acc (PerBench)", nan),
        "meteor": full.get("region_caption", {}).get(METEOR_KEY, nan),
        "overall": full.get("perbench", {}).get("Overall (PerBench)", nan),
    }
    out["samples_multi"], out["samples_none"] = len(multi), len(none)
    return {k: float(v) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------------------------
# one run


def train_and_evaluate(run_dict: dict, variant: str, settings_dict: dict, log_file: str | None = None) -> dict:
    """Train one (variant, seed) run (resuming a checkpoint if one exists), evaluate it, write its results.json.

    Takes plain dicts so it can run in a spawned worker process.
    """
    import torch

    if log_file is not None:  # a worker process: keep its progress bars out of the shared terminal
        fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    import pixelsail.experts.cache  # noqa: F401  (registers the 'distilled' dataset)
    from pixelsail.evaluate import predict, write_jsonl
    from pixelsail.model import PixelSail
    from pixelsail.train import latest_checkpoint, train

    settings = AblationSettings(**settings_dict)
    torch.set_num_threads(max(1, settings.threads))
    run = from_dict(RunConfig, run_dict)
    out = Path(run.train.output_dir)
    model_dir = out / "model"
    train_info: dict[str, Any]
    info_file = out / "train_summary.json"
    if model_dir.is_dir() and info_file.is_file():
        train_info = json.loads(info_file.read_text())
    else:
        summary = train(run, resume=latest_checkpoint(out) is not None)
        if summary.stopped_early:
            raise RuntimeError(f"{out}: training was stopped at step {summary.steps}")
        train_info = {"steps": summary.steps, "wall_s": summary.wall_s, "samples_per_s": summary.samples_per_s,
                      "final_loss": summary.final_loss, "losses": summary.losses}
        info_file.write_text(json.dumps(train_info, indent=1))
    train_info["curve"] = training_curve(out / "metrics.jsonl")

    t0 = time.perf_counter()
    model = PixelSail.from_pretrained(model_dir).eval()
    model.config.option_decoding = False   # the paper's protocol: multiple-choice answers generated freely
    model.config.no_target_check = False   # ... and every answer generated once
    dataset = EvalSet(settings.eval_split, settings.eval_per_task, training_image_size(run), settings.eval_seed)
    with torch.inference_mode():
        records = predict(model, dataset, max_new_tokens=settings.max_new_tokens, progress=False)
    write_jsonl(records, out / "eval" / "predictions.jsonl")
    metrics = ablation_metrics(records, captions=settings.captions)
    result = {"variant": variant, "seed": run.train.seed, "metrics": metrics, "train": train_info,
              "eval": {"split": settings.eval_split, "per_task": settings.eval_per_task, "seed": settings.eval_seed,
                       "samples": len(records),
                       "max_new_tokens": settings.max_new_tokens, "captions": settings.captions,
                       "wall_s": time.perf_counter() - t0},
              "threads": settings.threads, "run": to_dict(run)}
    tmp = out / f".{RESULTS_FILE}.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out / RESULTS_FILE)
    return result


# ---------------------------------------------------------------------------------------------------------------
# the whole ablation


@dataclass
class AblationResult:
    results: list[dict]            # one per (variant, seed), in variant then seed order
    skipped: list[tuple[str, int]]  # runs found finished
    wall_s: float
    failed: list[tuple[str, int, str]] = field(default_factory=list)  # (variant, seed, error)


def run_ablation(base: RunConfig, out_dir: str | Path, settings: AblationSettings,
                 echo: Callable[[str], None] = print, report_only: bool = False,
                 stop_after_s: float | None = None, records_dir: str | Path | None = None) -> AblationResult:
    """Train and evaluate every (variant, seed) not finished yet (none with ``report_only``); return all finished
    results. A run that fails is listed in ``failed`` and the others go on.

    ``stop_after_s``: no run starts after this many seconds; with ``jobs > 1`` the runs still training then are
    asked to stop (SIGTERM: they save a checkpoint, which the next invocation resumes).
    ``records_dir``: where finished runs are also kept (:mod:`pixelsail.ablation_records`); a (variant, seed) with
    a record counts as finished, and the results include every recorded seed of the chosen variants."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    variants = [variant_by_name(n) for n in settings.variants]
    teachers = distill_teachers() if any(v.distill for v in variants) else None
    todo, skipped = [], []
    # seed-major: when time runs out, the finished runs cover every variant with the same seeds

    def finished(v: Variant, s: int) -> dict | None:
        """The (variant, seed)'s finished results, refused when another recipe made them."""
        done = finished_result(out, records_dir, v.name, s)
        if done is not None and (differ := recipe_differences(done, variant_run(base, v, s, out, teachers))):
            shown = ", ".join(differ[:4]) + (f" and {len(differ) - 4} more" if len(differ) > 4 else "")
            raise ValueError(f"{v.name} seed {s} was finished with another recipe ({shown} differ): a table "
                             "would mix them; give the same config or move its results and records away")
        return done

    for s in settings.seeds:
        for v in variants:
            if finished(v, s) is None:
                todo.append((v, s, variant_run(base, v, s, out, teachers)))
            else:
                skipped.append((v.name, s))
    for name, s in skipped:
        echo(f"skip {name} seed {s}: {run_dir(out, name, s) / RESULTS_FILE} exists")
    settings_dict = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in vars(settings).items()}
    deadline = None if stop_after_s is None else t0 + stop_after_s
    if report_only:
        todo = []
    if settings.jobs <= 1:
        failed = _run_inline(todo, settings_dict, deadline, echo)
    else:
        failed = _run_in_processes(todo, settings_dict, settings.jobs, deadline, echo)
    recorded = recorded_seeds(records_dir, [v.name for v in variants]) if records_dir is not None else {}
    results = [r for v in variants for s in sorted(set(settings.seeds) | set(recorded.get(v.name, [])))
               if (r := finished(v, s)) is not None]   # recorded seeds beyond --seeds are checked too
    return AblationResult(results, skipped, time.perf_counter() - t0, failed)


Todo = list[tuple[Variant, int, RunConfig]]


def _run_inline(todo: Todo, settings_dict: dict, deadline: float | None,
                echo: Callable[[str], None]) -> list[tuple[str, int, str]]:
    failed = []
    for v, s, run in todo:
        if deadline is not None and time.perf_counter() > deadline:
            echo(f"time is up: {v.name} seed {s} not started")
            failed.append((v.name, s, "not started (time limit)"))
            continue
        echo(f"run {v.name} seed {s} -> {run.train.output_dir}")
        try:
            _report(echo, train_and_evaluate(to_dict(run), v.name, settings_dict))
        except Exception as e:  # one failed run must not lose the others' report
            failed.append((v.name, s, f"{type(e).__name__}: {e}"))
            echo(f"FAILED {v.name} seed {s}: {type(e).__name__}: {e}")
    return failed


def _run_in_processes(todo: Todo, settings_dict: dict, jobs: int, deadline: float | None,
                      echo: Callable[[str], None]) -> list[tuple[str, int, str]]:
    """Up to ``jobs`` runs at a time, each in its own spawned process writing to its ``log.txt``."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    queue, running, failed = list(todo), {}, []
    stopping = False
    while queue or running:
        if not stopping and deadline is not None and time.perf_counter() > deadline:
            stopping = True
            for v, s, _ in queue:
                failed.append((v.name, s, "not started (time limit)"))
            echo(f"time is up: {len(queue)} run(s) not started, asking {len(running)} to stop")
            queue.clear()
            for proc in running:
                proc.terminate()
        while queue and len(running) < jobs:
            v, s, run = queue.pop(0)
            log = Path(run.train.output_dir) / "log.txt"
            log.parent.mkdir(parents=True, exist_ok=True)
            proc = ctx.Process(target=train_and_evaluate, args=(to_dict(run), v.name, settings_dict, str(log)),
                               name=f"ablation-{v.name}-{s}")
            proc.start()
            running[proc] = (v.name, s, run.train.output_dir)
            echo(f"start {v.name} seed {s} (pid {proc.pid}) -> {run.train.output_dir} (log: {log})")
        time.sleep(0.5)
        for proc in [p for p in running if not p.is_alive()]:
            proc.join()
            name, s, out = running.pop(proc)
            result = load_result(Path(out).parent.parent, name, s)
            if proc.exitcode == 0 and result is not None:
                _report(echo, result)
            else:
                failed.append((name, s, f"exit code {proc.exitcode}"))
                echo(f"FAILED {name} seed {s}: exit code {proc.exitcode} (see {out}/log.txt)")
    return failed


def _report(echo: Callable[[str], None], r: dict) -> None:
    m = r["metrics"]
    echo(f"done {r['variant']} seed {r['seed']}: train {r['train']['wall_s']:.0f} s, eval {r['eval']['wall_s']:.0f} s, "
         f"RES cIoU {m['res_single_ciou']:.1f}, MCQ {m['mcq_acc']:.2f}, METEOR {m['meteor']:.1f}, "
         f"overall {m['overall']:.1f}")
