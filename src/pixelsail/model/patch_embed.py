"""Raw patches -> embeddings added to <vpatch> tokens; visual prompts as injected or pooled embeddings."""
from __future__ import annotations

import torch
from torch import nn


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

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.proj(patches)


class PromptInjector(nn.Module):
    """Early fusion: each covered patch gets ``W_vp · E(<vp_k>)`` added (larger prompts first, smaller ones win)."""

    def __init__(self, *, hidden_size: int):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size, bias=False)

    def forward(self, patch_embeds: torch.Tensor, prompt_ids: torch.Tensor, prompt_cover: torch.Tensor,
                vp_embeds: torch.Tensor) -> torch.Tensor:
        """patch_embeds (N, C); prompt_ids (K,) sorted largest first; prompt_cover (K, N); vp_embeds (num_vp, C)."""
        if prompt_ids.numel() == 0:
            return patch_embeds
        owner = torch.full((patch_embeds.shape[0],), -1, dtype=torch.long, device=patch_embeds.device)
        for k, cover in zip(prompt_ids.tolist(), prompt_cover):
            owner[cover] = k
        covered = owner >= 0
        inject = self.proj(vp_embeds[owner[covered]])
        return patch_embeds.index_put((covered.nonzero(as_tuple=True)[0],), inject, accumulate=True)


def pooled_prompts(patch_embeds: torch.Tensor, prompt_ids: torch.Tensor, prompt_cover: torch.Tensor) -> dict[int, torch.Tensor]:
    """The plain baseline: each prompt is the mean patch embedding inside its coverage. Returns {k: (C,)}."""
    out = {}
    for k, cover in zip(prompt_ids.tolist(), prompt_cover):
        out[k] = patch_embeds[cover].mean(dim=0)
    return out
