"""The ablation's pictures beyond the bar chart: training curves per variant (``ablation_curves.png``) and the
masks every variant drew for the same test questions (``ablation_masks.png``)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from pixelsail.ablation import VARIANTS, EvalSet, training_image_size
from pixelsail.ablation_records import run_dir
from pixelsail.config import RunConfig, from_dict
from pixelsail.evaluate import read_jsonl

CURVE_PANELS = (("loss/mask_dice", "mask Dice loss"), ("loss/mask_bce", "mask BCE loss"), ("loss/lm", "LM loss"))


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing moving average over ``window`` points (fewer at the start), NaNs skipped."""
    v = np.asarray(values, dtype=float)
    out = np.empty_like(v)
    for i in range(len(v)):
        part = v[max(0, i - window + 1): i + 1]
        part = part[~np.isnan(part)]
        out[i] = part.mean() if part.size else math.nan
    return out


def plot_curves(results: Sequence[dict], png: str | Path, window: int = 8) -> bool:
    """Training losses against step, one line per variant (mean over its seeds, the band from the lowest to the
    highest seed), each loss smoothed over ``window`` log records. False (nothing drawn) without curves."""
    with_curves = [r for r in results if r.get("train", {}).get("curve", {}).get("step")]
    if not with_curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVE_PANELS), figsize=(5 * len(CURVE_PANELS), 3.8))
    for v in VARIANTS:
        runs = [r["train"]["curve"] for r in with_curves if r["variant"] == v.name]
        if not runs:
            continue
        steps = min((c["step"] for c in runs), key=len)          # the shortest run's steps: the common part
        for ax, (key, title) in zip(axes, CURVE_PANELS):
            ys = [smooth(c[key][:len(steps)], window) for c in runs if key in c]
            if not ys:
                continue
            stack = np.vstack(ys)
            line, = ax.plot(steps, stack.mean(axis=0), label=f"{v.title} (n={len(ys)})", linewidth=1.2)
            if len(ys) > 1:
                ax.fill_between(steps, stack.min(axis=0), stack.max(axis=0), color=line.get_color(), alpha=0.2)
            ax.set_title(title)
    axes[-1].set_yscale("log")   # the LM loss falls by two orders of magnitude
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"training losses, mean over seeds (band: lowest to highest seed), moving average of {window} logs",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return True


def _predictions(out_dir: Path, variant: str, seed: int) -> dict[int, dict] | None:
    path = run_dir(out_dir, variant, seed) / "eval" / "predictions.jsonl"
    return {r["index"]: r for r in read_jsonl(path)} if path.is_file() else None


def pick_examples(records: dict[int, dict], per_task: int = 2) -> list[int]:
    """Indices of the first ``per_task`` samples of each mask task: ``res``; ``gres`` with targets and one without
    when there is one; ``vt_res``."""
    picked: list[int] = []
    for task, wanted in (("res", per_task), ("gres", per_task - 1), ("vt_res", per_task)):
        picked += [i for i, r in sorted(records.items()) if r["task"] == task
                   and not r.get("meta", {}).get("no_target")][:wanted]
    picked += [i for i, r in sorted(records.items()) if r["task"] == "gres" and r.get("meta", {}).get("no_target")][:1]
    return picked


def _caption(text: str, masks: list, limit: int = 60) -> str:
    """The answer (shortened) and what its masks hold: "no mask", "1 mask", "2 masks, 1 empty"."""
    text = " ".join(text.split())
    text = text if len(text) <= limit else text[:limit - 1] + "…"
    empty = sum(not m.any() for m in masks)
    count = f"{len(masks)} mask" + ("s" if len(masks) > 1 else "") if masks else "no mask"
    if empty:
        count += ", empty" if empty == len(masks) == 1 else f", {empty} empty"
    return f"{text or '(no text)'}\n{count}"


def plot_masks(results: Sequence[dict], out_dir: str | Path, png: str | Path, per_task: int = 2) -> bool:
    """A grid: one row per test question (referring, multi-target, no-target, visual-text), the ground truth and
    the question, then each variant's answer and masks (in VARIANTS order), all from the same seed's predictions.
    False (nothing drawn) when some variant's predictions are not on disk (run directories stay on their machine)."""
    from pixelsail.scoring import record_masks
    from pixelsail.viz import draw_prompts, image_grid, overlay_masks

    out = Path(out_dir)
    variants = [v for v in VARIANTS if any(r["variant"] == v.name for r in results)]
    seeds = sorted({r["seed"] for r in results if all(
        any(q["variant"] == v.name and q["seed"] == r["seed"] for q in results) for v in variants)})
    for seed in seeds:
        preds = {v.name: _predictions(out, v.name, seed) for v in variants}
        if all(p is not None for p in preds.values()):
            break
    else:
        return False
    first = next(r for r in results if r["variant"] == variants[0].name and r["seed"] == seed)
    ev = first["eval"]
    dataset = EvalSet(ev["split"], ev["per_task"], training_image_size(from_dict(RunConfig, first["run"])),
                      ev.get("seed", 0))
    tiles, captions = [], []
    for index in pick_examples(preds[variants[0].name], per_task):
        sample = dataset[index]
        image = draw_prompts(sample.image, sample.prompts) if sample.prompts else sample.image
        truth = preds[variants[0].name][index]
        tiles.append(overlay_masks(image, list(sample.masks)))
        captions.append(f"TRUTH [{truth['task']}] {truth['question']}")
        for v in variants:
            record = preds[v.name].get(index)
            masks = record_masks(record, "pred_masks") if record else []
            tiles.append(overlay_masks(image, masks))
            answer = _caption(record["text"] if record else "(not evaluated)", masks)
            captions.append(f"{v.name.upper()} (seed {seed}): {answer}")
    sheet = image_grid(tiles, captions, ncols=1 + len(variants), tile_size=176, wrap=30)
    sheet.save(png)
    return True
