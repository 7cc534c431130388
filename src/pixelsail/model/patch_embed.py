"""Raw patches -> embeddings added to <vpatch> tokens; visual prompts as injected or pooled embeddings."""
from __future__ import annotations

import math

import torch
from torch import nn

PATCH_STEMS = ("linear", "conv")   # config.patch_stem: the paper's linear patch embedding, or a small conv stem


class PatchEmbed(nn.Module):
    """One bias-free linear layer from a flattened P x P x 3 patch to the LLM width.

    ``output_std`` sets the initial scale of the patch embeddings to that of the LLM's token embeddings: with the
    default fan-in init they start ~25x larger than a fresh Qwen2's text embeddings, and the text tokens' own
    identity drowns in what they read from the image (grounding then learns several times slower).
    """

    def __init__(self, *, patch_size: int, hidden_size: int, output_std: float | None = None):
        super().__init__()
        self.proj = nn.Linear(3 * patch_size * patch_size, hidden_size, bias=False)
        if output_std is not None:
            nn.init.normal_(self.proj.weight, std=output_std / self.proj.in_features ** 0.5)

    def forward(self, patches: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        return self.proj(patches)


class ConvPatchEmbed(nn.Module):
    """A small convolutional stem in place of the linear patch embedding (not in the paper; ``patch_stem: conv``).

    log2(P) stride-2 4x4 convolutions (GroupNorm + GELU; 4x4 with padding 1 keeps each cell centred on its patch)
    take the image to the stride-P grid, and a bias-free linear
    layer maps each cell to the LLM width, scaled like :class:`PatchEmbed`. Each <vpatch> token still stands for one
    P x P patch, but it is computed from that patch and a few pixels around it through a local nonlinearity: a
    from-scratch transformer on raw linear patches learns colour within a few thousand samples and shape (a star
    against a circle inside one or two patches) not at all (docs/TRAINING.md); early convolutions are the known
    remedy for a ViT's sample efficiency.
    """

    def __init__(self, *, patch_size: int, hidden_size: int, output_std: float | None = None, base_width: int = 32):
        super().__init__()
        steps = int(math.log2(patch_size))
        if 2 ** steps != patch_size:
            raise ValueError(f"patch_stem 'conv' needs a power-of-two patch size, got {patch_size}")
        self.patch_size = patch_size
        layers, cin = [], 3
        for k in range(steps):
            cout = min(base_width * 2 ** k, hidden_size)
            layers += [nn.Conv2d(cin, cout, 4, stride=2, padding=1, bias=False), nn.GroupNorm(math.gcd(cout, 8), cout),
                       nn.GELU()]
            cin = cout
        self.stages = nn.Sequential(*layers)
        self.proj = nn.Linear(cin, hidden_size, bias=False)
        if output_std is not None:
            nn.init.normal_(self.proj.weight, std=output_std / self.proj.in_features ** 0.5)

    def forward(self, patches: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """patches ([G,] N, 3*P*P) of G images sharing one grid, N = gh*gw row-major, each patch flattened as
        (3, P, P) -> ([G,] N, C)."""
        if grid is None:
            raise ValueError("the conv patch stem needs the patch grid")
        gh, gw, p = grid[0], grid[1], self.patch_size
        lead = patches.shape[:-2]
        # (G, gh*gw, 3*P*P) -> (G, gh, gw, 3, P, P) -> (G, 3, gh, P, gw, P) -> (G, 3, gh*P, gw*P)
        images = patches.reshape(-1, gh, gw, 3, p, p).permute(0, 3, 1, 4, 2, 5).reshape(-1, 3, gh * p, gw * p)
        cells = self.stages(images)                                  # (G, C', gh, gw)
        out = self.proj(cells.flatten(2).transpose(1, 2))            # (G, gh*gw, C)
        return out.reshape(*lead, gh * gw, -1)


class PromptInjector(nn.Module):
    """Early fusion: each covered patch gets ``W_vp · E(<vp_k>)`` added (larger prompts first, smaller ones win)."""

    def __init__(self, *, hidden_size: int):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size, bias=False)

    def forward(self, patch_embeds: torch.Tensor, owner: torch.Tensor, vp_embeds: torch.Tensor) -> torch.Tensor:
        """patch_embeds (..., N, C); owner (..., N) the k of the prompt each patch gets (-1: none, see
        :func:`prompt_owner`); vp_embeds (num_vp, C) the <vp_k> token embeddings. -> patch_embeds + injection."""
        covered = owner >= 0
        inject = torch.zeros_like(patch_embeds)
        inject[covered] = self.proj(vp_embeds[owner[covered]]).to(patch_embeds.dtype)
        return patch_embeds + inject


def prompt_owner(prompt_ids: torch.Tensor, prompt_cover: torch.Tensor) -> torch.Tensor:
    """prompt_ids (K,) sorted largest first, prompt_cover (K, N) -> (N,) the k of the smallest prompt covering each
    patch, -1 where none does (later, smaller prompts overwrite earlier ones)."""
    if prompt_ids.numel() == 0:
        return torch.full((prompt_cover.shape[1],), -1, dtype=torch.long, device=prompt_cover.device)
    order = torch.arange(1, prompt_ids.numel() + 1, device=prompt_cover.device)[:, None]   # (K, 1)
    last = (prompt_cover * order).amax(dim=0)                                                # (N,) 0 = none
    ids = torch.cat([torch.full((1,), -1, dtype=torch.long, device=prompt_ids.device), prompt_ids])
    return ids[last]


def pooled_prompts(patch_embeds: torch.Tensor, prompt_ids: torch.Tensor, prompt_cover: torch.Tensor) -> dict[int, torch.Tensor]:
    """The plain baseline: each prompt is the mean patch embedding inside its coverage. Returns {k: (C,)}."""
    if prompt_ids.numel() == 0:
        return {}
    cover = prompt_cover.to(patch_embeds.dtype)                                   # (K, N)
    means = (cover @ patch_embeds) / cover.sum(dim=1, keepdim=True)               # (K, C)
    return dict(zip(prompt_ids.tolist(), means.unbind(0)))
