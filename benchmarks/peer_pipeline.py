"""A matched three-model referring-segmentation pipeline (random weights), the kind Pixel-SAIL replaces.

    image -> ViT encoder -> (projector -> the same Qwen2 LLM with the question) -> [SEG] hidden state
          -> (neck -> image embedding) + [SEG] as a sparse prompt -> SAM-style two-way-transformer mask decoder

It shares Pixel-SAIL's preprocessing (same image size, same patch size), tokenizer and LLM shape, so the two differ
only in what the single transformer replaces: the vision encoder and the mask decoder. Every x2 upsampling is a
per-pixel linear map + pixel shuffle (as in Pixel-SAIL's upsampler), so neither side pays for a slow conv kernel.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pixelsail.config import PixelSailConfig
from pixelsail.model.mask_head import MASK_THRESHOLD, mask_probabilities
from pixelsail.model.pixelsail import build_llm
from pixelsail.processing import Processor


@dataclass
class PeerConfig:
    vit_width: int
    vit_layers: int
    vit_heads: int
    prompt_dim: int = 256          # SAM's prompt / image-embedding width
    decoder_layers: int = 2        # two-way transformer blocks
    decoder_heads: int = 8
    decoder_mlp: int = 2048
    num_mask_tokens: int = 4       # SAM: 3 multimask outputs + 1 single-mask output

    @classmethod
    def matched(cls, cfg: PixelSailConfig) -> "PeerConfig":
        """A ViT as wide as the LLM with half its depth, and SAM's decoder (scaled down for narrow LLMs)."""
        dim = min(256, cfg.hidden_size)
        return cls(vit_width=cfg.hidden_size, vit_layers=max(2, cfg.num_hidden_layers // 2),
                   vit_heads=cfg.num_attention_heads, prompt_dim=dim, decoder_heads=max(1, dim // 32),
                   decoder_mlp=8 * dim)


def sincos_2d(grid: tuple[int, int], dim: int, device: torch.device) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embeddings (gh*gw, dim): half the channels per axis."""
    gh, gw = grid
    quarter = dim // 4
    freq = 1.0 / (10000 ** (torch.arange(quarter, device=device) / quarter))
    ys = torch.arange(gh, device=device).repeat_interleave(gw)[:, None] * freq
    xs = torch.arange(gw, device=device).repeat(gh)[:, None] * freq
    out = torch.cat([ys.sin(), ys.cos(), xs.sin(), xs.cos()], dim=1)
    return F.pad(out, (0, dim - out.shape[1]))


class Attention(nn.Module):
    """Multi-head attention over (B, N, C) with an optional smaller internal width (SAM's downsampled cross-attn)."""

    def __init__(self, dim: int, heads: int, inner: int | None = None):
        super().__init__()
        inner = inner or dim
        self.heads = heads
        self.q, self.k, self.v = nn.Linear(dim, inner), nn.Linear(dim, inner), nn.Linear(dim, inner)
        self.out = nn.Linear(inner, dim)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        def split(x):  # (B, N, inner) -> (B, heads, N, inner / heads)
            b, n, c = x.shape
            return x.view(b, n, self.heads, c // self.heads).transpose(1, 2)

        o = F.scaled_dot_product_attention(split(self.q(q)), split(self.k(k)), split(self.v(v)))
        b, h, n, d = o.shape
        return self.out(o.transpose(1, 2).reshape(b, n, h * d))


def mlp(dim: int, hidden: int, out: int | None = None) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, out or dim))


class ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.mlp = mlp(dim, 4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h)
        return x + self.mlp(self.norm2(x))


class ViTEncoder(nn.Module):
    """Raw patches (N, 3*P*P) -> patch features (1, N, width)."""

    def __init__(self, patch_size: int, width: int, layers: int, heads: int):
        super().__init__()
        self.patch = nn.Linear(3 * patch_size * patch_size, width)
        self.blocks = nn.Sequential(*[ViTBlock(width, heads) for _ in range(layers)])
        self.norm = nn.LayerNorm(width)

    def forward(self, patches: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = self.patch(patches)[None] + sincos_2d(grid, self.patch.out_features, patches.device)
        return self.norm(self.blocks(x))


class TwoWayBlock(nn.Module):
    """Tokens self-attend, tokens read the image, tokens MLP, the image reads the tokens (SAM's decoder layer)."""

    def __init__(self, dim: int, heads: int, mlp_dim: int):
        super().__init__()
        self.self_attn = Attention(dim, heads)
        self.token_to_image = Attention(dim, heads, dim // 2)
        self.image_to_token = Attention(dim, heads, dim // 2)
        self.mlp = mlp(dim, mlp_dim)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(4))

    def forward(self, tokens, image, token_pe, image_pe):
        q = tokens + token_pe
        tokens = self.norms[0](tokens + self.self_attn(q, q, tokens))
        tokens = self.norms[1](tokens + self.token_to_image(tokens + token_pe, image + image_pe, image))
        tokens = self.norms[2](tokens + self.mlp(tokens))
        image = self.norms[3](image + self.image_to_token(image + image_pe, tokens + token_pe, tokens))
        return tokens, image


class PixelShuffleUp(nn.Module):
    """x2 upsampling of a channels-last (B, H, W, C) map: kernel-2 stride-2 transposed conv as Linear + shuffle."""

    def __init__(self, dim: int, out: int):
        super().__init__()
        self.proj = nn.Linear(dim, 4 * out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        # (B, H, W, 4 out) -> (B, H, W, 2, 2, out) -> (B, H, 2, W, 2, out) -> (B, 2H, 2W, out)
        y = self.proj(x).view(b, h, w, 2, 2, -1).permute(0, 1, 3, 2, 4, 5)
        return y.reshape(b, 2 * h, 2 * w, -1)


class MaskDecoder(nn.Module):
    """SAM-style: [IoU, mask tokens, sparse prompt] x image embedding -> stride-4 mask logits."""

    def __init__(self, cfg: PeerConfig):
        super().__init__()
        d = cfg.prompt_dim
        self.pe_gaussian = nn.Parameter(torch.randn(2, d // 2), requires_grad=False)  # random Fourier positions
        self.no_mask = nn.Parameter(torch.zeros(d))
        self.iou_token = nn.Parameter(torch.randn(1, d))
        self.mask_tokens = nn.Parameter(torch.randn(cfg.num_mask_tokens, d))
        self.blocks = nn.ModuleList(TwoWayBlock(d, cfg.decoder_heads, cfg.decoder_mlp)
                                    for _ in range(cfg.decoder_layers))
        self.final_attn = Attention(d, cfg.decoder_heads, d // 2)
        self.final_norm = nn.LayerNorm(d)
        self.up1, self.up2 = PixelShuffleUp(d, d // 4), PixelShuffleUp(d // 4, d // 8)
        self.up_norm = nn.LayerNorm(d // 4)
        self.hyper = nn.ModuleList(nn.Sequential(mlp(d, d), nn.GELU(), nn.Linear(d, d // 8))
                                   for _ in range(cfg.num_mask_tokens))
        self.iou_head = nn.Sequential(mlp(d, d), nn.GELU(), nn.Linear(d, cfg.num_mask_tokens))

    def dense_pe(self, grid: tuple[int, int], device: torch.device) -> torch.Tensor:
        gh, gw = grid
        ys = (torch.arange(gh, device=device) + 0.5) / gh
        xs = (torch.arange(gw, device=device) + 0.5) / gw
        coords = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(-1, 2) * 2 - 1  # (gh*gw, 2)
        proj = 2 * math.pi * coords @ self.pe_gaussian
        return torch.cat([proj.sin(), proj.cos()], dim=-1)

    def forward(self, image: torch.Tensor, grid: tuple[int, int], sparse: torch.Tensor) -> torch.Tensor:
        """image (1, gh*gw, d), sparse (S, d) -> single-mask logits (1, 4 gh, 4 gw)."""
        gh, gw = grid
        image_pe = self.dense_pe(grid, image.device)[None]
        tokens = torch.cat([self.iou_token, self.mask_tokens, sparse])[None]  # (1, T, d)
        token_pe = tokens
        image = image + self.no_mask
        for block in self.blocks:
            tokens, image = block(tokens, image, token_pe, image_pe)
        tokens = self.final_norm(tokens + self.final_attn(tokens + token_pe, image + image_pe, image))
        up = F.gelu(self.up2(F.gelu(self.up_norm(self.up1(image.view(1, gh, gw, -1))))))  # (1, 4gh, 4gw, d/8)
        hyper = torch.stack([f(tokens[0, 1 + i]) for i, f in enumerate(self.hyper)])      # (num_mask, d/8)
        masks = torch.einsum("kc,bhwc->bkhw", hyper, up)
        self.last_iou = self.iou_head(tokens[0, 0])
        return masks[:, 0]  # the single-mask output, as LISA uses it


class PeerPipeline(nn.Module):
    """ViT encoder + projector + Qwen2 LLM + SAM-style prompt encoder and mask decoder."""

    def __init__(self, cfg: PixelSailConfig, processor: Processor, peer: PeerConfig | None = None):
        super().__init__()
        peer = peer or PeerConfig.matched(cfg)
        self.processor = processor
        self.vit = ViTEncoder(cfg.patch_size, peer.vit_width, peer.vit_layers, peer.vit_heads)
        self.projector = mlp(peer.vit_width, cfg.hidden_size, cfg.hidden_size)
        self.llm = build_llm(cfg)
        self.neck = nn.Sequential(nn.Linear(peer.vit_width, peer.prompt_dim), nn.LayerNorm(peer.prompt_dim))
        self.seg_to_prompt = mlp(cfg.hidden_size, cfg.hidden_size, peer.prompt_dim)
        self.decoder = MaskDecoder(peer)

    @torch.no_grad()
    def segment(self, image: np.ndarray, question: str, answer: str) -> list[np.ndarray]:
        """One query: image and a forced answer containing [SEG] -> one (H, W) bool mask per [SEG]."""
        proc = self.processor
        dev = self.decoder.no_mask.device
        inputs = proc.image_inputs(image)
        feats = self.vit(inputs.patches.to(dev), inputs.grid)                         # (1, N, W)
        ids = torch.tensor(proc.prompt_ids(question, answer_prefix=answer), device=dev)
        embed = self.llm.get_input_embeddings()
        ends = embed(torch.tensor([proc.ids["vision_start"], proc.ids["vision_end"]], device=dev))
        seq = torch.cat([ends[:1], self.projector(feats[0]), ends[1:], embed(ids)])[None]
        hidden = self.llm.model(inputs_embeds=seq, use_cache=False).last_hidden_state[0]
        text = hidden[-len(ids):]
        seg = text[ids == proc.ids["seg"]]
        if seg.shape[0] == 0:
            return []
        image_embed = self.neck(feats)
        h, w = inputs.orig_size
        out = []
        for prompt in self.seg_to_prompt(seg):
            logits = self.decoder(image_embed, inputs.grid, prompt[None])
            out.append((mask_probabilities(logits, (h, w))[0] > MASK_THRESHOLD).cpu().numpy())
        return out

    def component_parameters(self) -> dict[str, int]:
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        return {"vit": count(self.vit) + count(self.projector), "llm": count(self.llm),
                "mask_decoder": count(self.neck) + count(self.seg_to_prompt) + count(self.decoder)}


__all__ = ["PeerConfig", "PeerPipeline", "ViTEncoder", "MaskDecoder"]
