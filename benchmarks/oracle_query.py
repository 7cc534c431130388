"""The mask quality a step budget allows: shapes-tiny trained for referring segmentation with an oracle query.

    python -m benchmarks.oracle_query                    # 900 steps, about what 10 minutes buys on 2 idle CPU cores
    python -m benchmarks.oracle_query --steps 40 --eval-every 20 --eval-samples 32     # a smoke run
    python -m benchmarks.oracle_query --no-upsample      # the plain baseline's stride-P mask features
    python -m benchmarks.oracle_query --distill          # + distillation from the shipped shapes expert

The oracle replaces the query that the ``[SEG]`` hidden state would give with a learned embedding of the target's
colour + shape + size: the best a language side could hand the mask head. Everything else is the model's own path
(patch embedding, bidirectional vision block, upsampler, dot-product logits, point-sampled BCE + Dice with the
config's weights, AdamW with warm-up + cosine, the predictor's 0.5 threshold). What it answers: within a budget of
steps, how far can the visual side get, whatever the language side learns? Issue 4 asks for cIoU >= 75 % on
single-target expressions after a 10-minute CPU run.

The two switches measure two of the paper's improvements with the language side factored out (issue 8): learnable
upsampling against the baseline's per-pixel MLP on the stride-P token map, and vision-expert distillation (the
shapes expert's maps regressed from the upsampled features and the vision tokens, the config's distillation weight).

A target that shares colour, shape and size with another visible object cannot be singled out by this oracle (it
masks both); the table says how many validation targets are like that.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

from benchmarks.ladder import AttributeOracle, attribute_ids
from pixelsail.config import DistillConfig, load_yaml
from pixelsail.data.shapes import Scene, ShapesDataset, generate_scene, make_res, scene_and_rng
from pixelsail.metrics import LisaMaskMetric
from pixelsail.model import build_model
from pixelsail.model.attention import AttentionLayout
from pixelsail.model.mask_head import MASK_THRESHOLD, mask_logits, mask_losses, mask_probabilities
from pixelsail.train import build_optimizer, lr_factor

REPO = Path(__file__).resolve().parent.parent
TARGET_CIOU = 75.0


def target_attributes(scene: Scene, target_id: int) -> tuple[int, int, int]:
    return attribute_ids(next(o for o in scene.objects if o.index == target_id))


def ambiguous(scene: Scene, target_id: int) -> bool:
    """Another visible object has the target's colour, shape and size."""
    key = target_attributes(scene, target_id)
    return any(target_attributes(scene, o.index) == key for o in scene.visible_objects if o.index != target_id)


def training_sample(index: int, image_size: int):
    for attempt in range(50):
        scene, rng = scene_and_rng("train", index, 0, image_size, attempt)
        sample = make_res(scene, rng)
        if sample is not None:
            return sample, target_attributes(scene, sample.meta["target_ids"][0])
    raise RuntimeError(f"no referring sample for train scene {index}")


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scheduler, params: nn.Module,
                   grad_clip: float) -> None:
    """One step of the probes' training loops: backward, clip, AdamW, schedule."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()


def dense_features(model, batch) -> tuple[dict[int, torch.Tensor], torch.Tensor, AttentionLayout]:
    """Per-image mask features, the final hidden states (B, L, C) and the batch's attention layout."""
    embeds, positions, layout = model.embed_batch(batch["input_ids"], batch["images"])
    hidden = model.backbone(embeds, positions, layout)
    return model._mask_features_batch(hidden, batch["images"], list(range(len(batch["images"])))), hidden, layout


@torch.no_grad()
def evaluate(model, oracle: AttributeOracle, samples: list, scenes: list, batch_size: int = 16) -> dict[str, float]:
    model.eval()
    metrics = {"all": LisaMaskMetric(), "attribute": LisaMaskMetric(), "relation": LisaMaskMetric()}
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        batch = model.processor.collate([model.processor(s) for s in chunk])
        features, _, _ = dense_features(model, batch)
        for i, sample in enumerate(chunk):
            scene = scenes[start + i]
            attrs = torch.tensor([target_attributes(scene, sample.meta["target_ids"][0])])
            logits = mask_logits(oracle(attrs), features[i][None])                        # (1, h, w)
            h, w = sample.image.shape[:2]
            pred = (mask_probabilities(logits, (h, w))[0] > MASK_THRESHOLD).numpy()
            for key in ("all", sample.meta["expression_kind"]):
                metrics[key].update([pred], sample.masks, (h, w))
    model.train()
    return {k: m.compute()["cIoU (LISA)"] for k, m in metrics.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "shapes-tiny.yaml"))
    ap.add_argument("--steps", type=int, default=900)
    ap.add_argument("--eval-every", type=int, default=150)
    ap.add_argument("--eval-samples", type=int, default=200)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--seed", type=int, default=None, help="model initialisation seed (default: the recipe's)")
    ap.add_argument("--no-upsample", action="store_true", help="mask features from the stride-P map (the baseline)")
    ap.add_argument("--distill", action="store_true", help="add distillation from the shipped shapes expert")
    ap.add_argument("--out", default=None, help="also write the table here (Markdown)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    run = load_yaml(args.config)
    image_size = int(run.data.datasets[0].args.get("image_size", 128))
    if args.seed is not None:
        run.train.seed = args.seed
    teacher = None
    if args.no_upsample:
        run.model.upsample = False
    if args.distill:
        from pixelsail.ablation import TEACHER, distill_teachers
        from pixelsail.experts.cache import OnlineTeacherProvider

        run.model.distill = DistillConfig(enabled=True, teachers=distill_teachers(), weight=run.model.distill.weight)
        teacher = OnlineTeacherProvider(TEACHER)
    torch.manual_seed(run.train.seed)
    model = build_model(run.model)
    oracle = AttributeOracle(run.model.mask_dim)
    params = nn.ModuleList([model, oracle])
    optimizer = build_optimizer(params, run.train.lr, run.train.betas, run.train.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, args.steps, run.train.warmup_ratio))
    cfg = model.config

    val = ShapesDataset("val", tasks={"res": 1.0}, image_size=image_size, size=args.eval_samples, seed=0)
    val_samples = [val[i] for i in range(len(val))]
    val_scenes = [generate_scene("val", s.meta["index"], 0, image_size, s.meta["attempt"]) for s in val_samples]
    n_ambiguous = sum(ambiguous(sc, s.meta["target_ids"][0]) for sc, s in zip(val_scenes, val_samples))

    rows = []
    bs, t0, index = run.train.batch_size, time.perf_counter(), 0
    for step in range(1, args.steps + 1):
        items = [training_sample(index + i, image_size) for i in range(bs)]
        index += bs
        if teacher is not None:
            items = [(teacher(s), a) for s, a in items]
        batch = model.processor.collate([model.processor(s) for s, _ in items])
        features, hidden, _ = dense_features(model, batch)
        queries = oracle(torch.tensor([a for _, a in items]))
        logits = mask_logits(queries, torch.stack([features[i] for i in range(bs)]))
        targets = torch.stack([m[0] for m in batch["masks"]]).float()
        bce, dice = mask_losses(logits, targets, num_points=cfg.mask_num_points, oversample=cfg.mask_oversample_ratio,
                                importance=cfg.mask_importance_ratio, num_masks=bs)
        loss = cfg.mask_bce_weight * bce + cfg.mask_dice_weight * dice
        if teacher is not None:
            distill = model.distill_losses(hidden, batch["images"], features, batch["teacher_features"])
            loss = loss + cfg.distill.weight * sum(distill.values())
        optimizer_step(loss, optimizer, scheduler, params, run.train.grad_clip)
        if step % args.eval_every == 0 or step == args.steps:
            ciou = evaluate(model, oracle, val_samples, val_scenes)
            rows.append((step, float(dice.detach()), ciou))
            print(f"step {step} ({time.perf_counter() - t0:.0f} s): Dice loss {float(dice.detach()):.3f}, val cIoU {ciou['all']:.1f} % "
                  f"(attribute {ciou['attribute']:.1f}, relation {ciou['relation']:.1f})", flush=True)

    variant = ("stride-P features (no upsampling)" if args.no_upsample else "learnable upsampling") + (
        f", distillation from the shapes expert (weight {cfg.distill.weight})" if args.distill else "")
    lines = [f"Oracle-query ceiling: {args.config}, {variant}, seed {run.train.seed}, batch {bs}, lr {run.train.lr}, "
             f"{args.steps} steps, "
             f"{len(val_samples)} val single-target expressions ({n_ambiguous} whose colour+shape+size another "
             f"visible object shares)", "",
             "| step | samples | train Dice loss | val cIoU % | attribute | relation | cIoU / 75 % |",
             "|---|---|---|---|---|---|---|"]
    for step, dice, ciou in rows:
        lines.append(f"| {step} | {step * bs} | {dice:.3f} | {ciou['all']:.1f} | {ciou['attribute']:.1f} | "
                     f"{ciou['relation']:.1f} | {ciou['all'] / TARGET_CIOU:.2f} |")
    table = "\n".join(lines)
    print("\n" + table)
    if args.out:
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
