"""Does the model compute the same thing under the installed transformers? ``python -m pixelsail.model.selfcheck``.

Two checks on the shipped shapes-tiny model, for each attention implementation: cached generation (prefix KV cache,
one token at a time) gives the same tokens and masks as recomputing the whole sequence, and our decoder's text
logits equal transformers' own Qwen2 forward on the same weights. transformers 5.17 broke the first (every cached
answer became "Sure::::"), which is why the decoder is computed in :mod:`pixelsail.model.decoder`; CI runs this under
the lowest and highest transformers pyproject declares, and ``scripts/gpu-check.sh`` runs it on CUDA.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

QUESTIONS = ("Please segment the red square.", "What colour is the square?")


def _scene() -> np.ndarray:
    image = np.full((128, 128, 3), 255, np.uint8)
    image[30:80, 40:100] = (220, 30, 30)
    return image


def check(device: str = "cpu", logits_atol: float = 1e-4) -> dict[str, str]:
    """Raise AssertionError on the first disagreement; return the answers ({"attn: question": text})."""
    from pixelsail.model import PixelSail
    from pixelsail.model.backbone import ATTENTION_IMPLEMENTATIONS
    from pixelsail.predictor import shipped_model_dir

    answers = {}
    for attn in ATTENTION_IMPLEMENTATIONS:
        model = PixelSail.from_pretrained(shipped_model_dir(), device=device, attn_implementation=attn)
        prefix = model.prefill_image(_scene())
        for question in QUESTIONS:
            cached = model.respond(prefix, question, max_new_tokens=12)
            full = model.respond(prefix, question, max_new_tokens=12, use_cache=False)
            assert cached.token_ids == full.token_ids, f"{attn}: cached {cached.text!r} != full forward {full.text!r}"
            assert len(cached.masks) == len(full.masks), f"{attn}: mask counts differ"
            for a, b in zip(cached.masks, full.masks):
                assert (a == b).mean() > 0.999, f"{attn}: cached and full masks differ"
            answers[f"{attn}: {question}"] = cached.text
        ids = torch.tensor([model.processor.encode(" ".join(QUESTIONS))], device=model.device)
        with torch.no_grad():
            theirs = model.backbone.llm(input_ids=ids).logits
        ours = model.text_logits(ids)
        diff = float((ours - theirs).abs().max())
        assert diff <= logits_atol, f"{attn}: text logits differ from transformers' Qwen2 by {diff:.2e}"
    return answers


def main(argv: list[str] | None = None) -> int:
    import transformers

    parser = argparse.ArgumentParser(prog="python -m pixelsail.model.selfcheck", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--logits-atol", type=float, default=1e-4)
    args = parser.parse_args(argv)
    try:
        answers = check(args.device, args.logits_atol)
    except AssertionError as e:
        print(f"FAILED under transformers {transformers.__version__} on {args.device}: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"transformers": transformers.__version__, "torch": torch.__version__, "device": args.device,
                      "answers": answers}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
