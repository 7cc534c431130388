"""Can the model's visual side tell shapes apart? Two measurements, no language involved.

    python -m benchmarks.vision_probe probe --model runs/shapes-tiny/model        # a trained model's mask features
    python -m benchmarks.vision_probe train --samples 9600                        # the architecture, dense labels
    python -m benchmarks.vision_probe train --set model.patch_stem=conv --label conv-stem
    python -m benchmarks.vision_probe train --architecture expert --label expert     # the control: a small CNN

``probe``: a linear read-out (logistic regression) of each visible object's colour, shape and size class and the
row and column of its 3x3 cell from a trained model's mask features (``--read tokens``: its vision tokens' final
states) averaged over the object's pixels, fitted on train scenes and scored on test scenes (beside the majority
class). A mask is a dot product of the ``[SEG]`` query with these features, so an attribute
that no linear read-out finds here cannot be what a query selects.

``train``: a fresh model of the recipe's architecture (``--set`` overrides applied) trained only through its visual
path (patch embedding, the decoder over the vision block, the upsampler, the mask-feature projection) with a 1x1
classification head on the mask features and a per-pixel objective: cross-entropy of the colour, shape and size
class of the object under each object pixel. ``--architecture expert`` trains the shapes expert's small conv net
the same way instead: the positive control; ``--architecture model-tokens`` reads the model's vision tokens before
the upsampler (is shape lost there, or never computed?); ``--objective distill`` trains the features with the
model's distillation loss to the shapes expert's maps alone, the head reading them detached (does distillation put
shape into them?). Every ``--eval-every`` samples it reports per-object accuracy (the majority class of the
object's pixels) on val scenes: how many samples the architecture needs to represent each attribute when every
pixel is labelled, which bounds what the sparse referring loss can teach it.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.grounding import teacher_maps, with_distillation
from benchmarks.oracle_query import dense_features, optimizer_step
from benchmarks.region_attributes import CELLS
from pixelsail.config import apply_overrides, load_yaml
from pixelsail.data.shapes import COLOR_NAMES, SHAPES, SIZES, generate_scene, make_sample
from pixelsail.train import build_optimizer, lr_factor

REPO = Path(__file__).resolve().parent.parent
GROUPS = (("colour", COLOR_NAMES), ("shape", SHAPES), ("size", SIZES))
# where an object is: the row and column of the 3x3 cell holding its visible centroid (probe only; the words a
# description uses, "in the top left")
PLACE_GROUPS = (("row", ("top", "middle", "bottom")), ("column", ("left", "middle", "right")))


def scenes_and_samples(split: str, count: int, start: int = 0, image_size: int = 128) -> list[tuple]:
    """(sample, scene) pairs: a referring sample gives the model its usual input; the scene gives the labels."""
    out = []
    for i in range(start, start + count):
        s = make_sample(split, i, "res", image_size=image_size)
        out.append((s, generate_scene(split, i, s.meta["seed"], image_size, s.meta["attempt"])))
    return out


def object_labels(scene) -> list[tuple[np.ndarray, tuple[int, int, int]]]:
    """(visible mask, (colour, shape, size) class) of each visible object."""
    return [(o.mask, (COLOR_NAMES.index(o.color), SHAPES.index(o.shape), SIZES.index(o.size)))
            for o in scene.visible_objects]


def object_places(scene) -> list[tuple[int, int]]:
    """(row, column) of the 3x3 cell of each visible object, in :func:`object_labels`' order."""
    return [CELLS[o.position] for o in scene.visible_objects]


def pixel_labels(scene) -> torch.Tensor:
    """(3, H, W) int64: colour, shape, size class of the visible object under each pixel; -1 on background."""
    h, w = scene.image.shape[:2]
    labels = torch.full((3, h, w), -1, dtype=torch.long)
    for mask, classes in object_labels(scene):
        m = torch.from_numpy(mask)
        for g, c in enumerate(classes):
            labels[g][m] = c
    return labels


def forward_pairs(model, pairs: list[tuple]) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """One forward of the pairs' samples: (the collated batch, mask features (B, C, h, w), final states (B, L, C))."""
    batch = model.processor.collate([model.processor(s) for s, _ in pairs])
    feats, hidden, _ = dense_features(model, batch)
    return batch, torch.stack([feats[i] for i in range(len(pairs))]), hidden


def features_of(model, pairs: list[tuple], read: str = "mask") -> torch.Tensor:
    """Mask features (B, C, h, w) of the pairs' images, or with ``read="tokens"`` the decoder's final states of
    the vision tokens on their patch grid (B, hidden, H/P, W/P)."""
    batch, feats, hidden = forward_pairs(model, pairs)
    if read == "mask":
        return feats
    return torch.stack([model._vision_grid(hidden[i], im.grid) for i, im in enumerate(batch["images"])])


def object_means(feature: torch.Tensor, scene) -> list[tuple[torch.Tensor, tuple[int, int, int]]]:
    """Mean feature over each visible object's pixels (the object mask pooled to the feature grid)."""
    c, h, w = feature.shape
    out = []
    for mask, classes in object_labels(scene):
        cover = F.adaptive_avg_pool2d(torch.from_numpy(mask).float()[None, None], (h, w))[0, 0]
        keep = cover > 0.5 if (cover > 0.5).any() else cover == cover.max()
        out.append((feature[:, keep].mean(1), classes))
    return out


# ---------------------------------------------------------------------------------------------------------------
# probe: a trained model


def linear_probe(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, classes: int,
                 l2: float = 1e-3) -> torch.Tensor:
    """Logistic regression (L-BFGS, standardised inputs); returns the test predictions."""
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    xa, xb = (x_train - mu) / sd, (x_test - mu) / sd
    w = torch.zeros(xa.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(xa @ w + b, y_train) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():   # callers may hold no_grad (probe() does, for the feature pass)
        opt.step(closure)
    return (xb @ w + b).argmax(1).detach()


@torch.no_grad()
def probe(model, train_scenes: int = 320, test_scenes: int = 160, image_size: int = 128,
          batch_size: int = 32, read: str = "mask") -> dict[str, dict]:
    model.eval()
    data = {}
    for split, count in (("train", train_scenes), ("test", test_scenes)):
        xs, ys = [], []
        pairs = scenes_and_samples(split, count, image_size=image_size)
        for lo in range(0, len(pairs), batch_size):
            chunk = pairs[lo:lo + batch_size]
            for feature, (_, scene) in zip(features_of(model, chunk, read), chunk):
                for (mean, classes), place in zip(object_means(feature.float(), scene), object_places(scene)):
                    xs.append(mean)
                    ys.append(classes + place)
        data[split] = (torch.stack(xs), torch.tensor(ys))
    (xa, ya), (xb, yb) = data["train"], data["test"]
    out = {}
    for g, (name, vocabulary) in enumerate(GROUPS + PLACE_GROUPS):
        pred = linear_probe(xa, ya[:, g], xb, len(vocabulary))
        out[name] = {"accuracy": 100.0 * float((pred == yb[:, g]).float().mean()),
                     "majority": 100.0 * float(np.bincount(yb[:, g].numpy()).max() / len(yb)),
                     "objects_train": len(ya), "objects_test": len(yb)}
    return out


# ---------------------------------------------------------------------------------------------------------------
# train: the architecture with dense labels


class AttributeHead(nn.Module):
    """1x1 classification of every mask-feature pixel into each group's classes."""

    def __init__(self, dim: int):
        super().__init__()
        self.heads = nn.ModuleList(nn.Conv2d(dim, len(v), 1) for _, v in GROUPS)

    def forward(self, feature: torch.Tensor) -> list[torch.Tensor]:   # (B, C, h, w) -> [(B, n_g, h, w)]
        return [head(feature) for head in self.heads]


def dense_loss(logits: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per group at image resolution over object pixels; ``labels`` (B, 3, H, W), -1 = background."""
    loss = logits[0].new_zeros(())
    for g, lg in enumerate(logits):
        up = F.interpolate(lg, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        loss = loss + F.cross_entropy(up, labels[:, g], ignore_index=-1)
    return loss


class ModelFeatures(nn.Module):
    """The recipe's model (``--set`` overrides applied): its mask features (stride 4), or with ``read="tokens"``
    the decoder's final states of the vision tokens (stride P, before the upsampler)."""

    def __init__(self, run, read: str = "mask"):
        super().__init__()
        from pixelsail.model import build_model

        self.model, self.read = build_model(run.model), read
        self.dim = run.model.mask_dim if read == "mask" else run.model.hidden_size

    def forward(self, pairs: list[tuple]) -> torch.Tensor:          # -> (B, C, H/stride, W/stride)
        return features_of(self.model, pairs, self.read)


class ExpertFeatures(nn.Module):
    """The shapes expert's small conv net, untrained: the positive control (an architecture known to learn shapes
    from these labels); its stride-4 "pixel" map."""

    def __init__(self, run=None):
        super().__init__()
        from pixelsail.experts.shapes_expert import ShapesExpert, ShapesExpertConfig

        config = ShapesExpertConfig.for_shapes_world()
        self.net, self.config, self.dim = ShapesExpert(config), config, config.pixel_channels

    def forward(self, pairs: list[tuple]) -> torch.Tensor:          # -> (B, pixel_channels, H/4, W/4)
        from pixelsail.experts import letterbox_batch

        pixels, _ = letterbox_batch([s.image for s, _ in pairs], long_side=self.config.image_size, pad_multiple=16,
                                    square=True, mean=self.config.image_mean, std=self.config.image_std)
        return self.net.features(pixels)["pixel"]


ARCHITECTURES = {"model": ModelFeatures, "model-tokens": lambda run: ModelFeatures(run, read="tokens"),
                 "expert": ExpertFeatures}


@torch.no_grad()
def object_accuracy(extract: nn.Module, head: AttributeHead, pairs: list[tuple], batch_size: int = 32
                    ) -> dict[str, float]:
    """Percent of visible objects whose pixels' majority class is right, per group."""
    extract.eval()
    hits, total = np.zeros(len(GROUPS)), 0
    for lo in range(0, len(pairs), batch_size):
        chunk = pairs[lo:lo + batch_size]
        for feature, (_, scene) in zip(extract(chunk), chunk):
            h, w = scene.image.shape[:2]
            preds = [F.interpolate(lg, size=(h, w), mode="bilinear", align_corners=False)[0].argmax(0)
                     for lg in head(feature[None].float())]
            for mask, classes in object_labels(scene):
                m = torch.from_numpy(mask)
                for g, c in enumerate(classes):
                    hits[g] += int(torch.bincount(preds[g][m]).argmax() == c)
                total += 1
    extract.train()
    return {name: 100.0 * hits[g] / max(total, 1) for g, (name, _) in enumerate(GROUPS)}


def distill_loss(extract: ModelFeatures, teacher, pairs: list[tuple]) -> tuple[torch.Tensor, torch.Tensor]:
    """(the model's distillation loss to the teacher's maps, its mask features (B, C, h, w))."""
    batch, feats, hidden = forward_pairs(extract.model, pairs)
    maps = teacher_maps(teacher, [s for s, _ in pairs])
    losses = extract.model.distill_losses(hidden, batch["images"], dict(enumerate(feats.unbind(0))), maps)
    return sum(losses.values()), feats


def train_run(args) -> dict:
    run = apply_overrides(load_yaml(args.config), list(args.set))
    torch.manual_seed(args.seed)
    teacher = None
    if args.objective == "distill":
        if args.architecture != "model":
            raise SystemExit("--objective distill needs --architecture model")
        teacher = with_distillation(run)
    extract = ARCHITECTURES[args.architecture](run).train()
    head = AttributeHead(extract.dim)
    params = nn.ModuleList([extract, head])
    optimizer = build_optimizer(params, args.lr, run.train.betas, run.train.weight_decay)
    steps = args.samples // args.batch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps, run.train.warmup_ratio))
    val = scenes_and_samples("val", args.eval_scenes)
    every = max(1, args.eval_every // args.batch)
    curve, t0 = [], time.perf_counter()
    for step in range(1, steps + 1):
        pairs = scenes_and_samples("train", args.batch, start=(step - 1) * args.batch + args.seed * 100_003)
        labels = torch.stack([pixel_labels(scene) for _, scene in pairs])        # (B, 3, H, W)
        if teacher is None:
            loss = dense_loss(head(extract(pairs)), labels)
        else:   # the features learn from the teacher only; the head reads them without shaping them
            distill, feats = distill_loss(extract, teacher, pairs)
            loss = distill + dense_loss(head(feats.detach()), labels)
        optimizer_step(loss, optimizer, scheduler, params, run.train.grad_clip)
        if step % every == 0 or step == steps:
            acc = object_accuracy(extract, head, val)
            curve.append((step * args.batch, acc))
            print(f"  {args.label} seed {args.seed}: {step * args.batch} samples ({time.perf_counter() - t0:.0f} s) "
                  f"loss {float(loss.detach()):.3f} " + " ".join(f"{k} {v:.1f}" for k, v in acc.items()), flush=True)
    return {"label": args.label, "architecture": args.architecture, "objective": args.objective, "seed": args.seed,
            "overrides": list(args.set),
            "batch": args.batch, "lr": args.lr, "curve": curve, "seconds": round(time.perf_counter() - t0, 1)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("probe", help="linear read-out of a trained model's mask features")
    pr.add_argument("--model", required=True)
    pr.add_argument("--train-scenes", type=int, default=320)
    pr.add_argument("--test-scenes", type=int, default=160)
    pr.add_argument("--image-size", type=int, default=128, help="the scene size the model was trained on")
    pr.add_argument("--read", choices=("mask", "tokens"), default="mask",
                    help="mask: the mask features (stride 4); tokens: the vision tokens' final decoder states")
    tr = sub.add_parser("train", help="the architecture trained through its visual path on per-pixel labels")
    tr.add_argument("--config", default=str(REPO / "configs" / "shapes-tiny.yaml"))
    tr.add_argument("--set", action="append", default=[], help="a config override, e.g. model.patch_stem=conv")
    tr.add_argument("--architecture", choices=sorted(ARCHITECTURES), default="model",
                    help="model: the recipe's model, read at its mask features; model-tokens: read at its vision "
                         "tokens' final states (before the upsampler); expert: the shapes expert's conv net (control)")
    tr.add_argument("--objective", choices=("labels", "distill"), default="labels",
                    help="labels: per-pixel cross-entropy trains the features; distill: only the distillation loss "
                         "to the shapes expert's maps trains them (the probe head reads them detached)")
    tr.add_argument("--label", default="as configured")
    tr.add_argument("--samples", type=int, default=9600)
    tr.add_argument("--batch", type=int, default=16)
    tr.add_argument("--lr", type=float, default=2e-3)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--eval-every", type=int, default=1600)
    tr.add_argument("--eval-scenes", type=int, default=96)
    tr.add_argument("--out", type=Path, help="append the run (curve and settings) to OUT/runs.jsonl")
    for q in (pr, tr):
        q.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.command == "probe":
        from pixelsail.model.pixelsail import PixelSail

        result = probe(PixelSail.from_pretrained(args.model), args.train_scenes, args.test_scenes, args.image_size,
                       read=args.read)
        for name, r in result.items():
            print(f"{name}: linear read-out {r['accuracy']:.1f} % of {r['objects_test']} test objects "
                  f"(majority class {r['majority']:.1f} %; fitted on {r['objects_train']})")
        return
    result = train_run(args)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        with open(args.out / "runs.jsonl", "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
