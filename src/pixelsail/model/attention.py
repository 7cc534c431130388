"""Who attends to whom, and the three ways we compute it; plus the KV cache.

Everything here is ours rather than transformers': the decoder layers call these functions directly (see
:mod:`pixelsail.model.decoder`), so neither the attention registry nor the keyword names transformers passes
between its layers can change what the model computes.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F

PREFIX_SDPA = "prefix_sdpa"
ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa", PREFIX_SDPA)


@dataclass
class AttentionLayout:
    """Which keys each query may see.

    vision_lens: (B,) length of the bidirectional block at the start of each sequence (0 for text-only).
    past_len:    tokens already in the cache before the current queries (all earlier tokens are visible).
    key_valid:   optional (B, past_len + Q) bool, False for padding slots no query may see (batched generation
                 over sequences of different lengths keeps them in one rectangular cache).
    vision_sees: optional (B,) keys the vision block's queries may see, from the start (>= vision_lens): with
                 ``vision_reads_question`` the block plus the first question, so patches read the expression.
    """

    vision_lens: torch.Tensor
    past_len: int = 0
    key_valid: torch.Tensor | None = None
    vision_sees: torch.Tensor | None = None

    def uniform_vision_len(self) -> int | None:
        v = self.vision_lens
        return int(v[0]) if bool((v == v[0]).all()) else None

    def allowed(self, q_len: int, kv_len: int, device: torch.device) -> torch.Tensor:
        """(B, 1, Q, K) bool: causal everywhere, plus all-to-all inside each sequence's vision block (its queries
        also see the keys up to ``vision_sees`` where that is given)."""
        q_pos = torch.arange(self.past_len, self.past_len + q_len, device=device)[:, None]
        k_pos = torch.arange(kv_len, device=device)[None, :]
        causal = k_pos <= q_pos  # (Q, K)
        v = self.vision_lens.to(device)[:, None, None]
        seen = v if self.vision_sees is None else self.vision_sees.to(device)[:, None, None]
        block = (q_pos[None] < v) & (k_pos[None] < seen)  # (B, Q, K)
        allowed = causal[None] | block
        if self.key_valid is not None:
            allowed = allowed & self.key_valid.to(device)[:, None, :]
        return allowed[:, None]

    def additive(self, q_len: int, kv_len: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The same as :meth:`allowed` as an additive float mask (0 / finfo.min): eager attention needs this form."""
        return additive_mask(self.allowed(q_len, kv_len, device), dtype)


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A bool mask (True = may attend) as the additive float mask eager attention takes (0 / finfo.min)."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


# An attention function bound to one forward's layout: query (B, Hq, Q, D), key/value (B, Hkv, K, D) (Hq a multiple
# of Hkv), the softmax scale and the dropout probability -> (B, Hq, Q, D).
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float, float], torch.Tensor]


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, Hkv, K, D) -> (B, Hkv * groups, K, D), each key/value head repeated for the query heads sharing it."""
    if groups == 1:
        return x
    b, h, k, d = x.shape
    return x[:, :, None].expand(b, h, groups, k, d).reshape(b, h * groups, k, d)


def eager_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float, dropout: float,
                    *, mask: torch.Tensor) -> torch.Tensor:
    """softmax(QK^T * scale + additive mask) V with a float32 softmax, as Qwen2's eager path computes it."""
    groups = query.shape[1] // key.shape[1]
    key, value = _repeat_kv(key, groups), _repeat_kv(value, groups)
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling + mask
    weights = F.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=dropout > 0)
    return torch.matmul(weights, value)


# Below this many keys, CPU training computes attention as explicit matmuls + softmax: the fused CPU kernel's
# backward is slower there (bf16 fwd+bwd, 1 thread: 0.52x the time at 100 keys, 0.83x at 160, 1.06x at 200).
EXPLICIT_CPU_TRAINING_KEYS = 192


def sdpa_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float, dropout: float,
                   *, mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
    """Fused SDPA with an optional bool mask (True = may attend); explicit attention for short CPU training."""
    q_len, kv_len = query.shape[2], key.shape[2]
    if query.device.type == "cpu" and query.requires_grad and kv_len <= EXPLICIT_CPU_TRAINING_KEYS:
        if causal:
            mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril(diagonal=kv_len - q_len)
        additive = additive_mask(mask, query.dtype) if mask is not None else 0.0
        return eager_attention(query, key, value, scaling, dropout, mask=additive)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout, is_causal=causal,
                                          scale=scaling, enable_gqa=query.shape[1] != key.shape[1])


def prefix_sdpa_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float,
                          dropout: float, *, layout: AttentionLayout) -> torch.Tensor:
    """Fused SDPA without an L x L mask when every sequence of the batch has the same vision-block length.

    The vision rows attend to the vision block only (no mask); the text rows attend causally to everything before
    them (a small (T, K) bool mask, or none when T == 1). Mixed vision lengths or padded keys take the full mask.
    """
    q_len, kv_len = query.shape[2], key.shape[2]
    sdpa = partial(sdpa_attention, scaling=scaling, dropout=dropout)

    def lower_right(t: int, k: int) -> torch.Tensor:
        # query i (of the last t) sees keys 0 .. k - t + i
        return torch.ones(t, k, dtype=torch.bool, device=query.device).tril(diagonal=k - t)

    v_len = layout.uniform_vision_len()
    if v_len is None or layout.key_valid is not None or (layout.vision_sees is not None and layout.past_len == 0):
        return sdpa(query, key, value, mask=layout.allowed(q_len, kv_len, query.device))
    if layout.past_len > 0 or v_len == 0:
        if q_len == 1:
            return sdpa(query, key, value)
        if q_len == kv_len:
            return sdpa(query, key, value, causal=True)
        return sdpa(query, key, value, mask=lower_right(q_len, kv_len))
    if q_len == v_len:
        return sdpa(query, key, value)
    vision = sdpa(query[:, :, :v_len], key[:, :, :v_len], value[:, :, :v_len])
    text = sdpa(query[:, :, v_len:], key, value, mask=lower_right(q_len - v_len, kv_len))
    return torch.cat([vision, text], dim=2)


def text_only_head_mask(layout: AttentionLayout, q_len: int, kv_len: int, num_heads: int, text_only_heads: int,
                        device: torch.device) -> torch.Tensor:
    """(B, H, Q, K) bool: :meth:`AttentionLayout.allowed`, except that in the last ``text_only_heads`` heads text
    queries do not see the vision block (not in the paper; ``PixelSailConfig.text_only_heads`` says why)."""
    allowed = layout.allowed(q_len, kv_len, device)                                    # (B, 1, Q, K)
    q_pos = torch.arange(layout.past_len, layout.past_len + q_len, device=device)[:, None]
    k_pos = torch.arange(kv_len, device=device)[None, :]
    v = layout.vision_lens.to(device)[:, None, None]
    text_to_vision = (q_pos[None] >= v) & (k_pos[None] < v)                            # (B, Q, K)
    restricted = torch.arange(num_heads, device=device) >= num_heads - text_only_heads  # (H,)
    return allowed & ~(restricted[None, :, None, None] & text_to_vision[:, None])


def bind_attention(name: str, layout: AttentionLayout, q_len: int, dtype: torch.dtype,
                   device: torch.device, *, num_heads: int = 0, text_only_heads: int = 0) -> Attend:
    """The attention ``name`` for one forward of ``q_len`` new tokens: its mask is built once, shared by all layers.

    With ``text_only_heads`` the mask differs per head, so every implementation takes an explicit (B, H, Q, K) mask.
    """
    kv_len = layout.past_len + q_len
    if text_only_heads and name in ATTENTION_IMPLEMENTATIONS:
        allowed = text_only_head_mask(layout, q_len, kv_len, num_heads, text_only_heads, device)
        if name == "eager":
            return partial(eager_attention, mask=additive_mask(allowed, dtype))
        return partial(sdpa_attention, mask=allowed)
    if name == "eager":
        return partial(eager_attention, mask=layout.additive(q_len, kv_len, dtype, device))
    if name == "sdpa":
        return partial(sdpa_attention, mask=layout.allowed(q_len, kv_len, device))
    if name == PREFIX_SDPA:
        return partial(prefix_sdpa_attention, layout=layout)
    raise ValueError(f"attention implementation {name!r} is not one of {ATTENTION_IMPLEMENTATIONS}")


class KVCache:
    """Keys/values (B, Hkv, K, D) per layer; ``truncate`` drops everything after a prefix so it can be reused."""

    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this step's keys/values for ``layer_idx`` and return everything cached for it."""
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


__all__ = ["ATTENTION_IMPLEMENTATIONS", "Attend", "AttentionLayout", "EXPLICIT_CPU_TRAINING_KEYS", "KVCache",
           "PREFIX_SDPA", "bind_attention", "eager_attention", "prefix_sdpa_attention", "sdpa_attention"]
