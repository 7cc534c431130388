"""The decoder LLM driven layer by layer: 3-axis rotary positions and a prefix-bidirectional attention layout.

We keep Hugging Face's decoder modules as weight containers (so real Qwen2/Qwen2.5 checkpoints load unchanged) and
own everything they compute: the positions (row/column rotary for vision tokens), who attends to whom (vision block
bidirectional, text causal; :mod:`pixelsail.model.attention`), the layer maths (:mod:`pixelsail.model.decoder`) and
the KV cache (so an image prefix is computed once and reused for every question about it). Nothing here depends on
the keyword names transformers passes between its own layers, which change between versions.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel

from pixelsail.model.attention import (ATTENTION_IMPLEMENTATIONS, PREFIX_SDPA, AttentionLayout, KVCache,
                                       bind_attention)
from pixelsail.model.decoder import LayerSpec, decoder_layer, rms_norm


def rotary_axes(half_dim: int) -> torch.Tensor:
    """Axis (0 = t, 1 = row, 2 = column) driving each rotary frequency.

    Row and column alternate so both span every frequency band; every 4th frequency follows t (a quarter, as in
    Qwen2-VL's t/h/w split). Text tokens carry the same id on all three axes, which is exactly 1-D RoPE.
    """
    axes = torch.tensor([1 + (i % 2) for i in range(half_dim)])
    axes[3::4] = 0
    return axes


class Backbone(nn.Module):
    """A Hugging Face decoder-only LM (Qwen2 family) used as a stack of layers whose maths we compute ourselves."""

    def __init__(self, llm: PreTrainedModel, attn_implementation: str = PREFIX_SDPA, *, text_only_heads: int = 0):
        super().__init__()
        inner = llm.model
        for attr in ("embed_tokens", "layers", "norm", "rotary_emb"):
            if not hasattr(inner, attr):
                raise TypeError(f"{type(llm).__name__} is not a Qwen2/Llama-style decoder: its .model has no .{attr}")
        self.llm = llm
        self.set_attention(attn_implementation)
        half = self.llm.model.rotary_emb.inv_freq.numel()
        self.register_buffer("axes", rotary_axes(half), persistent=False)
        self.spec = LayerSpec.from_config(llm.config, head_dim=2 * half)
        self.gradient_checkpointing = False  # recompute each layer in backward (training only); see _recompute
        heads = int(llm.config.num_attention_heads)
        if not 0 <= text_only_heads <= heads:
            raise ValueError(f"text_only_heads must be between 0 and the {heads} attention heads, got {text_only_heads}")
        self.text_only_heads = text_only_heads

    @property
    def hidden_size(self) -> int:
        return self.llm.config.hidden_size

    def set_attention(self, name: str) -> None:
        if name not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"attention implementation {name!r} is not one of {ATTENTION_IMPLEMENTATIONS}")
        self.attn_implementation = name

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.llm.model.embed_tokens(input_ids)

    def rotary(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (3, B, L) -> cos, sin (B, L, head_dim)."""
        rot = self.llm.model.rotary_emb
        inv_freq = rot.inv_freq.float()
        # (3, B, L, half) -> pick each frequency's axis -> (B, L, half)
        freqs = positions[..., None].float() * inv_freq
        idx = self.axes.to(positions.device).view(1, 1, 1, -1).expand(1, *freqs.shape[1:])
        freqs = freqs.gather(0, idx)[0]
        emb = torch.cat([freqs, freqs], dim=-1)
        scale = getattr(rot, "attention_scaling", 1.0)
        return (emb.cos() * scale).to(dtype), (emb.sin() * scale).to(dtype)

    def forward(self, embeds: torch.Tensor, positions: torch.Tensor, layout: AttentionLayout,
                cache: KVCache | None = None) -> torch.Tensor:
        """embeds (B, L, C), positions (3, B, L) -> final-norm hidden states (B, L, C).

        With ``cache`` the keys/values of these tokens are appended to it and ``layout.past_len`` earlier ones read.
        """
        attend = bind_attention(self.attn_implementation, layout, embeds.shape[1], embeds.dtype, embeds.device,
                                num_heads=self.llm.config.num_attention_heads, text_only_heads=self.text_only_heads)
        cos, sin = self.rotary(positions, embeds.dtype)
        recompute = self._recompute() and self.training and torch.is_grad_enabled() and cache is None
        h = embeds
        for i, layer in enumerate(self.llm.model.layers):
            if recompute:
                h = checkpoint(decoder_layer, layer, h, cos, sin, attend, self.spec, i, use_reentrant=False)
            else:
                h = decoder_layer(layer, h, cos, sin, attend, self.spec, i, cache)
        return rms_norm(h, self.llm.model.norm.weight, self.spec.rms_norm_eps)

    def _recompute(self) -> bool:
        """Our flag, or the per-layer flag ``llm.activation_checkpointing_enable()`` (transformers) sets: the
        model's ``gradient_checkpointing_enable`` goes through transformers, whose layer forward we never call."""
        first = self.llm.model.layers[0] if len(self.llm.model.layers) else None
        return self.gradient_checkpointing or bool(getattr(first, "gradient_checkpointing", False))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.llm.lm_head(hidden)


__all__ = ["AttentionLayout", "Backbone", "KVCache", "PREFIX_SDPA", "ATTENTION_IMPLEMENTATIONS"]
