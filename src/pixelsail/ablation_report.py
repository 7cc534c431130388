"""The ablation's report: mean ± std per variant and metric, the step-by-step comparison with its test, the loss
table, the bar chart (``ablation.png``) and ``ABLATION.md`` (hand-written reading kept between runs)."""
from __future__ import annotations

import json
import math
import os
import platform
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pixelsail.ablation import EVAL_TASKS, METRICS, READING_END, READING_START, VARIANTS, variant_by_name
from pixelsail.config import inner_dataset


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value), ignoring NaNs."""
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def summarize(results: Sequence[dict]) -> dict[str, dict[str, Any]]:
    """{variant: {"seeds": [...], metric: [mean, std], ...}} in VARIANTS order."""
    out: dict[str, dict[str, Any]] = {}
    for v in VARIANTS:
        runs = [r for r in results if r["variant"] == v.name]
        if not runs:
            continue
        row: dict[str, Any] = {"seeds": [r["seed"] for r in runs]}
        for key in sorted({k for r in runs for k in r["metrics"]}):
            row[key] = list(mean_std([r["metrics"].get(key, float("nan")) for r in runs]))
        out[v.name] = row
    return out


LOSSES: tuple[tuple[str, str], ...] = (("loss", "total"), ("loss/lm", "LM"), ("loss/mask_bce", "mask BCE"),
                                        ("loss/mask_dice", "mask Dice"), ("loss/distill_pixel", "distill pixel"),
                                        ("loss/distill_image", "distill image"))


def loss_stats(results: Sequence[dict]) -> dict[str, dict[str, tuple[float, float]]]:
    """{variant: {loss name: (mean, std)}} of the last logged training losses."""
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for v in VARIANTS:
        runs = [r for r in results if r["variant"] == v.name]
        for key, _ in LOSSES:
            values = [r["train"]["losses"][key] for r in runs if key in r["train"].get("losses", {})]
            if values:
                out.setdefault(v.name, {})[key] = mean_std(values)
    return out


def loss_table(results: Sequence[dict]) -> str:
    """Training losses of the last log interval, mean ± std over seeds: a signal that exists even when the
    evaluation metrics are still at zero."""
    stats = loss_stats(results)
    lines = ["| variant | " + " | ".join(label for _, label in LOSSES) + " |", "|---|" + "---:|" * len(LOSSES)]
    for v in VARIANTS:
        if v.name not in stats:
            continue
        cells = [_cell(*stats[v.name][k], digits=3) if k in stats[v.name] else "–" for k, _ in LOSSES]
        lines.append(f"| {v.title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(mean: float, std: float, fraction: bool = False, digits: int | None = None) -> str:
    if math.isnan(mean):
        return "–"
    d = digits if digits is not None else 3 if fraction else 1
    return f"{mean:.{d}f} ± {std:.{d}f}"


def results_table(summary: dict[str, dict[str, Any]]) -> str:
    header = "| variant | seeds | " + " | ".join(m.label for m in METRICS) + " |"
    lines = [header, "|---|---:|" + "---:|" * len(METRICS)]
    for v in VARIANTS:
        row = summary.get(v.name)
        if row is None:
            continue
        cells = [_cell(*row.get(m.key, [float("nan")] * 2), fraction=m.key == "mcq_acc") for m in METRICS]
        lines.append(f"| {v.title} | {len(row['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare_steps(summary: dict[str, dict[str, Any]], keys: Sequence[str] = ("res_single_ciou", "res_multi_ciou",
                  "res_none_nacc", "vt_res_ciou", "mcq_acc", "meteor", "overall")) -> list[str]:
    """One line per improvement: the change of each headline metric against the row above, and whether it is
    larger than twice its standard error (Welch) — "up"/"down" — or not ("~")."""
    lines = []
    names = [v.name for v in VARIANTS if v.name in summary]
    for prev, cur in zip(names, names[1:]):
        a, b = summary[prev], summary[cur]
        na, nb = len(a["seeds"]), len(b["seeds"])
        parts = []
        for k in keys:
            (ma, sa), (mb, sb) = a.get(k, [math.nan] * 2), b.get(k, [math.nan] * 2)
            if math.isnan(ma) or math.isnan(mb):
                continue
            diff = mb - ma
            se = math.sqrt(sa ** 2 / na + sb ** 2 / nb)
            verdict = "~" if se == 0 and diff == 0 else ("up" if diff > 2 * se else "down" if diff < -2 * se else "~")
            label = next(m.label for m in METRICS if m.key == k)
            parts.append(f"{label} {diff:+.3f} ({verdict})" if k == "mcq_acc" else f"{label} {diff:+.1f} ({verdict})")
        lines.append(f"- {variant_by_name(cur).title} vs {variant_by_name(prev).title}: " + ", ".join(parts))
    return lines


def _grouped_bars(ax: Any, labels: Sequence[str], rows: Sequence[tuple[str, list[float], list[float]]]) -> None:
    """One group of bars per label, one bar per (name, means, stds) row, with std error bars."""
    x = np.arange(len(labels))
    width = 0.8 / max(1, len(rows))
    for j, (name, means, stds) in enumerate(rows):
        ax.bar(x + (j - (len(rows) - 1) / 2) * width, means, width, yerr=stds, capsize=2, label=name)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=25, ha="right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def plot_summary(summary: dict[str, dict[str, Any]], losses: dict[str, dict[str, tuple[float, float]]],
                 png: str | Path) -> None:
    """Evaluation metrics (left) and the end-of-training losses (right), per variant, mean ± std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [m for m in METRICS if m.key not in ("res_single_giou", "res_multi_giou", "vt_res_giou")]
    names = [v for v in VARIANTS if v.name in summary]
    nan2 = [math.nan, math.nan]
    fig, (ax, lax) = plt.subplots(1, 2, figsize=(14, 4.8), gridspec_kw={"width_ratios": [3, 1]})
    _grouped_bars(ax, [m.label + (" ×100" if m.scale != 1 else "") for m in shown],
                  [(f"{v.title} (n={len(summary[v.name]['seeds'])})",
                    [summary[v.name].get(m.key, nan2)[0] * m.scale for m in shown],
                    [summary[v.name].get(m.key, nan2)[1] * m.scale for m in shown]) for v in names])
    ax.set_ylabel("% (mean ± std over seeds)")
    ax.set_title("Pixel-SAIL ablation on the shapes world: evaluation")
    keys = [(k, label) for k, label in LOSSES if k in ("loss/lm", "loss/mask_bce", "loss/mask_dice")]
    _grouped_bars(lax, [label for _, label in keys],
                  [(v.title, [losses.get(v.name, {}).get(k, (math.nan, math.nan))[0] for k, _ in keys],
                    [losses.get(v.name, {}).get(k, (math.nan, math.nan))[1] for k, _ in keys]) for v in names])
    lax.set_title("training loss at the end")
    if names:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def machine_description(threads: int, jobs: int) -> str:
    import torch

    from pixelsail.hardware import cpu_name

    return (f"{cpu_name()}, {os.cpu_count()} cores visible, Python {platform.python_version()}, torch {torch.__version__}; "
            f"{jobs} run(s) at a time, {threads} torch thread(s) each, fp32")


def budget_lines(results: Sequence[dict]) -> list[str]:
    if not results:
        return []
    r0 = results[0]
    tc, data = r0["run"]["train"], r0["run"]["data"]
    model = r0["run"]["model"]
    steps, batch = tc["max_steps"], tc["batch_size"] * tc["grad_accum"]
    train_s = [r["train"]["wall_s"] for r in results]
    eval_s = [r["eval"]["wall_s"] for r in results]
    inner = [inner_dataset(d) for d in data["datasets"]]
    return [
        f"- training per run: {steps} steps × batch {batch} = {steps * batch} samples, lr {tc['lr']}, "
        f"warm-up {tc['warmup_ratio']}, {tc['precision']}; data {json.dumps(inner)}",
        f"- model: hidden {model['hidden_size']}, {model['num_hidden_layers']} layers, patch {model['patch_size']}, "
        f"mask_dim {model['mask_dim']}, upsample stride {model['upsample_stride']}",
        f"- evaluation per run: shapes `{r0['eval']['split']}` split, {r0['eval']['per_task']} samples of each of "
        f"{', '.join(EVAL_TASKS)} ({r0['eval']['samples']} in all), greedy, ≤ {r0['eval']['max_new_tokens']} new "
        f"tokens",
        f"- wall time per run: training {np.mean(train_s):.0f} s (min {min(train_s):.0f}, max {max(train_s):.0f}), "
        f"evaluation {np.mean(eval_s):.0f} s; {len(results)} runs, {sum(train_s) + sum(eval_s):.0f} s of run time",
    ]


def _kept_reading(path: Path) -> str | None:
    if not path.is_file():
        return None
    m = re.search(re.escape(READING_START) + r"(.*?)" + re.escape(READING_END), path.read_text(), re.S)
    return m.group(1).strip("\n") if m else None


def write_report(results: Sequence[dict], docs_dir: str | Path, *, command: str, machine: str, wall_s: float | None,
                 full_command: str | None = None) -> tuple[Path, Path]:
    """``ABLATION.md`` and ``ablation.png`` in ``docs_dir``. A hand-written reading between the reading markers of
    an existing ``ABLATION.md`` is kept."""
    docs = Path(docs_dir)
    docs.mkdir(parents=True, exist_ok=True)
    md, png = docs / "ABLATION.md", docs / "ablation.png"
    summary = summarize(results)
    plot_summary(summary, loss_stats(results), png)
    reading = _kept_reading(md) or ("(No hand-written reading yet: write it between the markers; a re-run keeps "
                                    "it.)")
    lines = [
        "# Ablation: Pixel-SAIL's three improvements on the shapes world",
        "",
        "Each row adds one improvement to the row above, trained on the same data with the same budget "
        "(`pixelsail.ablation`); every number is the mean ± sample standard deviation over seeds.",
        "",
        results_table(summary),
        "",
        f"![ablation bar chart]({png.name})",
        "",
        "Metrics (all from `pixelsail.evaluate.score_records`): IoU values in %, LISA convention; *single* = "
        "`res` samples (one target), *multi* = `gres` samples with targets, *no-target* = `gres` samples without "
        "(LISA cIoU is 0 there by construction, so the table shows their gIoU — the share answered with an empty "
        "mask — and ReLA's N-acc instead). V-T RES = visual-text referring segmentation (`vt_res`). VP MCQ acc is "
        "a fraction (PerBench rule: the answer letter occurs in the output). METEOR = COCOEvalCap Java METEOR 1.5 "
        "on region descriptions. PerBench overall = mean(METEOR, acc × 100, (V-T cIoU + gIoU) / 2) "
        "(`pixelsail.metrics.perbench_overall`).",
        "",
        "## Change per improvement (automatic)",
        "",
        "Difference of the means against the row above; *up*/*down* when it exceeds twice its standard error "
        "(Welch), else *~* (not distinguishable at this budget and number of seeds).",
        "",
        *compare_steps(summary),
        "",
        "## Training losses at the end of training",
        "",
        "Mean over the last log interval of each run (`metrics.jsonl`), mean ± std over seeds; the total includes "
        "each variant's own terms (distillation adds two), so compare the components.",
        "",
        loss_table(results),
        "",
        "## Reading",
        "",
        READING_START,
        reading,
        READING_END,
        "",
        "## Budget and machine",
        "",
        *budget_lines(results),
        f"- machine: {machine}",
        *([f"- wall time of the command that wrote this file: {wall_s:.0f} s (finished runs are skipped on a "
            "re-run)"] if wall_s is not None else []),
        "",
        "## Command",
        "",
        "```",
        command,
        "```",
    ]
    if full_command:
        lines += ["", "The budget the issue asks for, about an hour of a quiet 2-core machine (estimated from the step "
                  "times above, not run):", "", "```",
                  full_command, "```"]
    md.write_text("\n".join(lines) + "\n")
    return md, png
