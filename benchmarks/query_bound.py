"""How far a kept ladder model's masks are from what its own mask features allow, and what a look at the target adds.

    python -m benchmarks.query_bound runs/x/models/relation-own-seed0                   # the relation rung
    python -m benchmarks.query_bound MODEL --rung colour_shape --fit 1024 --looks mask truth-box

A mask is the model's ``[SEG]`` query q dotted with its image's mask features F (mask_dim, h, w). On a rung's
single-target validation scenes (teacher-forced) this prints, for all targets, targets standing alone and targets
another object touches or partly hides:

- **own**: the model's masks as they are;
- **bound**: per scene, the best linear query of F fitted to that scene's own target (logistic regression on its
  cells). What any query could reach on these features: far above *own*, the query is what falls short; near it,
  the features are;
- **looks**: logit = a (q . F) + (W p) . F + c, with p the features averaged over a window and W (mask_dim x
  mask_dim), a, c fitted on ``--fit`` training-split scenes, scored on the validation scenes: what
  ``model.seg_query_look`` could learn on these frozen features. Windows: ``none`` (p = 0: q refitted alone),
  ``mask`` (the model's first mask), ``core`` (the same cells weighted by their logits), ``box`` (its box head's
  box), ``truth-box`` / ``truth-mask`` (the target's own: how much a perfect place would give).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from benchmarks.grounding import _encode, _hidden, answer_seg_positions, seg_boxes
from benchmarks.ladder import RUNGS, rung_samples
from benchmarks.relation_gallery import target_touched
from pixelsail.metrics import LisaMaskMetric
from pixelsail.model.mask_head import mask_logits
from pixelsail.model.seg_box import mask_boxes
from pixelsail.model.target_look import box_window, core_window, mask_window

LOOKS = ("none", "mask", "core", "box", "truth-box", "truth-mask")


@dataclass
class Row:
    """One single-target scene: the model's mask logits (h, w), the features (D, h, w), windows (h, w) by name,
    the target (H, W) bool and whether another object touches or hides it."""
    own: torch.Tensor
    features: torch.Tensor
    windows: dict
    target: torch.Tensor
    touched: bool
    cells: torch.Tensor = field(init=False)   # the target's share of each feature cell (h, w), what the fits predict

    def __post_init__(self):
        self.cells = F.adaptive_avg_pool2d(self.target[None, None].float(), self.own.shape)[0, 0]


@torch.no_grad()
def collect(model, samples: list, batch_size: int = 32) -> list[Row]:
    model.eval()
    rows = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        batch = _encode(model, chunk)
        hidden, features, text_start = _hidden(model, batch)
        seg, seg_b, seg_t = answer_seg_positions(model, batch)
        if seg.sum(1).ne(1).any():
            raise SystemExit("a sample with other than one [SEG]: query_bound reads single-target rungs")
        feats = torch.stack([features[int(b)] for b in seg_b]).float()                  # (M, D, h, w)
        queries = model.seg_queries(hidden, batch["input_ids"], text_start, seg_b, seg_t, features=feats).float()
        own = mask_logits(queries, feats)                                               # (M, h, w)
        boxes = seg_boxes(model, hidden, seg_b, seg_t)
        for j, s in enumerate(chunk):
            target = torch.from_numpy(s.masks[0])
            size = own.shape[-2:]
            windows = {"none": torch.zeros(size), "mask": mask_window(own[j:j + 1])[0],
                       "core": core_window(own[j:j + 1])[0],
                       "truth-box": box_window(mask_boxes(target[None])[0], size)[0]}
            if boxes is not None:
                windows["box"] = box_window(boxes[j:j + 1], size)[0]
            scene = s.meta["scene"]
            obj = next(o for o in scene.visible_objects if o.index == s.meta["target_index"][0])
            rows.append(Row(own[j], feats[j], windows, target, target_touched(obj, scene)))
            rows[-1].windows["truth-mask"] = rows[-1].cells / rows[-1].cells.sum().clamp(min=1e-6)
    model.train()
    return rows


def score(rows: list[Row], logits: list[torch.Tensor]) -> tuple[float, float, float]:
    """cIoU in percent of (h, w) logits against the rows' targets: all, targets alone, targets touched."""
    metrics = {None: LisaMaskMetric(), False: LisaMaskMetric(), True: LisaMaskMetric()}
    for r, logit in zip(rows, logits):
        pred = F.interpolate(logit[None, None].float(), size=r.target.shape, mode="bilinear",
                             align_corners=False)[0, 0] > 0
        for key in (None, r.touched):
            metrics[key].update([pred.numpy()], [r.target.numpy()], pred.shape)
    return tuple(metrics[k].compute()["cIoU (LISA)"] for k in (None, False, True))


def _fit(params: list[torch.Tensor], loss_of, steps: int, lbfgs: bool) -> None:
    if lbfgs:
        opt = torch.optim.LBFGS(params, max_iter=steps)

        def closure():
            opt.zero_grad()
            loss = loss_of(None)
            loss.backward()
            return loss

        opt.step(closure)
        return
    opt = torch.optim.Adam(params, lr=3e-3)
    for step in range(steps):
        opt.zero_grad()
        loss_of(step).backward()
        opt.step()


def best_query(row: Row, steps: int = 100) -> torch.Tensor:
    """The logits (h, w) of the best linear query of the row's own features for its own target."""
    x = row.features.flatten(1).T                                                       # (h*w, D)
    y = row.cells.flatten()
    lin = torch.nn.Linear(x.shape[1], 1)
    _fit(list(lin.parameters()), lambda _: F.binary_cross_entropy_with_logits(lin(x)[:, 0], y), steps, True)
    with torch.no_grad():
        return lin(x)[:, 0].view(row.own.shape)


def fit_look(train: list[Row], window: str, steps: int = 1200, batch: int = 16) -> callable:
    """Fit a, W, c of ``a (q . F) + (W p) . F + c`` on ``train`` (Adam); returns row -> logits (h, w)."""
    d = train[0].features.shape[0]
    w = torch.zeros(d, d, requires_grad=True)
    ac = torch.tensor([1.0, 0.0], requires_grad=True)

    def logits(r: Row) -> torch.Tensor:
        pooled = torch.einsum("hw,dhw->d", r.windows[window], r.features)
        return ac[0] * r.own + torch.einsum("d,dhw->hw", w @ pooled, r.features) + ac[1]

    def loss_of(step: int) -> torch.Tensor:
        first = (step * batch) % len(train)
        part = train[first:first + batch]
        return sum(F.binary_cross_entropy_with_logits(logits(r), r.cells) for r in part) / len(part)

    _fit([w, ac], loss_of, steps, False)
    return lambda r: logits(r).detach()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="a model directory saved by benchmarks.grounding --save-model")
    ap.add_argument("--rung", default="relation", help="a single-target mask rung of benchmarks.ladder")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--samples", type=int, default=256, help="validation scenes (the ladder's own, in its order)")
    ap.add_argument("--fit", type=int, default=1024, help="training-split scenes the looks are fitted on")
    ap.add_argument("--steps", type=int, default=1200, help="Adam steps of 16 scenes per look")
    ap.add_argument("--looks", nargs="*", default=list(LOOKS), choices=LOOKS)
    args = ap.parse_args(argv)
    if args.rung not in RUNGS or RUNGS[args.rung].metric != "cIoU":
        raise SystemExit(f"--rung {args.rung!r} is not a mask rung of the ladder ({', '.join(RUNGS)})")
    from pixelsail.model import PixelSail

    torch.manual_seed(0)
    model = PixelSail.from_pretrained(args.model)
    val = collect(model, rung_samples(RUNGS[args.rung], "val", args.samples, args.image_size, keep_scene=True))
    touched = sum(r.touched for r in val)
    print(f"{len(val)} {args.rung} validation scenes ({len(val) - touched} targets alone, {touched} touched or "
          f"partly hidden); cIoU all / alone / touched")
    show = lambda name, v: print(f"  {name}: " + " / ".join(f"{x:.1f}" for x in v))   # noqa: E731
    show("own masks", score(val, [r.own for r in val]))
    show("bound (best linear query per scene)", score(val, [best_query(r) for r in val]))
    looks = [w for w in args.looks if w != "box" or "box" in val[0].windows]
    if looks and args.fit:
        train = collect(model, rung_samples(RUNGS[args.rung], "train", args.fit, args.image_size, start=500_000,
                                            keep_scene=True))
        for window in looks:
            look = fit_look(train, window, args.steps)
            show(f"look at {window} (fitted on {len(train)})", score(val, [look(r) for r in val]))


if __name__ == "__main__":
    main()
