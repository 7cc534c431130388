"""The decoder LLM driven layer by layer: 3-axis rotary positions and a prefix-bidirectional attention layout.

We keep Hugging Face's decoder layers (so real Qwen2/Qwen2.5 checkpoints load unchanged) and own three things:
the positions (row/column rotary for vision tokens), who attends to whom (vision block bidirectional, text causal),
and the KV cache (so an image prefix is computed once and reused for every question about it).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

PREFIX_SDPA = "prefix_sdpa"
ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa", PREFIX_SDPA)


@dataclass
class AttentionLayout:
    """Which keys each query may see.

    vision_lens: (B,) length of the bidirectional block at the start of each sequence (0 for text-only).
    past_len:    tokens already in the cache before the current queries (all earlier tokens are visible).
    """

    vision_lens: torch.Tensor
    past_len: int = 0

    def uniform_vision_len(self) -> int | None:
        v = self.vision_lens
        return int(v[0]) if bool((v == v[0]).all()) else None

    def allowed(self, q_len: int, kv_len: int, device: torch.device) -> torch.Tensor:
        """(B, 1, Q, K) bool: causal everywhere, plus all-to-all inside each sequence's vision block."""
        q_pos = torch.arange(self.past_len, self.past_len + q_len, device=device)[:, None]
        k_pos = torch.arange(kv_len, device=device)[None, :]
        causal = k_pos <= q_pos  # (Q, K)
        v = self.vision_lens.to(device)[:, None, None]
        block = (q_pos[None] < v) & (k_pos[None] < v)  # (B, Q, K)
        return (causal[None] | block)[:, None]

    def additive(self, q_len: int, kv_len: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The same as :meth:`allowed` as an additive float mask (0 / finfo.min): eager attention needs this form."""
        allowed = self.allowed(q_len, kv_len, device)
        return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)


def prefix_sdpa_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: AttentionLayout, scaling: float | None = None, dropout: float = 0.0,
                          **kwargs) -> tuple[torch.Tensor, None]:
    """Fused SDPA without an L x L mask when every sequence of the batch has the same vision-block length.

    query (B, Hq, Q, D); key/value (B, Hkv, K, D). The vision rows attend to the vision block only (no mask);
    the text rows attend causally to everything before them (a small (T, K) bool mask, or none when T == 1).
    """
    layout = attention_mask
    q_len, kv_len = query.shape[2], key.shape[2]
    gqa = query.shape[1] != key.shape[1]

    def sdpa(q, k, v, mask=None, causal=False):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scaling,
                                              enable_gqa=gqa)

    def lower_right(t: int, k: int) -> torch.Tensor:
        # query i (of the last t) sees keys 0 .. k - t + i
        return torch.ones(t, k, dtype=torch.bool, device=query.device).tril(diagonal=k - t)

    v_len = layout.uniform_vision_len()
    if v_len is None:
        out = sdpa(query, key, value, mask=layout.allowed(q_len, kv_len, query.device))
    elif layout.past_len > 0 or v_len == 0:
        if q_len == 1:
            out = sdpa(query, key, value)
        elif q_len == kv_len:
            out = sdpa(query, key, value, causal=True)
        else:
            out = sdpa(query, key, value, mask=lower_right(q_len, kv_len))
    elif q_len == v_len:
        out = sdpa(query, key, value)
    else:
        vision = sdpa(query[:, :, :v_len], key[:, :, :v_len], value[:, :, :v_len])
        text = sdpa(query[:, :, v_len:], key, value, mask=lower_right(q_len - v_len, kv_len))
        out = torch.cat([vision, text], dim=2)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(PREFIX_SDPA, prefix_sdpa_attention)


class KVCache:
    """Keys/values per layer; ``truncate`` drops everything after a prefix so it can be reused."""

    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        if layer_idx == len(self.keys):
            self.keys.append(key)
            self.values.append(value)
        else:
            self.keys[layer_idx] = torch.cat([self.keys[layer_idx], key], dim=2)
            self.values[layer_idx] = torch.cat([self.values[layer_idx], value], dim=2)
        return self.keys[layer_idx], self.values[layer_idx]

    def __len__(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0

    def truncate(self, length: int) -> None:
        self.keys = [k[:, :, :length] for k in self.keys]
        self.values = [v[:, :, :length] for v in self.values]

    def expand(self, batch: int) -> "KVCache":
        """A view of a batch-1 cache repeated ``batch`` times (for batched questions about one image)."""
        out = KVCache()
        out.keys = [k.expand(batch, -1, -1, -1) for k in self.keys]
        out.values = [v.expand(batch, -1, -1, -1) for v in self.values]
        return out


def rotary_axes(half_dim: int) -> torch.Tensor:
    """Axis (0 = t, 1 = row, 2 = column) driving each rotary frequency.

    Row and column alternate so both span every frequency band; every 4th frequency follows t (a quarter, as in
    Qwen2-VL's t/h/w split). Text tokens carry the same id on all three axes, which is exactly 1-D RoPE.
    """
    axes = torch.tensor([1 + (i % 2) for i in range(half_dim)])
    axes[3::4] = 0
    return axes


class Backbone(nn.Module):
    """A Hugging Face decoder-only LM (Qwen2 family) used as a stack of layers."""

    def __init__(self, llm: PreTrainedModel, attn_implementation: str = PREFIX_SDPA):
        super().__init__()
        inner = llm.model
        for attr in ("embed_tokens", "layers", "norm", "rotary_emb"):
            if not hasattr(inner, attr):
                raise TypeError(f"{type(llm).__name__} is not a Qwen2/Llama-style decoder: its .model has no .{attr}")
        self.llm = llm
        self.set_attention(attn_implementation)
        half = self.llm.model.rotary_emb.inv_freq.numel()
        self.register_buffer("axes", rotary_axes(half), persistent=False)

    @property
    def hidden_size(self) -> int:
        return self.llm.config.hidden_size

    def set_attention(self, name: str) -> None:
        if name not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"attention implementation {name!r} is not one of {ATTENTION_IMPLEMENTATIONS}")
        if name != PREFIX_SDPA and name not in ALL_ATTENTION_FUNCTIONS and name != "eager":
            raise ValueError(f"attention implementation {name!r} is not available in this transformers")
        self.llm.config._attn_implementation = name
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
        """embeds (B, L, C), positions (3, B, L) -> final-norm hidden states (B, L, C)."""
        q_len = embeds.shape[1]
        kv_len = layout.past_len + q_len
        if self.attn_implementation == PREFIX_SDPA:
            mask = layout
        elif self.attn_implementation == "eager":
            mask = layout.additive(q_len, kv_len, embeds.dtype if embeds.is_floating_point() else torch.float32,
                                   embeds.device)
        else:
            mask = layout.allowed(q_len, kv_len, embeds.device)
        cos_sin = self.rotary(positions, embeds.dtype)
        h = embeds
        for layer in self.llm.model.layers:
            h = layer(h, attention_mask=mask, position_embeddings=cos_sin, cache=cache)
        return self.llm.model.norm(h)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.llm.lm_head(hidden)


__all__ = ["AttentionLayout", "Backbone", "KVCache", "PREFIX_SDPA", "ATTENTION_IMPLEMENTATIONS"]
