"""What the ablation keeps of each finished run beyond its own directory.

A run directory (``runs/ablation/<variant>/seed-<s>/``) holds the model, checkpoints and predictions: far too much to
commit, and ``runs/`` is not kept between machines. Each finished run's ``results.json`` (metrics, budget and its
training curve, a few kilobytes) is also copied to ``<docs>/ablation/<variant>-seed-<s>.json``. The report is written
from those records, so seeds trained on different days, or on different machines, add up to one table, and a
(variant, seed) with a record is not trained again.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

RECORDS_DIR = "ablation"
CURVE_KEYS = ("loss", "loss/lm", "loss/mask_bce", "loss/mask_dice", "loss/distill_pixel", "loss/distill_image")


def training_curve(metrics_jsonl: str | Path) -> dict[str, list[float]]:
    """``{"step": [...], "loss/...": [...]}`` from a run's ``metrics.jsonl`` (every logged step once, in order; a
    loss a record lacks is NaN so the lists stay aligned). Empty when the file does not exist."""
    path = Path(metrics_jsonl)
    if not path.is_file():
        return {}
    by_step = {}   # a run resumed after a stop may log a step twice: the later record is the one kept
    for r in (json.loads(line) for line in path.read_text().splitlines() if line.strip()):
        if "step" in r and "loss" in r:
            by_step[int(r["step"])] = r
    rows = [by_step[k] for k in sorted(by_step)]
    keys = [k for k in CURVE_KEYS if any(k in r for r in rows)]
    curve: dict[str, list[float]] = {"step": [int(r["step"]) for r in rows]}
    for k in keys:
        curve[k] = [round(float(r.get(k, float("nan"))), 5) for r in rows]
    return curve


def with_curve(result: dict, run_dir: str | Path) -> dict:
    """``result`` with ``train.curve`` filled from the run's ``metrics.jsonl`` when it has none (runs finished by
    an older version)."""
    if not result.get("train", {}).get("curve"):
        curve = training_curve(Path(run_dir) / "metrics.jsonl")
        if curve:
            result = {**result, "train": {**result["train"], "curve": curve}}
    return result


def record_path(docs_dir: str | Path, variant: str, seed: int) -> Path:
    return Path(docs_dir) / RECORDS_DIR / f"{variant}-seed-{seed}.json"


def keep_record(result: dict, docs_dir: str | Path) -> Path:
    """Write ``result`` to its record file (atomically); returns the path."""
    path = record_path(docs_dir, result["variant"], int(result["seed"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def load_record(docs_dir: str | Path, variant: str, seed: int) -> dict | None:
    path = record_path(docs_dir, variant, seed)
    return json.loads(path.read_text()) if path.is_file() else None


def recorded_seeds(docs_dir: str | Path, variants: Iterable[str]) -> dict[str, list[int]]:
    """``{variant: [seeds with a record]}``, seeds sorted."""
    out: dict[str, list[int]] = {}
    folder = Path(docs_dir) / RECORDS_DIR
    for v in variants:
        seeds = []
        for p in folder.glob(f"{v}-seed-*.json"):
            tail = p.stem[len(v) + len("-seed-"):]
            if tail.isdigit():
                seeds.append(int(tail))
        out[v] = sorted(seeds)
    return out
