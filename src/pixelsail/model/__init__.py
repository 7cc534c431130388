"""The Pixel-SAIL model and how to build one from a config."""
from __future__ import annotations

import json
from pathlib import Path

from pixelsail.config import PixelSailConfig
from pixelsail.model.pixelsail import CONFIG_FILE, ImagePrefix, PixelSail, PixelSailOutput, Response
from pixelsail.tokens import assistant_turn, user_turn


def tiny_tokenizer_corpus() -> list[str]:
    """Text the built-in tokenizer is trained on: the shapes world's vocabulary plus the chat layout."""
    from pixelsail.data.shapes import shapes_text_corpus

    texts = list(shapes_text_corpus(500))
    texts += [user_turn(t) + assistant_turn(t) for t in texts[:200]]
    return texts


def build_model(config: PixelSailConfig, *, init_from: str | None = None, tokenizer: str | None = None) -> PixelSail:
    """A model for training: resume a pixelsail checkpoint, start from a local HF LLM, or build from scratch.

    From a pixelsail checkpoint the model takes ``config``'s settings (a switch turned on for a fine-tune takes
    effect, its new parameters fresh), except the decoder's shape and the tokenizer, which stay the checkpoint's.

    From scratch, the tokenizer is ``tokenizer`` (a local directory) or the tiny BPE trained on the shapes world.
    """
    if init_from:
        path = Path(init_from)
        cfg_file = path / CONFIG_FILE
        if cfg_file.is_file() and "pixelsail" in json.loads(cfg_file.read_text()):
            return PixelSail.from_pretrained(path, config=config).train()
        return PixelSail.from_llm(path, config)
    from pixelsail.tokenizer import build_tiny_tokenizer, load_tokenizer

    if tokenizer:
        tok = load_tokenizer(tokenizer, config.num_vp_tokens)
    else:
        tok = build_tiny_tokenizer(tiny_tokenizer_corpus(), vocab_size=config.vocab_size,
                                   num_vp_tokens=config.num_vp_tokens)
    return PixelSail(config, tok)


__all__ = ["PixelSail", "PixelSailOutput", "ImagePrefix", "Response", "build_model", "tiny_tokenizer_corpus"]
