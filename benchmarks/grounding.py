"""The grounding ladder: how many samples the model needs before masks follow the expression and answers the prompt.

    python -m benchmarks.grounding --quick                                  # the colour rung, ~2 min (the suite's check)
                                                                            # (configs/shapes-quick.yaml's switches)
    python -m benchmarks.grounding --rungs colour shape --samples 9600      # chosen rungs, the model as configured
    python -m benchmarks.grounding --rungs colour --oracle                  # + the same rung with an oracle query
    python -m benchmarks.grounding --set model.seg_query_pool=true --label pool --out runs/ladder
    python -m benchmarks.grounding --rungs shape --oracle --distill         # + distillation from the shapes expert
    python -m benchmarks.grounding report runs/ladder                       # table + curves of every run kept there

Each run trains a fresh model (the recipe's architecture, ``--set`` overrides applied) on one rung of
:mod:`benchmarks.ladder` with its own losses and optimiser (AdamW at the recipe's rates, the decoder transformer's
``train.backbone_lr`` included unless ``--one-rate``; warm-up + cosine over the run) and scores
held-out val samples every ``--eval-every`` samples: cIoU of the teacher-forced ``[SEG]`` masks, or exact match of
the teacher-forced answer. The oracle run replaces the ``[SEG]`` query by a learned embedding of the target's
attributes (what a perfect language side would hand the mask head) and trains the mask loss only (plus the
distillation loss with ``--distill``: the shipped shapes expert's maps, the paper's improvement 3). Results are
appended to ``<out>/runs.jsonl``; ``report`` turns them into ``ladder.md`` and ``ladder.png``: samples needed to
reach 50 % and 80 % per rung and variant, and the curves.
"""
from __future__ import annotations

import argparse
import itertools
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks.ladder import (
    DESTINATIONS, LIST_OUTCOMES, RUNGS, AttributeOracle, Rung, chance_level, iter_rung_samples, list_outcomes,
    list_shares, rung_samples,
)
from benchmarks.oracle_query import dense_features, optimizer_step
from pixelsail.checkpoints import publish
from pixelsail.config import apply_overrides, load_yaml
from pixelsail.metrics import LisaMaskMetric
from pixelsail.model import build_model
from pixelsail.model.mask_head import MASK_THRESHOLD, mask_logits, mask_losses, mask_probabilities
from pixelsail.processing import IGNORE_INDEX
from pixelsail.train import build_optimizer, lr_factor

REPO = Path(__file__).resolve().parent.parent
LEVELS = (50.0, 80.0)


def _encode(model, samples: list) -> dict:
    return model.processor.collate([model.processor(s) for s in samples])


def _hidden(model, batch: dict):
    features, hidden, layout = dense_features(model, batch)
    return hidden, features, layout.vision_lens


def _next_tokens(model, batch: dict, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced greedy predictions (B, L-1) and the labels they are scored against (-100: not scored)."""
    return model.backbone.logits(hidden[:, :-1]).argmax(-1), batch["labels"][:, 1:]


def answer_seg_positions(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The teacher-forced answers' [SEG] tokens: a (B, L) bool mask and its (sample, position) index pairs."""
    seg = (batch["input_ids"] == model.processor.ids["seg"]) & (batch["labels"] != IGNORE_INDEX)
    seg_b, seg_t = seg.nonzero(as_tuple=True)
    return seg, seg_b, seg_t


def seg_boxes(model, hidden: torch.Tensor, seg_b: torch.Tensor, seg_t: torch.Tensor) -> torch.Tensor | None:
    """The box head's (M, 4) boxes (cx, cy, w, h as shares of the image) at those [SEG]s; None without a box head."""
    if getattr(model, "seg_box", None) is None:
        return None
    return model.seg_box(hidden[seg_b, seg_t])


def _queries(model, oracle: AttributeOracle | None, batch: dict, samples: list, hidden, text_start,
             features) -> list:
    """Per sample, its [SEG] queries (k_i, mask_dim): the model's own, or the oracle's (``features``: each sample's
    mask features (mask_dim, h, w), which a query with ``seg_query_image_read`` reads)."""
    if oracle is not None:
        return [oracle(torch.tensor(s.meta["oracle"], dtype=torch.long).reshape(-1, 3)) for s in samples]
    seg, seg_b, seg_t = answer_seg_positions(model, batch)
    reads = model.image_readout is not None or model.target_look is not None
    seen = torch.stack([features[int(b)] for b in seg_b]) if reads and len(seg_b) else None
    queries = model.seg_queries(hidden, batch["input_ids"], text_start, seg_b, seg_t, features=seen)
    return list(queries.split(seg.sum(1).tolist()))


def _masks(model, oracle, batch: dict, chunk: list, hidden, text_start, features) -> list[np.ndarray]:
    """Per sample of ``chunk``, its [SEG]s' masks (k, H, W) bool at the image's size."""
    out = []
    for i, (s, q) in enumerate(zip(chunk, _queries(model, oracle, batch, chunk, hidden, text_start, features))):
        h, w = s.image.shape[:2]
        pred = np.zeros((0, h, w), dtype=bool)
        if q.shape[0]:
            probs = mask_probabilities(mask_logits(q, features[i][None].expand(q.shape[0], -1, -1, -1)), (h, w))
            pred = (probs > MASK_THRESHOLD).numpy()
        out.append(pred)
    return out


@torch.no_grad()
def teacher_forced_masks(model, samples: list, batch_size: int = 32, with_boxes: bool = False):
    """(sample, its [SEG]s' masks (k, H, W) bool) for each of ``samples``, the answers teacher-forced; with
    ``with_boxes`` also the box head's (k, 4) boxes (cx, cy, w, h as shares of the image), None without a box head."""
    model.eval()
    try:
        for start in range(0, len(samples), batch_size):
            chunk = samples[start:start + batch_size]
            batch = _encode(model, chunk)
            hidden, features, text_start = _hidden(model, batch)
            masks = _masks(model, None, batch, chunk, hidden, text_start, features)
            if not with_boxes:
                yield from zip(chunk, masks)
                continue
            seg, seg_b, seg_t = answer_seg_positions(model, batch)
            boxes = seg_boxes(model, hidden, seg_b, seg_t)
            boxes = [None] * len(chunk) if boxes is None else list(boxes.split(seg.sum(1).tolist()))
            yield from zip(chunk, masks, boxes)
    finally:
        model.train()


@torch.no_grad()
def evaluate(model, oracle: AttributeOracle | None, rung: Rung, samples: list, batch_size: int = 32,
             destinations: np.ndarray | None = None, lists: np.ndarray | None = None) -> float:
    """The rung's metric in percent on ``samples`` (teacher forcing). ``destinations`` (len(DESTINATIONS),), when
    given, gains the predicted pixels on each kind of place of the single-target samples (:func:`destination_map`);
    ``lists`` (6,) the :func:`list_outcomes` counts of the samples with two targets or more."""
    model.eval()
    metric, correct = LisaMaskMetric(), 0
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        batch = _encode(model, chunk)
        hidden, features, text_start = _hidden(model, batch)
        if rung.metric == "accuracy":
            pred, labels = _next_tokens(model, batch, hidden)
            correct += int(((pred == labels) | (labels == IGNORE_INDEX)).all(dim=1).sum())
            continue
        for s, pred in zip(chunk, _masks(model, oracle, batch, chunk, hidden, text_start, features)):
            h, w = s.image.shape[:2]
            if rung.per_mask:  # each [SEG] against its own object
                for k, target in enumerate(s.masks):
                    metric.update([pred[k]], [target], (h, w))
                continue
            if lists is not None and len(s.masks) >= 2 and len(pred) == len(s.masks):
                lists += list_outcomes(pred, s.masks)
            target = np.any(np.stack(s.masks), axis=0) if s.masks else np.zeros((h, w), dtype=bool)
            union = pred.any(0) if len(pred) else np.zeros((h, w), dtype=bool)
            metric.update([union], [target], (h, w))
            if destinations is not None and "destinations" in s.meta:
                destinations += np.bincount(s.meta["destinations"][union], minlength=len(DESTINATIONS))
    model.train()
    if rung.metric == "accuracy":
        return 100.0 * correct / len(samples)
    return float(metric.compute()["cIoU (LISA)"])


def _teacher_forced(model, samples: list, batch_size: int):
    """Per chunk of ``samples``: (batch, teacher-forced greedy predictions, labels), the model in eval mode."""
    model.eval()
    try:
        for start in range(0, len(samples), batch_size):
            batch = _encode(model, samples[start:start + batch_size])
            with torch.no_grad():
                yield (batch, *_next_tokens(model, batch, _hidden(model, batch)[0]))
    finally:
        model.train()


def position_accuracy(model, samples: list, batch_size: int = 32, positions: int = 8) -> list[float]:
    """Teacher-forced accuracy (percent) of each of the answer's first ``positions`` tokens: where an answer rung
    fails (e.g. "<vp_k>: red." - the copied tag, or the colour)."""
    hits, counts = np.zeros(positions), np.zeros(positions)
    for _, pred, labels in _teacher_forced(model, samples, batch_size):
        for b in range(labels.shape[0]):
            at = (labels[b] != IGNORE_INDEX).nonzero().flatten()[:positions]
            hits[:len(at)] += (pred[b, at] == labels[b, at]).numpy()
            counts[:len(at)] += 1
    return [round(float(100.0 * h / c), 1) for h, c in zip(hits, counts) if c]


def letter_accuracy(model, samples: list, batch_size: int = 32) -> float:
    """Teacher-forced accuracy (percent) of the answer tokens right after a "(": a multiple choice's letter, given
    the right words before it (the look-up of the option's word among the question's options)."""
    paren = model.processor.encode(" (")[-1]   # "red (B)": the bracket (space-led where the tokenizer has one)
    hits = count = 0
    for batch, pred, labels in _teacher_forced(model, samples, batch_size):
        at = (batch["input_ids"][:, :-1] == paren) & (labels != IGNORE_INDEX)
        hits += int((pred == labels)[at].sum())
        count += int(at.sum())
    return 100.0 * hits / max(count, 1)


def option_accuracy(model, samples: list, batch_size: int = 32) -> float:
    """Teacher-forced accuracy (percent) of a multiple choice's option: every answer token before the letter's
    bracket right ("It is left" of "It is left (B)."), what option decoding answers with (the letter follows)."""
    paren = model.processor.encode(" (")[-1]
    hits = 0
    for batch, pred, labels in _teacher_forced(model, samples, batch_size):
        inputs = batch["input_ids"][:, 1:]          # the token each prediction is scored against, as input
        for b in range(labels.shape[0]):
            answer = (labels[b] != IGNORE_INDEX).nonzero().flatten()
            brackets = answer[inputs[b, answer] == paren]
            upto = answer[answer < brackets[0]] if brackets.numel() else answer
            hits += bool((pred[b, upto] == labels[b, upto]).all())
    return 100.0 * hits / max(len(samples), 1)


def teacher_maps(teacher, samples: list) -> list[dict[str, torch.Tensor]] | None:
    """Per sample the teacher's feature maps {name: (C, h, w)}, or None without a teacher."""
    if teacher is None:
        return None
    return [{k: torch.from_numpy(v) for k, v in out.items()} for out in teacher.encode_batch([s.image for s in samples])]


def with_distillation(run, batch_size: int | None = None):
    """Switch ``run.model.distill`` on with the shipped shapes expert's maps (as the distillation recipes do) and
    return that expert, loaded as the teacher."""
    from pixelsail.ablation import TEACHER, distill_teachers
    from pixelsail.config import DistillConfig
    from pixelsail.experts import load_teacher

    run.model.distill = DistillConfig(enabled=True, teachers=distill_teachers(), weight=run.model.distill.weight)
    return load_teacher(TEACHER, batch_size=batch_size)


def oracle_loss(model, oracle: AttributeOracle, batch: dict, samples: list,
                teacher_features: list[dict] | None = None) -> torch.Tensor:
    hidden, features, text_start = _hidden(model, batch)
    cfg = model.config
    num = sum(len(s.masks) for s in samples)
    total = hidden.sum() * 0.0
    for i, q in enumerate(_queries(model, oracle, batch, samples, hidden, text_start, features)):
        if q.shape[0]:
            logits = mask_logits(q, features[i][None].expand(q.shape[0], -1, -1, -1))
            bce, dice = mask_losses(logits, batch["masks"][i], num_points=cfg.mask_num_points,
                                    oversample=cfg.mask_oversample_ratio, importance=cfg.mask_importance_ratio,
                                    num_masks=max(num, 1))
            total = total + cfg.mask_bce_weight * bce + cfg.mask_dice_weight * dice
    if model.distill is not None and teacher_features:
        distill = model.distill_losses(hidden, batch["images"], features, teacher_features)
        total = total + cfg.distill.weight * sum(distill.values())
    return total


def samples_to_reach(curve: list[tuple[int, float]], level: float) -> int | None:
    return next((n for n, v in curve if v >= level), None)


def ladder_optimizer(model, oracle: AttributeOracle | None, train_config, lr: float,
                     backbone_lr: float | None) -> tuple[nn.Module, torch.optim.AdamW]:
    """(what is trained: the model and the oracle as one module, the optimiser). The decoder transformer learns at
    ``backbone_lr`` where one is given (as the recipe trains it), everything else, the oracle included, at ``lr``."""
    params = nn.Module()
    params.model, params.backbone = model, model.backbone      # .backbone names the rate group; shared, not doubled
    if oracle is not None:
        params.oracle = oracle
    return params, build_optimizer(params, lr, train_config.betas, train_config.weight_decay, backbone_lr=backbone_lr)


def save_latest(model, directory: str, rung: Rung, label: str, seed: int) -> Path:
    """The model as it is now, under ``directory/<rung>-<label>-seed<seed>``, replacing the last one in one rename:
    a run stopped between evaluations leaves its model of the last evaluation, for a look at its masks
    (``benchmarks.list_gallery``, ``benchmarks.query_bound``)."""
    where = Path(directory) / f"{rung.name}-{label}-seed{seed}"
    partial = where.with_name(f".partial-{where.name}")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    publish(partial, where)
    return where


def run_one(rung: Rung, args, seed: int, use_oracle: bool) -> dict:
    run = apply_overrides(load_yaml(args.config), list(args.set))
    run.model.mask_num_points = min(run.model.mask_num_points, args.image_size ** 2 // 4)
    teacher = with_distillation(run, batch_size=args.batch) if args.distill else None
    torch.manual_seed(seed)
    model = build_model(run.model).train()
    oracle = AttributeOracle(run.model.mask_dim, rung.oracle_keys) if use_oracle else None
    lr = args.lr or run.train.lr
    backbone_lr = None if args.one_rate else run.train.backbone_lr
    params, optimizer = ladder_optimizer(model, oracle, run.train, lr, backbone_lr)
    steps = args.samples // args.batch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps, run.train.warmup_ratio))
    train = iter_rung_samples(rung, "train", args.image_size, start=seed * 1_000_003 % 900_000)   # drawn per batch
    val = rung_samples(rung, "val", args.eval_samples, args.image_size)
    every = max(1, args.eval_every // args.batch)
    # an exponential moving average of the weights, scored beside the live ones (its own curve in the record)
    ema = None if args.ema is None else torch.optim.swa_utils.AveragedModel(
        params, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(args.ema), use_buffers=True)
    curve, ema_curve, option_curve, destination_curve, t0 = [], [], [], [], time.perf_counter()
    list_curve = []
    for step in range(1, steps + 1):
        chunk = list(itertools.islice(train, args.batch))
        batch = _encode(model, chunk)
        maps = teacher_maps(teacher, chunk)
        if oracle is not None:
            loss = oracle_loss(model, oracle, batch, chunk, maps)
        else:
            loss = model(batch["input_ids"], batch["labels"], batch["lengths"], batch["images"], batch["masks"],
                         teacher_features=maps).loss
        optimizer_step(loss, optimizer, scheduler, params, run.train.grad_clip)
        if ema is not None:
            ema.update_parameters(params)
        if step % every == 0 or step == steps:
            counts = np.zeros(len(DESTINATIONS), dtype=np.int64)
            outcomes = np.zeros(6, dtype=np.int64)
            value = evaluate(model, oracle, rung, val, destinations=counts, lists=outcomes)
            curve.append((step * args.batch, value))
            tail = ""  # what the evaluation line adds after the metric
            if outcomes[5]:
                list_curve.append((step * args.batch, list_shares(outcomes)))
                tail = ", " + ", ".join(f"{k} {v:.0f} %" for k, v in zip(LIST_OUTCOMES, list_curve[-1][1]))
            if counts.sum():
                shares = [round(float(100.0 * c / counts.sum()), 1) for c in counts]
                destination_curve.append((step * args.batch, shares))
                tail = ", predicted pixels on " + ", ".join(f"{k} {v:.0f} %" for k, v in zip(DESTINATIONS, shares))
            if ema is not None:
                averaged = ema.module                                   # a copy of params: .model, .oracle
                averaged_value = evaluate(averaged.model, getattr(averaged, "oracle", None), rung, val)
                ema_curve.append((step * args.batch, round(averaged_value, 1)))
                tail += f", weight average {ema_curve[-1][1]:.1f}"
            if rung.scores_letters and oracle is None:
                option_curve.append((step * args.batch, round(option_accuracy(model, val), 1)))
                tail += f", option {option_curve[-1][1]:.1f}"
            if args.save_model and oracle is None and step < steps:
                save_latest(model, args.save_model, rung, args.label, seed)
            print(f"  {rung.name} {'oracle' if oracle else args.label} seed {seed}: {step * args.batch} samples "
                  f"({time.perf_counter() - t0:.0f} s) loss {float(loss.detach()):.3f} {rung.metric} {value:.1f}"
                  f"{tail}", flush=True)
    variant = args.label if not use_oracle else ("oracle" if args.label == "own" else f"oracle {args.label}")
    if args.save_model and oracle is None:
        print(f"  model saved to {save_latest(model, args.save_model, rung, args.label, seed)}", flush=True)
    extra = {"destination_curve": destination_curve} if destination_curve else {}
    if list_curve:
        extra["list_curve"] = list_curve
    if ema is not None:
        extra.update(ema=args.ema, ema_curve=ema_curve)
    if rung.metric == "accuracy":
        extra["position_accuracy"] = position_accuracy(model, val)
        print(f"  answer tokens, teacher-forced accuracy by position: {extra['position_accuracy']}", flush=True)
    if rung.scores_letters:
        extra["letter_accuracy"] = round(letter_accuracy(model, val), 1)
        extra["option_curve"] = option_curve
        print(f"  the option's letter after its word, teacher-forced: {extra['letter_accuracy']} %", flush=True)
    return {"rung": rung.name, "variant": variant, "seed": seed, **extra,
            "metric": rung.metric, "chance": round(chance_level(rung, val), 1),
            "overrides": list(args.set) + (["distill"] if args.distill else []), "batch": args.batch,
            "lr": lr, "backbone_lr": backbone_lr,
            "image_size": args.image_size, "curve": curve, "seconds": round(time.perf_counter() - t0, 1),
            **{f"reach_{int(lv)}": samples_to_reach(curve, lv) for lv in LEVELS}}


def report(out: Path) -> str:
    """ladder.md + ladder.png from every run in ``out/runs.jsonl`` (mean over seeds)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines() if line.strip()]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["rung"], r["variant"]), []).append(r)
    lines = ["| rung | variant | seeds | metric | expression-blind | final (mean) | samples to 50 % | samples to 80 % |",
             "|---|---|---|---|---|---|---|---|"]
    rungs = [r for r in RUNGS if any(k[0] == r for k in groups)]
    fig, axes = plt.subplots(1, len(rungs), figsize=(4 * len(rungs), 3.2), squeeze=False)
    for ax, rung in zip(axes[0], rungs):
        for (name, variant), rs in sorted(groups.items()):
            if name != rung:
                continue
            finals = [r["curve"][-1][1] for r in rs]
            reach = {lv: [r[f"reach_{lv}"] for r in rs] for lv in (50, 80)}
            fmt = {lv: " / ".join("—" if v is None else f"{v:,}" for v in reach[lv]) for lv in (50, 80)}
            lines.append(f"| {rung} | {variant} | {len(rs)} | {rs[0]['metric']} | {rs[0]['chance']:.1f} | "
                         f"{np.mean(finals):.1f} | "
                         f"{fmt[50]} | {fmt[80]} |")
            for r in rs:
                xs, ys = zip(*r["curve"])
                ax.plot(xs, ys, label=f"{variant} s{r['seed']}", alpha=0.8)
        ax.set_title(rung)
        ax.set_xlabel("samples")
        ax.set_ylim(0, 100)
        ax.axhline(80, color="grey", lw=0.5, ls="--")
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("cIoU % / accuracy %")
    fig.tight_layout()
    fig.savefig(out / "ladder.png", dpi=110)
    table = "\n".join(lines)
    (out / "ladder.md").write_text(table + "\n")
    return table


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("command", nargs="?", default="run", choices=("run", "report"))
    ap.add_argument("out_dir", nargs="?", default=None)
    ap.add_argument("--config", default=None,
                    help="recipe whose model section is trained (default: configs/shapes-tiny.yaml; with --quick "
                         "configs/shapes-quick.yaml, which has the grounding switches on)")
    ap.add_argument("--rungs", nargs="+", default=["colour"], choices=list(RUNGS))
    ap.add_argument("--set", nargs="*", default=[], help="config overrides, e.g. model.seg_query_pool=true")
    ap.add_argument("--label", default="own", help="the variant's name in the report")
    ap.add_argument("--oracle", action="store_true", help="also run each mask rung with an oracle query")
    ap.add_argument("--no-own", action="store_true", help="only the oracle runs")
    ap.add_argument("--distill", action="store_true",
                    help="distil the shipped shapes expert's maps into the model (improvement 3) while it learns the rung")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--samples", type=int, default=9600)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=None, help="the heads' rate (default: the recipe's train.lr)")
    ap.add_argument("--one-rate", action="store_true",
                    help="the decoder transformer at --lr too, ignoring the recipe's train.backbone_lr (the ladder's "
                         "runs before session 22)")
    ap.add_argument("--ema", type=float, default=None,
                    help="also score an exponential moving average of the weights with this decay per step (e.g. "
                         "0.995), printed and recorded beside the live weights' curve")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--eval-every", type=int, default=1600, help="samples between evaluations")
    ap.add_argument("--eval-samples", type=int, default=256)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="the colour rung, 4,800 samples, 128 val samples")
    ap.add_argument("--out", default="runs/ladder")
    ap.add_argument("--save-model", default=None, metavar="DIR",
                    help="keep each own-path run's model under DIR/<rung>-<label>-seed<seed>, replaced at every "
                         "evaluation (a stopped run leaves its last one) and at the end")
    args = ap.parse_args(argv)
    out = Path(args.out_dir or args.out)
    if args.command == "report":
        print(report(out))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.rungs, args.samples, args.eval_every, args.eval_samples = ["colour"], 4800, 1600, 128
    args.config = args.config or str(REPO / "configs" / ("shapes-quick.yaml" if args.quick else "shapes-tiny.yaml"))
    out.mkdir(parents=True, exist_ok=True)
    for name in args.rungs:
        rung = RUNGS[name]
        kinds = ([] if args.no_own else [False]) + ([True] if args.oracle and rung.oracle_keys else [])
        for use_oracle in kinds:
            for seed in args.seeds:
                result = run_one(rung, args, seed, use_oracle)
                with open(out / "runs.jsonl", "a") as f:
                    f.write(json.dumps(result) + "\n")
    print(report(out))


if __name__ == "__main__":
    main()
