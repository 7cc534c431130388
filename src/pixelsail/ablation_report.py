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


def welch_p(mean_a: float, std_a: float, n_a: int, mean_b: float, std_b: float, n_b: int) -> float:
    """Two-sided p-value of Welch's t-test for a difference of two means (from means, sample stds and counts).
    NaN with fewer than two seeds on a side; 0 or 1 when neither side varies."""
    from scipy import stats

    if n_a < 2 or n_b < 2:
        return math.nan
    va, vb = std_a ** 2 / n_a, std_b ** 2 / n_b
    if va + vb == 0:
        return 1.0 if mean_a == mean_b else 0.0
    t = (mean_b - mean_a) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (n_a - 1) + vb ** 2 / (n_b - 1))
    return float(2 * stats.t.sf(abs(t), df))


def compare_steps(summary: dict[str, dict[str, Any]], keys: Sequence[str] = ("res_single_ciou", "res_multi_ciou",
                  "res_none_nacc", "vt_res_ciou", "mcq_acc", "meteor", "overall"), alpha: float = 0.05) -> list[str]:
    """One line per improvement: the change of each headline metric against the row above, with the p-value of
    Welch's t-test over seeds — "up"/"down" when p < ``alpha``, "~" when not, "n/a" with a single seed."""
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
            diff, p = mb - ma, welch_p(ma, sa, na, mb, sb, nb)
            verdict = "n/a" if math.isnan(p) else ("up" if diff > 0 else "down") if p < alpha else "~"
            label = next(m.label for m in METRICS if m.key == k)
            change = f"{diff:+.3f}" if k == "mcq_acc" else f"{diff:+.1f}"
            parts.append(f"{label} {change} ({verdict}" + ("" if math.isnan(p) else f", p {p:.2g}") + ")")
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


def machine_description(threads: int, jobs: int, precision: str = "fp32") -> str:
    """The machine, and the precision the runs' ``train.precision`` resolves to on it."""
    import torch

    from pixelsail.hardware import autocast_dtype, cpu_name

    resolved = "bf16 autocast" if autocast_dtype(precision, "cpu") is not None else "fp32"
    return (f"{cpu_name()}, {os.cpu_count()} cores visible, Python {platform.python_version()}, torch {torch.__version__}; "
            f"{jobs} run(s) at a time, {threads} torch thread(s) each, {resolved}")


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


def row_commands(full_command: str) -> list[str]:
    """One line per variant that trains and evaluates just that row with the full budget."""
    head, _, tail = full_command.partition("pixelsail ablate")
    return [f"- {v.title}: `{head}pixelsail ablate --variant {v.name}{tail}`" for v in VARIANTS]


def reused_lines(results: Sequence[dict]) -> list[str]:
    """Runs whose training was not done by the ablation itself but taken over (same config and seed)."""
    return [f"- {variant_by_name(r['variant']).title}, seed {r['seed']}: trained as {r['train']['reused_from']}"
            for r in results if r.get("train", {}).get("reused_from")]


def write_report(results: Sequence[dict], docs_dir: str | Path, *, command: str, machine: str, wall_s: float | None,
                 full_command: str | None = None, out_dir: str | Path | None = None) -> tuple[Path, Path]:
    """``ABLATION.md``, ``ablation.png``, ``ablation_curves.png`` and (from the predictions in ``out_dir``, when
    they are there) ``ablation_masks.png`` in ``docs_dir``. A hand-written reading between the reading markers of
    an existing ``ABLATION.md`` is kept, and so is a mask picture the runs on disk cannot redraw."""
    from pixelsail.ablation_figures import plot_curves, plot_masks

    docs = Path(docs_dir)
    docs.mkdir(parents=True, exist_ok=True)
    md, png = docs / "ABLATION.md", docs / "ablation.png"
    curves_png, masks_png = docs / "ablation_curves.png", docs / "ablation_masks.png"
    summary = summarize(results)
    plot_summary(summary, loss_stats(results), png)
    plot_curves(results, curves_png)
    if out_dir is not None:
        plot_masks(results, out_dir, masks_png)
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
        "Difference of the means against the row above and the two-sided p-value of Welch's t-test over the "
        "seeds: *up*/*down* when p < 0.05, else *~* (not distinguishable at this budget and number of seeds).",
        "",
        *compare_steps(summary),
        "",
        *([f"![masks of every variant for the same test questions]({masks_png.name})", "",
           "The same test questions answered by every variant (one seed): the ground truth first, then each "
           "variant's answer and masks.", ""] if masks_png.is_file() else []),
        "## Training losses at the end of training",
        "",
        "Mean over the last log interval of each run (`metrics.jsonl`), mean ± std over seeds; the total includes "
        "each variant's own terms (distillation adds two), so compare the components.",
        "",
        loss_table(results),
        "",
        *([f"![training curves]({curves_png.name})", ""] if curves_png.is_file() else []),
        "## Reading",
        "",
        READING_START,
        reading,
        READING_END,
        "",
        "## Budget and machine",
        "",
        *budget_lines(results),
        *reused_lines(results),
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
        lines += ["", "Each row on its own, with the full budget (finished seeds, in `--out` or as records in "
                  "`docs/ablation/`, are skipped):", "", *row_commands(full_command)]
    md.write_text("\n".join(lines) + "\n")
    return md, png
