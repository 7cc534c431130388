"""Where the ablation's finished runs are found: each run's ``results.json`` in its directory, and records of them
beside the report.

A run directory (``runs/ablation/<variant>/seed-<s>/``) holds the model, checkpoints and predictions: far too much to
commit, and ``runs/`` is not kept between machines. Each finished run's ``results.json`` (metrics, budget and its
training curve, a few kilobytes) is also copied to ``<docs>/ablation/<variant>-seed-<s>.json``. The report is written
from those records, so seeds trained on different days, or on different machines, add up to one table, and a
(variant, seed) with a record is not trained again.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Iterable

from pixelsail.config import RunConfig, from_dict, to_dict

RECORDS_DIR = "ablation"
RESULTS_FILE = "results.json"   # in a run's directory; written last, so its presence marks the run finished
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


def run_dir(out_dir: str | Path, variant: str, seed: int) -> Path:
    return Path(out_dir) / variant / f"seed-{seed}"


def load_result(out_dir: str | Path, variant: str, seed: int) -> dict | None:
    """A finished run's results.json (its training curve filled in from metrics.jsonl if it has none)."""
    path = run_dir(out_dir, variant, seed) / RESULTS_FILE
    return with_curve(json.loads(path.read_text()), path.parent) if path.is_file() else None


def finished_result(out_dir: str | Path, records_dir: str | Path | None, variant: str, seed: int) -> dict | None:
    """The run's results: from its directory (and then kept as a record too) or else from its record."""
    result = load_result(out_dir, variant, seed)
    if result is not None:
        if records_dir is not None:
            keep_record(result, records_dir)
        return result
    return None if records_dir is None else load_record(records_dir, variant, seed)


def recipe_differences(result: dict, expected: RunConfig) -> list[str]:
    """The settings (dotted keys) in which a finished run's config differs from ``expected``, the run the current
    recipe would train for its variant and seed (its output directory aside). Fields added to the configs since
    the run finished compare at their defaults."""
    def flat(d: dict, prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
        return out

    done = flat(to_dict(from_dict(RunConfig, copy.deepcopy(result["run"]))))
    want = flat(to_dict(expected))
    # filled in when the model is built: the tokenizer's size and special-token ids; and option_decoding and
    # no_target_check, which the ablation always leaves off (its answers are generated once, freely, as in the paper)
    ignored = ("train.output_dir", "model.token_ids", "model.vocab_size", "model.option_decoding",
               "model.no_target_check")
    return sorted(k for k in done.keys() | want.keys()
                  if not k.startswith(ignored) and done.get(k, "<absent>") != want.get(k, "<absent>"))
