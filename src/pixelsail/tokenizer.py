"""Tokenizers: add pixelsail's special tokens to any HF tokenizer, or build the tiny offline one for shapes."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from pixelsail.tokens import PAD, TURN_END, TURN_START, special_tokens


def add_pixelsail_tokens(tokenizer: PreTrainedTokenizerBase, num_vp_tokens: int) -> PreTrainedTokenizerBase:
    """Register the chat, vision, segmentation and prompt tokens as single-id special tokens (idempotent)."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in (TURN_START, TURN_END, *special_tokens(num_vp_tokens)) if t not in vocab]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = PAD if PAD in tokenizer.get_vocab() else (tokenizer.eos_token or TURN_END)
    return tokenizer


def build_tiny_tokenizer(texts: Iterable[str], *, vocab_size: int = 1024, num_vp_tokens: int) -> PreTrainedTokenizerFast:
    """Train a small byte-level BPE on ``texts`` (offline) with the chat and pixelsail tokens as single ids."""
    chat_tokens = [PAD, TURN_START, TURN_END]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=chat_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=TURN_END)
    return add_pixelsail_tokens(fast, num_vp_tokens)


def load_tokenizer(path: str | Path, num_vp_tokens: int) -> PreTrainedTokenizerBase:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory {path} does not exist")
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    return add_pixelsail_tokens(tok, num_vp_tokens)
