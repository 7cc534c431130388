"""Analytic FLOP counts of Pixel-SAIL's forward, training step, image prefill and cached text query.

One multiply-add is 2 FLOPs. Attention counts only the (query, key) pairs the layout allows (vision block all-to-all,
text causal), i.e. the model's useful work, not what a kernel may compute and then mask away. Element-wise work
(norms, activations, rotary, softmax, losses) is not counted, except the upsampler's depth-wise 3x3 convolution,
which is kept as its own entry so the matmul part can be checked against ``torch.utils.flop_counter``.
A backward pass costs twice its forward (input and weight gradients), except the patch embedding, whose input
(the raw pixels) needs no gradient.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from pixelsail.config import PixelSailConfig

# entries that are not matrix multiplies of weights or activations
NON_MATMUL = ("upsampler_depthwise",)


@dataclass(frozen=True)
class BatchShape:
    """The shape of a uniform training batch: every sample has the same image grid and text length."""

    batch: int
    grid: tuple[int, int]          # patch grid (gh, gw)
    text_tokens: int               # tokens after </vision> (chat text, prompt and answer)
    masks_per_sample: int = 1      # [SEG] tokens (and target masks) per sample
    supervised_tokens: int = 0     # answer tokens per sample that carry an LM label

    @property
    def patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def vision_tokens(self) -> int:
        return self.patches + 2    # <vision> patches </vision>

    @property
    def seq_len(self) -> int:
        return self.vision_tokens + self.text_tokens


def _kv_dim(cfg: PixelSailConfig) -> int:
    return cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads)


def decoder_linear(cfg: PixelSailConfig, tokens: int) -> float:
    """q, k, v, o projections and the gated MLP (gate, up, down) of every layer for ``tokens`` rows."""
    c, kv, inter = cfg.hidden_size, _kv_dim(cfg), cfg.intermediate_size
    per_token = 2 * (c * c + 2 * c * kv + c * c + 3 * c * inter)
    return float(per_token * tokens * cfg.num_hidden_layers)


def attention(cfg: PixelSailConfig, pairs: float) -> float:
    """Q.K^T and softmax(.).V over ``pairs`` allowed (query, key) pairs, every head, every layer."""
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    return float(4 * pairs * head_dim * cfg.num_attention_heads * cfg.num_hidden_layers)


def prefix_pairs(vision: int, text: int, past: int = 0) -> float:
    """Allowed pairs of ``text`` causal queries after ``past`` cached tokens, plus a ``vision`` x ``vision`` block."""
    return float(vision * vision + text * (past + vision) + text * (text + 1) // 2)


def upsampler(cfg: PixelSailConfig, grid: tuple[int, int]) -> dict[str, float]:
    """Pre-projection, the x2 steps (linear 'transposed conv', depth-wise 3x3, point-wise) and the output MLP."""
    c = cfg.hidden_size
    width = min(c, cfg.upsample_max_width)
    steps = int(math.log2(cfg.patch_size // cfg.upsample_stride)) if cfg.upsample else 0
    pixels = grid[0] * grid[1]
    matmul = 2.0 * pixels * c * width if width != c else 0.0
    depthwise = 0.0
    for _ in range(steps):
        matmul += 2.0 * pixels * width * 4 * width
        pixels *= 4
        depthwise += 2.0 * 9 * pixels * width
        matmul += 2.0 * pixels * width * width
    matmul += 2.0 * pixels * (width * width + width * cfg.mask_dim)
    return {"upsampler": matmul, "upsampler_depthwise": depthwise}


def feature_pixels(cfg: PixelSailConfig, grid: tuple[int, int]) -> int:
    steps = int(math.log2(cfg.patch_size // cfg.upsample_stride)) if cfg.upsample else 0
    return grid[0] * grid[1] * 4 ** steps


def mask_head(cfg: PixelSailConfig, grid: tuple[int, int], masks: int) -> dict[str, float]:
    c, d = cfg.hidden_size, cfg.mask_dim
    return {"seg_query": 2.0 * masks * (c * c + c * d),
            "mask_logits": 2.0 * masks * d * feature_pixels(cfg, grid)}


def patch_embed(cfg: PixelSailConfig, patches: int) -> float:
    return 2.0 * patches * 3 * cfg.patch_size ** 2 * cfg.hidden_size


def forward(cfg: PixelSailConfig, shape: BatchShape) -> dict[str, float]:
    """FLOPs of ``PixelSail.forward`` on a uniform batch, by component."""
    b = shape.batch
    out = {
        "patch_embed": b * patch_embed(cfg, shape.patches),
        "decoder_linear": decoder_linear(cfg, b * shape.seq_len),
        "attention": b * attention(cfg, prefix_pairs(shape.vision_tokens, shape.text_tokens)),
        "lm_head": 2.0 * b * shape.supervised_tokens * cfg.hidden_size * cfg.vocab_size,
    }
    out.update({k: b * v for k, v in upsampler(cfg, shape.grid).items()})
    out.update(mask_head(cfg, shape.grid, b * shape.masks_per_sample))
    return out


def train_step(cfg: PixelSailConfig, shape: BatchShape) -> dict[str, float]:
    """Forward + backward: every entry x3, the patch embedding x2 (no gradient for the pixels)."""
    fwd = forward(cfg, shape)
    return {k: v * (2 if k == "patch_embed" else 3) for k, v in fwd.items()}


def prefill(cfg: PixelSailConfig, grid: tuple[int, int]) -> dict[str, float]:
    """``prefill_image``: the bidirectional vision block and the upsampled mask features."""
    patches = grid[0] * grid[1]
    vision = patches + 2
    out = {"patch_embed": patch_embed(cfg, patches),
           "decoder_linear": decoder_linear(cfg, vision),
           "attention": attention(cfg, prefix_pairs(vision, 0))}
    out.update(upsampler(cfg, grid))
    return out


def query(cfg: PixelSailConfig, grid: tuple[int, int], text_tokens: int, masks: int) -> dict[str, float]:
    """One cached text pass after a prefill (``respond`` with a forced answer): text rows, one logit row, masks."""
    vision = grid[0] * grid[1] + 2
    out = {"decoder_linear": decoder_linear(cfg, text_tokens),
           "attention": attention(cfg, prefix_pairs(0, text_tokens, past=vision)),
           "lm_head": 2.0 * cfg.hidden_size * cfg.vocab_size}
    out.update(mask_head(cfg, grid, masks))
    return out


def total(flops: dict[str, float]) -> float:
    return float(sum(flops.values()))


def matmul_part(flops: dict[str, float], include_attention: bool = False) -> float:
    """Weight and activation matmuls only (what ``FlopCounterMode`` sees of a CPU SDPA model: no attention)."""
    skip = set(NON_MATMUL) | (set() if include_attention else {"attention"})
    return float(sum(v for k, v in flops.items() if k not in skip))


def parameter_count(module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = ["BatchShape", "forward", "train_step", "prefill", "query", "total", "matmul_part", "decoder_linear",
           "attention", "prefix_pairs", "upsampler", "mask_head", "patch_embed", "feature_pixels",
           "parameter_count"]
