"""How visual prompts enter the sequence: on the patches they cover and on their ``<vp_k>`` text tokens.

:class:`PromptInputs` is mixed into :class:`pixelsail.model.PixelSail`. The paper's baseline adds each prompt's
pooled patch embedding to its tags; its improvement 2 (visual-prompt injection, ``vp_injection``) adds the tag's
embedding to the covered patches instead. The switches ``vp_text_pool``, ``vp_geometry`` and ``option_marks`` add to
either side (config.py names what each measured).
"""
from __future__ import annotations

import torch

from pixelsail.model.batch_inputs import vp_token_index
from pixelsail.model.option_marks import OptionMarker
from pixelsail.model.patch_embed import pooled_prompts, prompt_owner
from pixelsail.processing import ImageInputs


def per_tag(vectors: list[dict[int, torch.Tensor]], index: torch.Tensor, num_vp: int,
            like: torch.Tensor) -> torch.Tensor:
    """(B, L, C): at row b, position l, ``vectors[b][index[b, l]]``, zero where ``index`` is -1 or names a k that row
    has no vector for. ``index`` (B, L) long, a tag number per position; ``like`` gives dtype and device."""
    b, c = index.shape[0], like.shape[-1]
    # (B, num_vp + 1, C): row b, column k = vectors[b][k]; the last column, for "no tag", stays zero
    table = like.new_zeros(b, num_vp + 1, c)
    items = [(row, k, vec) for row, vecs in enumerate(vectors) for k, vec in vecs.items()]
    if items:
        rows_k = torch.tensor([(row, k) for row, k, _ in items], device=like.device).T
        table = table.index_put((rows_k[0], rows_k[1]), torch.stack([v for *_, v in items]).to(like.dtype))
    rows = torch.arange(b, device=like.device)[:, None]
    return table[rows, torch.where(index >= 0, index, num_vp)]


class PromptInputs:
    """The prompt paths of :class:`~pixelsail.model.PixelSail` (uses its config, processor, backbone embedding and
    the prompt modules it builds: ``prompt_injector``, ``vp_text_proj``, ``prompt_geometry``, ``option_embed``)."""

    def _vp_token_ids(self, device: torch.device) -> torch.Tensor:
        """(num_vp,) the ids of <vp_0> .. <vp_{num_vp-1}>."""
        return torch.tensor([self.processor.ids[f"vp_{k}"] for k in range(self.config.num_vp_tokens)], device=device)

    def _inject_prompts(self, raw: torch.Tensor, images: list[ImageInputs]) -> torch.Tensor:
        """raw (G, N, C) patch embeddings of G images sharing a grid -> the same with their prompts injected (and,
        with ``vp_geometry: patches``, each covered patch given its prompt's geometry vector)."""
        prompted = [j for j, im in enumerate(images) if im.prompt_ids.numel()]
        on_patches = self.config.vp_geometry == "patches"
        if (self.prompt_injector is None and not on_patches) or not prompted:
            return raw
        dev = self.device
        owner = torch.full(raw.shape[:2], -1, dtype=torch.long, device=dev)                  # (G, N)
        for j in prompted:
            owner[j] = prompt_owner(images[j].prompt_ids.to(dev), images[j].prompt_cover.to(dev))
        out = raw
        if self.prompt_injector is not None:
            out = self.prompt_injector(raw, owner, self.backbone.embed(self._vp_token_ids(dev)))
        if on_patches:
            vectors = [{} for _ in images]             # image j: {k: its <vp_k>'s geometry vector (C,)}
            for j in prompted:
                geometry = self.prompt_geometry(images[j].prompt_geometry.to(dev), raw[j].norm(dim=-1).mean())
                vectors[j] = dict(zip(images[j].prompt_ids.tolist(), geometry.to(raw.dtype).unbind(0)))
            out = out + per_tag(vectors, owner, self.config.num_vp_tokens, raw)
        return out

    def _text_prompts(self, raw: torch.Tensor, image: ImageInputs) -> dict[int, torch.Tensor]:
        """{k: (C,)} to add to the <vp_k> text tokens: each prompt's pooled patch embedding for the baseline, the same
        through ``vp_text_proj`` beside injection (``vp_text_pool``), plus its geometry's vector with ``vp_geometry:
        tags``; empty when none applies. Computed once per image."""
        if image.prompt_ids.numel() == 0:
            return {}
        out: dict[int, torch.Tensor] = {}
        if self._pools_text_prompts():
            out = pooled_prompts(raw, image.prompt_ids.to(self.device), image.prompt_cover.to(self.device))
            if self.vp_text_proj is not None:
                out = {k: self.vp_text_proj(vec) for k, vec in out.items()}
        if self.config.vp_geometry == "tags":
            ids = image.prompt_ids.to(self.device)
            tag_norms = self.backbone.embed(self._vp_token_ids(self.device)[ids]).norm(dim=-1)      # (K,)
            geometry = self.prompt_geometry(image.prompt_geometry.to(self.device), tag_norms).to(raw.dtype)  # (K, C)
            for k, vec in zip(image.prompt_ids.tolist(), geometry.unbind(0)):
                out[k] = out[k] + vec if k in out else vec
        return out

    def _pools_text_prompts(self) -> bool:
        return self.prompt_injector is None or bool(self.config.vp_text_pool)

    def _add_pooled_prompts(self, embeds: torch.Tensor, ids: torch.Tensor, pooled: dict | list[dict],
                            ends_before: int = 0) -> torch.Tensor:
        """Add ``pooled[k]`` (from :meth:`_text_prompts`) to the <vp_k> text tokens: every one for the baseline and
        ``vp_text_pool: tags``, those of assistant turns for ``answer`` (``ends_before``: <|im_end|> tokens before
        ``ids[..., 0]``; a turn after an odd number of them is the assistant's). ids (L,) with embeds (L, C) and one
        {k: (C,)}, or ids (B, L) with embeds (B, L, C) and one dict per row."""
        if ids.dim() == 1:
            return self._add_pooled_prompts(embeds[None], ids[None], [pooled], ends_before)[0]
        if not any(pooled):
            return embeds
        k_of = vp_token_index(ids, self._vp_token_ids(ids.device))                          # (B, L), -1: no tag
        if self.vp_text_proj is not None and self.config.vp_text_pool == "answer":
            ends = (ids == self.processor.ids["turn_end"]).long()
            in_answer = (torch.cumsum(ends, -1) - ends + ends_before) % 2 == 1
            k_of = torch.where(in_answer, k_of, -1)
        return embeds + per_tag(pooled, k_of, self.config.num_vp_tokens, embeds)

    def _add_option_marks(self, embeds: torch.Tensor, rows: list[list[int]], start: int = 0) -> torch.Tensor:
        """With ``option_marks``: add each token's option-letter vector. ``rows``: the whole token ids of each
        sequence, from its start; ``embeds`` (B, L, C) or (L, C) hold the tokens ``start:start + L`` of them."""
        if self.option_embed is None:
            return embeds
        if self._option_marker is None:
            self._option_marker = OptionMarker(self.processor.tokenizer, self._vp_token_ids("cpu").tolist())
        length = embeds.shape[-2]
        marks = torch.tensor([self._option_marker(r)[start:start + length] for r in rows], device=embeds.device)
        return self.option_embed(embeds, marks.reshape(embeds.shape[:-1]))


__all__ = ["PromptInputs", "per_tag"]
