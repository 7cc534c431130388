"""The multiple choice's letter look-up in a plain decoder: is it Pixel-SAIL or the training that does not learn it?

    python -m benchmarks.text_lookup --lr 2e-3 5e-4 --seeds 0 1            # the shipped rate against a lower one
    python -m benchmarks.text_lookup --layout adjacent                     # letter right after its word
    python -m benchmarks.text_lookup --token-conv 4                        # a short causal conv before every layer

A Qwen2 decoder of the shapes-tiny size (4 layers, 256 wide, 4 heads, 2 key/value heads; no image, no Pixel-SAIL
module) learns "Which letter is red? (A) blue (B) green (C) yellow (D) red." -> "It is red (D)." (the ladder's
``letter_lookup`` text, the shipped tokenizer) with the ladder's optimiser: AdamW, 5 % warm-up then cosine, batch 16,
the loss on the answer. It prints the teacher-forced accuracy of the letter on 256 held-out questions (chance 25 %).

Layouts: ``product`` as above (the letter three tokens before its word); ``adjacent`` "blueA, greenB, ..." ->
"It is redD." (the letter right after its word: what an induction head copies). ``--token-conv K`` adds to the
residual stream before every layer a depthwise causal convolution over the last K tokens (not in Pixel-SAIL), which
puts a word's letter and the answer's word within one attention hop.
"""
from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import AutoTokenizer, Qwen2ForCausalLM

import pixelsail
from benchmarks.ladder import letter_lookup_text
from benchmarks.oracle_query import optimizer_step
from pixelsail.config import PixelSailConfig
from pixelsail.model.pixelsail import build_llm
from pixelsail.tokens import assistant_header, user_turn
from pixelsail.train import build_optimizer, lr_factor

IGNORE = -100
TOKENIZER = Path(pixelsail.__file__).parent / "assets" / "shapes-tiny"
LAYOUTS = ("product", "adjacent")


def adjacent(question: str, answer: str) -> tuple[str, str]:
    """"... (A) blue (B) red." -> "... blueA, redB."; "It is red (B)." -> "It is redB."."""
    stem, listed = question.split("? ", 1)
    pairs = re.findall(r"\(([A-D])\) (\S+?)(?= \(|\.$)", listed)
    return f"{stem}? " + ", ".join(f"{w}{k}" for k, w in pairs) + ".", re.sub(r" \(([A-D])\)", r"\1", answer)


class TokenConv(nn.Module):
    """h + a depthwise causal convolution of h over the last ``kernel`` positions; (B, L, C) -> (B, L, C)."""

    def __init__(self, width: int, kernel: int):
        super().__init__()
        self.kernel = kernel
        self.conv = nn.Conv1d(width, width, kernel, groups=width, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = nn.functional.pad(h.transpose(1, 2), (self.kernel - 1, 0))   # (B, C, K-1+L): position t sees t-K+1..t
        return h + self.conv(x).transpose(1, 2)


def add_token_convs(llm: Qwen2ForCausalLM, kernel: int) -> None:
    """A :class:`TokenConv` in front of every decoder layer (forward pre-hooks; the layers' own code unchanged)."""
    llm.token_convs = nn.ModuleList(TokenConv(llm.config.hidden_size, kernel) for _ in llm.model.layers)
    for layer, conv in zip(llm.model.layers, llm.token_convs):
        def hook(module, args, kwargs, conv=conv):
            if args:
                return (conv(args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": conv(kwargs["hidden_states"])}
        layer.register_forward_pre_hook(hook, with_kwargs=True)


class Lookups:
    """Tokenised look-up questions: input ids, answer-only labels and where each answer's letter is."""

    def __init__(self, tokenizer, layout: str):
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
        self.tokenizer, self.layout = tokenizer, layout
        self.letters = {tokenizer.convert_tokens_to_ids(c) for c in "ABCD"}

    def text(self, rng: np.random.Generator) -> tuple[str, str]:
        question, answer = letter_lookup_text(rng)
        return adjacent(question, answer) if self.layout == "adjacent" else (question, answer)

    def batch(self, rng: np.random.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows, labels, letter_at = [], [], []
        for question, answer in (self.text(rng) for _ in range(n)):
            prompt = self.tokenizer(user_turn(question) + assistant_header())["input_ids"]
            reply = self.tokenizer(answer)["input_ids"]
            rows.append(prompt + reply)
            labels.append([IGNORE] * len(prompt) + reply)
            letter_at.append(len(prompt) + min(i for i, t in enumerate(reply) if t in self.letters))
        width = max(map(len, rows))
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])   # right padding: causal, never attended
        return ids, torch.tensor([y + [IGNORE] * (width - len(y)) for y in labels]), torch.tensor(letter_at)


@torch.no_grad()
def letter_accuracy(llm: Qwen2ForCausalLM, ids: torch.Tensor, letter_at: torch.Tensor) -> float:
    """Percent of questions whose letter is the argmax after the right words before it."""
    llm.eval()
    logits = llm(ids).logits
    rows = torch.arange(len(ids))
    hits = logits[rows, letter_at - 1].argmax(-1) == ids[rows, letter_at]
    llm.train()
    return 100.0 * hits.float().mean().item()


def run(*, lr: float, seed: int, layout: str = "product", samples: int = 24000, batch: int = 16,
        eval_every: int = 4000, token_conv: int = 0, log=print) -> list[tuple[int, float]]:
    """Train one decoder; the curve [(samples seen, letter accuracy %), ...]."""
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    data = Lookups(tokenizer, layout)
    llm = build_llm(PixelSailConfig(vocab_size=len(tokenizer)))
    if token_conv:
        add_token_convs(llm, token_conv)
    llm.train()
    optimizer = build_optimizer(llm, lr, (0.9, 0.999), 0.05)
    steps = samples // batch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps, 0.05))
    rng, val_rng = np.random.default_rng(seed), np.random.default_rng(10_000 + seed)
    val_ids, _, val_at = data.batch(val_rng, 256)
    curve, t0 = [], time.perf_counter()
    for step in range(steps):
        ids, labels, _ = data.batch(rng, batch)
        loss = llm(ids, labels=labels).loss
        optimizer_step(loss, optimizer, scheduler, llm, grad_clip=1.0)
        seen = (step + 1) * batch
        if seen % eval_every < batch or step == steps - 1:
            curve.append((seen, round(letter_accuracy(llm, val_ids, val_at), 1)))
            log(f"  {layout} lr {lr:g} conv {token_conv} seed {seed}: {seen} samples ({time.perf_counter() - t0:.0f} s)"
                f" loss {loss.item():.3f} letter {curve[-1][1]} %")
    return curve


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lr", type=float, nargs="+", default=[2e-3, 5e-4])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--layout", choices=LAYOUTS, default="product")
    ap.add_argument("--samples", type=int, default=24000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--eval-every", type=int, default=4000)
    ap.add_argument("--token-conv", type=int, default=0, help="kernel of the causal conv before every layer (0: none)")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    finals = {}
    for lr in args.lr:
        for seed in args.seeds:
            curve = run(lr=lr, seed=seed, layout=args.layout, samples=args.samples, batch=args.batch,
                        eval_every=args.eval_every, token_conv=args.token_conv)
            finals.setdefault(lr, []).append(curve[-1][1])
    for lr, accs in finals.items():
        print(f"lr {lr:g}: letter accuracy after {args.samples} samples {' / '.join(map(str, accs))} % (chance 25)")


if __name__ == "__main__":
    main()
