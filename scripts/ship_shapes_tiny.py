"""Copy a finished shapes-tiny run into the package as the shipped default (maintainers only).

    python scripts/ship_shapes_tiny.py RUN_DIR --command "pixelsail train ..." --machine "2-core ..." --note "..."
    python scripts/ship_shapes_tiny.py STAGE2_RUN_DIR --config configs/shapes-tiny-relations.yaml \
        --init-record STAGE1_training.json --command ... --machine ...      # a second stage on top of the first

Writes ``src/pixelsail/assets/shapes-tiny/``: the run's model with its weights stored in fp16 (half the size; they
load back into fp32), its tokenizer and config, the resolved ``run.yaml``, and ``training.json`` (command, seed,
steps, samples, wall time, final losses over the last log steps, peak memory, machine) read from the run's own
``metrics.jsonl``, so the README's claims about the shipped model can be checked against the file.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import yaml
from safetensors.torch import load_file, save_file

from pixelsail.run_log import read_metrics

ASSET = Path(__file__).resolve().parent.parent / "src" / "pixelsail" / "assets" / "shapes-tiny"


def final_losses(records: list[dict], last: int) -> dict[str, float]:
    """Mean of the total loss and each of its parts ("loss/...") over the last ``last`` logged steps."""
    tail = [r for r in records if "loss" in r][-last:]
    keys = [k for k in tail[-1] if k == "loss" or k.startswith("loss/")]
    return {k: sum(r[k] for r in tail) / len(tail) for k in keys if all(k in r for r in tail)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path, help="a finished run directory (with model/, run.yaml, metrics.jsonl)")
    ap.add_argument("--command", required=True, help="the exact command that trained it")
    ap.add_argument("--machine", required=True, help="what it was trained on, in words")
    ap.add_argument("--note", default="", help="anything a reader of training.json should know")
    ap.add_argument("--wall-s", type=float, default=None, help="wall time if the run's log lacks it (resumed runs)")
    ap.add_argument("--config", default="configs/shapes-tiny.yaml", help="the recipe file the run was made with")
    ap.add_argument("--init-record", type=Path, default=None,
                    help="a later stage: the training.json of the model the run started from (train.init_from); "
                         "kept whole in the new record as 'init_from' (read before the asset is overwritten)")
    args = ap.parse_args(argv)
    init_record = json.loads(args.init_record.read_text()) if args.init_record else None
    model_dir = args.run / "model"
    if not (model_dir / "model.safetensors").is_file():
        raise SystemExit(f"error: {model_dir} has no model.safetensors; is the run finished?")
    records = read_metrics(args.run / "metrics.jsonl")
    run = yaml.safe_load((args.run / "run.yaml").read_text())
    last = records[-1]
    ASSET.mkdir(parents=True, exist_ok=True)
    weights = {k: v.half() if v.is_floating_point() else v for k, v in load_file(model_dir / "model.safetensors").items()}
    save_file(weights, ASSET / "model.safetensors", metadata={"format": "pt"})
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(model_dir / name, ASSET / name)
    shutil.copy2(args.run / "run.yaml", ASSET / "run.yaml")
    steps = int(run["train"]["max_steps"])
    summary = {
        "command": args.command,
        "config": f"{args.config} (copied beside this file as run.yaml)",
        "seed": run["train"]["seed"],
        "steps": steps,
        "samples_seen": steps * int(run["train"]["batch_size"]) * int(run["train"].get("grad_accum", 1)),
        "wall_s": round(args.wall_s if args.wall_s is not None else float(last.get("time_s", 0.0)), 1),
        "samples_per_s_last": last.get("samples_per_s"),
        "peak_rss_mb": max((r.get("peak_rss_mb", 0.0) for r in records), default=None),
        "final_losses": final_losses(records, 10),
        "machine": args.machine,
        "weights": "fp16 safetensors (trained with fp32 weights; loaded back into fp32)",
        "note": args.note,
    }
    if init_record is not None:
        summary["init_from"] = init_record
    (ASSET / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"shipped {args.run} -> {ASSET}: step {steps}, wall {summary['wall_s']} s")


if __name__ == "__main__":
    main()
