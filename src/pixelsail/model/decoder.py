"""One Qwen2/Llama-style decoder layer computed from its parameters, independent of transformers' ``forward``.

transformers renames the keywords its layers pass to attention (``past_key_value`` -> ``past_key_values`` ->
``cache``) and changes return types between versions; a layer called with the wrong name silently drops the KV cache
(transformers 5.17 answered garbage or crashed in cached generation). The submodules the weights live in
(``self_attn.{q,k,v,o}_proj``, ``input_layernorm``, ``post_attention_layernorm``, ``mlp.{gate,up,down}_proj``) have
kept their names since Llama 1, so we keep the Hugging Face modules as weight containers - checkpoints load
unchanged - and compute the layer here.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.activations import ACT2FN

from pixelsail.model.attention import Attend, KVCache


@dataclass(frozen=True)
class LayerSpec:
    """What the weights do not say by their shapes: the norm epsilon, the MLP activation and attention dropout."""

    head_dim: int
    rms_norm_eps: float
    hidden_act: str = "silu"
    attention_dropout: float = 0.0

    @classmethod
    def from_config(cls, config, head_dim: int) -> "LayerSpec":
        return cls(head_dim=head_dim, rms_norm_eps=float(config.rms_norm_eps),
                   hidden_act=getattr(config, "hidden_act", "silu"),
                   attention_dropout=float(getattr(config, "attention_dropout", 0.0) or 0.0))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Qwen2RMSNorm: normalise in float32, cast back, then scale (in that order, so bf16 results match)."""
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, L, D), cos/sin (B, L, D) -> x rotated (the half-split RoPE of Llama/Qwen2), in x's dtype (under
    bf16 autocast the projections are bf16: rotating them in fp32 doubled the memory traffic of these products)."""
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)
    return x * cos + _rotate_half(x) * sin


def attention_block(attn: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: Attend,
                    spec: LayerSpec, layer_idx: int, cache: KVCache | None, training: bool) -> torch.Tensor:
    """Self-attention of the normed input x (B, L, C) with grouped-query heads; appends to ``cache`` if given."""
    b, seq_len, _ = x.shape
    d = spec.head_dim
    # (B, L, H*D) -> (B, L, H, D) -> (B, H, L, D); H is read off the projection width (GQA: fewer k/v heads)
    q = attn.q_proj(x).view(b, seq_len, -1, d).transpose(1, 2)
    k = attn.k_proj(x).view(b, seq_len, -1, d).transpose(1, 2)
    v = attn.v_proj(x).view(b, seq_len, -1, d).transpose(1, 2)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    if cache is not None:
        k, v = cache.update(k, v, layer_idx)
    dropout = spec.attention_dropout if training else 0.0
    out = attend(q, k, v, d ** -0.5, dropout)  # (B, Hq, L, D)
    return attn.o_proj(out.transpose(1, 2).reshape(b, seq_len, -1))


def mlp_block(mlp: nn.Module, x: torch.Tensor, spec: LayerSpec) -> torch.Tensor:
    """The gated MLP: down(act(gate(x)) * up(x))."""
    return mlp.down_proj(ACT2FN[spec.hidden_act](mlp.gate_proj(x)) * mlp.up_proj(x))


def decoder_layer(layer: nn.Module, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: Attend,
                  spec: LayerSpec, layer_idx: int, cache: KVCache | None = None) -> torch.Tensor:
    """hidden (B, L, C) -> (B, L, C) through one pre-norm decoder layer (weights from ``layer``, maths from here)."""
    x = rms_norm(hidden, layer.input_layernorm.weight, spec.rms_norm_eps)
    hidden = hidden + attention_block(layer.self_attn, x, cos, sin, attend, spec, layer_idx, cache, layer.training)
    x = rms_norm(hidden, layer.post_attention_layernorm.weight, spec.rms_norm_eps)
    return hidden + mlp_block(layer.mlp, x, spec)


__all__ = ["LayerSpec", "apply_rotary", "decoder_layer", "rms_norm"]
