"""Answering with a trained Pixel-SAIL: an image run once into a KV cache, then greedy answers and their masks.

:class:`Generation` is mixed into :class:`pixelsail.model.PixelSail` (as ``GenerationMixin`` is into transformers'
models): it holds the inference path and uses the model's own embedding, backbone and mask head.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from pixelsail.model.backbone import AttentionLayout, KVCache
from pixelsail.model.batch_inputs import text_positions, vision_positions
from pixelsail.model.mask_head import MASK_THRESHOLD, mask_logits, mask_probabilities
from pixelsail.model.option_choice import OptionConstraint
from pixelsail.processing import ImageInputs
from pixelsail.tokens import NO_TARGET_ANSWER, SEG

# the answer a "No target." is checked with (model.no_target_check): the list a referring answer opens with
NO_TARGET_CHECK_PREFIX = f"Sure, {SEG}"


@dataclass
class ImagePrefix:
    """An image (with its visual prompts) run once through the model; reused for every question about it."""

    image: ImageInputs
    prompts: tuple[int, ...]
    cache: KVCache
    features: torch.Tensor               # (1, mask_dim, h, w) per-pixel mask embeddings
    pooled: dict[int, torch.Tensor]      # what each <vp_k> text token gets added {k: (C,)} (see _text_prompts)
    next_position: int                   # 1-D position of the first text token
    length: int                          # tokens in the cache


@dataclass
class Response:
    text: str
    masks: list[np.ndarray] = field(default_factory=list)       # (H, W) bool at the original image size
    mask_scores: list[float] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    restricted: bool = False   # the answer was restricted to the question's options (option_decoding)
    rechecked: bool = False    # a "No target." overruled by the masks of "Sure, [SEG]" (no_target_check)


class Generation:
    """Inference for :class:`~pixelsail.model.PixelSail`: :meth:`prefill_image` once per image (and its prompts),
    then :meth:`respond` per question; :meth:`text_logits` for text alone."""

    def _autocast(self):
        if self.inference_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.inference_dtype)

    def _vision_inputs(self, image: ImageInputs) -> tuple[torch.Tensor, torch.Tensor, int, dict[int, torch.Tensor]]:
        dev = self.device
        ids = torch.tensor(self.processor.vision_block_ids(image.grid), device=dev)
        n = image.grid[0] * image.grid[1]
        embeds = self.backbone.embed(ids)
        inject, raw = self._patch_embeds(image)
        embeds = torch.cat([embeds[:1], embeds[1:1 + n] + inject, embeds[1 + n:]])
        pos, next_pos = vision_positions(image.grid, dev)
        return embeds, pos, next_pos, self._text_prompts(raw, image)

    @torch.no_grad()
    def prefill_image(self, image: np.ndarray, prompts: dict[int, np.ndarray] | None = None) -> ImagePrefix:
        """Run ``<vision> patches </vision>`` once (bidirectionally) and keep its KV cache and mask features."""
        inputs = self.processor.image_inputs(image, prompts)
        with self._autocast():
            embeds, pos, next_pos, pooled = self._vision_inputs(inputs)
            cache = KVCache()
            v = embeds.shape[0]
            hidden = self.backbone(embeds[None], pos[:, None], AttentionLayout(torch.tensor([v])), cache)
            features = self._prefix_features(hidden[0], inputs)
        return ImagePrefix(inputs, tuple(sorted((prompts or {}).keys())), cache, features, pooled, next_pos, v)

    def _prefix_features(self, hidden: torch.Tensor, image: ImageInputs) -> torch.Tensor:
        """The mask features (1, mask_dim, h, w) of one image pass, hidden (L, C) starting with its vision block."""
        features = self._mask_maps(self._vision_grid(hidden, image.grid)[None], [image])
        self.vision_prefill_count += 1
        if self.inference_dtype is not None:  # cast once here, not on every question's mask product
            features = features.to(self.inference_dtype)
        return features

    @torch.no_grad()
    def respond(self, prefix: ImagePrefix, question: str, history: list[tuple[str, str]] = (),
                max_new_tokens: int = 64, answer_prefix: str = "", use_cache: bool = True) -> Response:
        """Greedy answer to ``question`` about the prefixed image; one mask per [SEG] in the answer.

        With ``no_target_check`` a free answer of "No target." is asked again, begun as "Sure, [SEG]", and the
        masks decide: if one survives the area floor (and covers ``no_target_check_min_area`` of the image) that
        answer stands, else "No target." does."""
        resp = self._answer(prefix, question, history, max_new_tokens, answer_prefix, use_cache)
        return resp if answer_prefix else self._check_no_target(resp, prefix, question, history, max_new_tokens,
                                                                use_cache)

    @torch.no_grad()
    def _check_no_target(self, resp: Response, prefix: ImagePrefix, question: str, history: list[tuple[str, str]],
                         max_new_tokens: int, use_cache: bool = True) -> Response:
        """``resp`` (a free answer), or with ``no_target_check`` the answer begun "Sure, [SEG]" where ``resp`` says
        "No target." and a mask of that answer survives the area floor (and covers ``no_target_check_min_area``)."""
        if not self.config.no_target_check or resp.text.strip() != NO_TARGET_ANSWER:
            return resp
        found = self._answer(prefix, question, history, max_new_tokens, NO_TARGET_CHECK_PREFIX, use_cache)
        h, w = prefix.image.orig_size
        least = max(self.config.no_target_check_min_area * h * w, 1)
        return replace(found, rechecked=True) if any(m.sum() >= least for m in found.masks) else resp

    def _answer(self, prefix: ImagePrefix, question: str, history: list[tuple[str, str]], max_new_tokens: int,
                answer_prefix: str, use_cache: bool) -> Response:
        proc = self.processor
        ids = proc.prompt_ids(question, history, answer_prefix)
        answer_start = len(ids) - len(proc.encode(answer_prefix)) if answer_prefix else len(ids)
        seg_id, end_id = proc.ids["seg"], proc.ids["turn_end"]
        choice = self.option_constraint(question) if not answer_prefix else None
        chunks: list[torch.Tensor] = []   # hidden states of every fed text token, in order
        seg_at: list[int] = []            # positions in ids of the answer's [SEG] tokens
        try:
            with self._autocast():
                fed_from, new = 0, ids
                # with vision_reads_question the image is run again beside this question (its own cache)
                hidden = None
                if self.config.vision_reads_question:
                    prefix, hidden = self._read_question(prefix, ids)
                for step in range(max_new_tokens + 1):
                    if hidden is None:
                        hidden = self._run_text(prefix, ids, fed_from, use_cache)  # (len(new), C)
                    chunks.append(hidden)
                    seg_at += [fed_from + j for j, tok in enumerate(new) if tok == seg_id and fed_from + j >= answer_start]
                    logits = self.backbone.logits(hidden[-1:])[0]   # (V,)
                    nxt = choice.pick(logits, ids[answer_start:]) if choice else int(logits.argmax())
                    if nxt == end_id or step == max_new_tokens:
                        break
                    fed_from, new, hidden = len(ids), [nxt], None
                    ids = ids + new
                masks, scores = self._masks_from(torch.cat(chunks), ids, seg_at, prefix)
        finally:
            prefix.cache.truncate(prefix.length)
        answer_ids = ids[answer_start:]
        text = proc.tokenizer.decode(answer_ids, skip_special_tokens=False)
        return Response(text=text, masks=masks, mask_scores=scores, token_ids=answer_ids, restricted=choice is not None)

    def option_constraint(self, question: str) -> OptionConstraint | None:
        """With ``option_decoding``: the answers a multiple-choice ``question`` allows (None: answer freely)."""
        return OptionConstraint.from_question(self.processor, question) if self.config.option_decoding else None

    def _text_inputs(self, prefix: ImagePrefix, ids: list[int], start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings (T, C) and 3-axis positions (3, T) of the text tokens ``ids[start:]`` after the image."""
        dev = self.device
        ids_t = torch.tensor(ids[start:], device=dev)
        ends_before = ids[:start].count(self.processor.ids["turn_end"])
        embeds = self._add_pooled_prompts(self.backbone.embed(ids_t), ids_t, prefix.pooled, ends_before)
        embeds = self._add_token_marks(embeds, [ids], start)
        return embeds, text_positions(prefix.next_position + start, len(ids_t), dev)

    def _whole_sequence(self, prefix: ImagePrefix, ids: list[int], cache: KVCache | None = None) -> torch.Tensor:
        """Hidden states (V + T, C) of the image followed by the text ``ids``, computed in one pass."""
        embeds, pos = self._text_inputs(prefix, ids, 0)
        v_embeds, v_pos, _, _ = self._vision_inputs(prefix.image)
        full = torch.cat([v_embeds, embeds])[None]
        full_pos = torch.cat([v_pos, pos], dim=1)[:, None]
        full_ids = torch.tensor(self.processor.vision_block_ids(prefix.image.grid) + ids, device=self.device)[None]
        return self.backbone(full, full_pos, self.layout(full_ids, torch.tensor([prefix.length])), cache)[0]

    def _read_question(self, prefix: ImagePrefix, ids: list[int]) -> tuple[ImagePrefix, torch.Tensor]:
        """With ``vision_reads_question``: the image and the prompt ``ids`` in one pass, so that the patches see the
        question; returns this question's prefix (own cache and mask features) and the prompt's states (T, C)."""
        cache = KVCache()
        hidden = self._whole_sequence(prefix, ids, cache)
        features = self._prefix_features(hidden, prefix.image)
        return replace(prefix, cache=cache, features=features), hidden[prefix.length:]

    def _run_text(self, prefix: ImagePrefix, ids: list[int], fed_from: int, use_cache: bool) -> torch.Tensor:
        """Hidden states (T, C) of the text tokens ``ids[fed_from:]`` that follow the image.

        With the cache only those tokens are computed; without it the whole sequence, image included, is recomputed
        (the reference the cached path must match).
        """
        if use_cache:
            embeds, pos = self._text_inputs(prefix, ids, fed_from)
            layout = AttentionLayout(torch.tensor([prefix.length]), past_len=len(prefix.cache))
            return self.backbone(embeds[None], pos[:, None], layout, prefix.cache)[0]
        return self._whole_sequence(prefix, ids)[prefix.length + fed_from:]

    def _masks_from(self, text_hidden: torch.Tensor, ids: list[int], seg_at: list[int],
                    prefix: ImagePrefix) -> tuple[list[np.ndarray], list[float]]:
        """One mask per [SEG] at ``seg_at`` (positions in the text ``ids``, hidden states text_hidden (T, C))."""
        if not seg_at:
            return [], []
        h, w = prefix.image.orig_size
        dev = text_hidden.device
        n = text_hidden.shape[0]
        seg_t = torch.tensor(seg_at, device=dev)
        feats = prefix.features.expand(len(seg_at), -1, -1, -1)
        queries, first = self.seg_queries(text_hidden[None], torch.tensor(ids[:n], device=dev)[None],
                                          torch.zeros(1, dtype=torch.long, device=dev), torch.zeros_like(seg_t), seg_t,
                                          features=feats, with_first=True)
        logits = mask_logits(queries, feats).float()
        probs = mask_probabilities(logits, (h, w))
        masks = probs > MASK_THRESHOLD                                                   # (S, H, W)
        if self.config.mask_min_area > 0:   # a few stray pixels are no object: return them as an empty mask
            floor = self.config.mask_min_area * h * w
            masks &= (masks.flatten(1).sum(1) >= floor)[:, None, None]
            if self.target_look is not None:
                # ... also where the query's first mask, the one its look read, was stray pixels: the look would
                # grow them into whatever resembles them (absent targets then got masks, docs/TRAINING.md session 35)
                first_found = mask_probabilities(mask_logits(first, feats).float(), (h, w)) > MASK_THRESHOLD
                masks &= (first_found.flatten(1).sum(1) >= floor)[:, None, None]
        scores = [float(p[m].mean()) if m.any() else 0.0 for p, m in zip(probs, masks)]
        return [m.cpu().numpy() for m in masks], scores

    @torch.no_grad()
    def text_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits of a plain text batch (B, L) with 1-D positions and causal attention (no image)."""
        input_ids = input_ids.to(self.device)
        b, seq_len = input_ids.shape
        pos = text_positions(0, seq_len, self.device)[:, None].expand(3, b, seq_len)
        hidden = self.backbone(self.backbone.embed(input_ids), pos, AttentionLayout(torch.zeros(b, dtype=torch.long)))
        return self.backbone.logits(hidden)


__all__ = ["Generation", "ImagePrefix", "Response"]
