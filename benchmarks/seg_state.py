"""Do the [SEG] tokens' final states still carry their context? A check for the collapse session 10 found.

    python -m benchmarks.seg_state src/pixelsail/assets/shapes-tiny runs/s7/long6k/model

Per model and shapes task (teacher-forced on test samples, the answer given):
- ``spread``: the mean distance of the [SEG] final states from their mean, relative to their mean norm. Near 0 the
  state is one constant vector whatever the expression or the place in the answer; the language-model head then
  predicts the same token after every [SEG] (in a grounded conversation: "," before more objects, "and" before the
  last, "." at the end; a collapsed state cannot tell them apart).
- ``next``: the share of [SEG] positions whose next token the model predicts right, and its most common predictions.
- For ``gcg``, the teacher-forced accuracy of the colour, shape and size words of the answer's phrases (does the
  description read the image?).
"""
from __future__ import annotations

import argparse
import collections

import torch

from benchmarks.grounding import _encode, _hidden
from pixelsail.data.shapes import COLOR_NAMES, SHAPES, SIZES, make_sample

TASKS = ("res", "gcg", "vt_res")


def word_kind(word: str) -> str:
    return "colour" if word in COLOR_NAMES else "shape" if word in SHAPES else "size" if word in SIZES else ""


@torch.no_grad()
def seg_state_report(model, task: str, count: int = 32, batch_size: int = 16) -> dict:
    """{"spread", "next_accuracy", "next_top", "words": {kind: accuracy}} over ``count`` test samples of ``task``."""
    model.eval()
    seg, tok = model.processor.ids["seg"], model.processor.tokenizer
    states, right, predicted = [], [], collections.Counter()
    words: dict[str, list[bool]] = collections.defaultdict(list)
    samples = [make_sample("test", i, task) for i in range(count)]
    for start in range(0, count, batch_size):
        chunk = samples[start:start + batch_size]
        batch = _encode(model, chunk)
        hidden, _, _ = _hidden(model, batch)                          # (B, L, C) final states
        ids, labels = batch["input_ids"], batch["labels"]
        guess = model.backbone.logits(hidden[:, :-1]).argmax(-1)     # (B, L-1): the token predicted at each position
        at = (ids[:, :-1] == seg) & (labels[:, 1:] >= 0)
        b, t = at.nonzero(as_tuple=True)
        states.append(hidden[b, t].float())
        right += (guess[b, t] == labels[b, t + 1]).tolist()
        predicted.update(tok.decode([int(i)]).strip() for i in guess[b, t])
        scored = labels[:, 1:] >= 0
        for bi, ti in scored.nonzero().tolist():
            kind = word_kind(tok.decode([int(labels[bi, ti + 1])]).strip())
            if kind:
                words[kind].append(bool(guess[bi, ti] == labels[bi, ti + 1]))
    s = torch.cat(states)
    norm = s.norm(dim=-1).mean()
    return {"n": len(s), "spread": float((s - s.mean(0)).norm(dim=-1).mean() / norm),
            "next_accuracy": sum(right) / max(len(right), 1), "next_top": predicted.most_common(3),
            "words": {k: sum(v) / len(v) for k, v in sorted(words.items())}}


def main(argv: list[str] | None = None) -> None:
    from pixelsail.model import PixelSail

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+", help="model directories")
    p.add_argument("--count", type=int, default=32, help="test samples per task")
    args = p.parse_args(argv)
    for path in args.models:
        model = PixelSail.from_pretrained(path)
        for task in TASKS:
            r = seg_state_report(model, task, args.count)
            words = " ".join(f"{k} {v:.2f}" for k, v in r["words"].items()) if task == "gcg" else ""
            print(f"{path}  {task:7s} [SEG]s {r['n']:4d}  spread {r['spread']:.3f}  next right "
                  f"{r['next_accuracy']:.2f}  predicted {r['next_top']}  {words}".rstrip())


if __name__ == "__main__":
    main()
