"""The assembled Pixel-SAIL: one decoder over [image patches + text] that answers in text and masks."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase, Qwen2Config, Qwen2ForCausalLM

from pixelsail.config import DistillConfig, PixelSailConfig
from pixelsail.model.backbone import AttentionLayout, Backbone
from pixelsail.model.batch_inputs import (ImageGroup, batch_positions, first_question_ends, grid_groups,
                                          vision_lengths)
from pixelsail.model.distill import DistillAdapters
from pixelsail.model.generation import Generation, ImagePrefix, Response
from pixelsail.model.seg_queries import SegQueries
from pixelsail.model.mask_head import SegQuery, mask_logits, mask_losses
from pixelsail.model.image_skip import ImageSkip
from pixelsail.model.mask_prompts import PromptMaps
from pixelsail.model.option_marks import OptionEmbedding, OptionMarker
from pixelsail.model.patch_embed import PATCH_STEMS, ConvPatchEmbed, PatchEmbed, PromptInjector
from pixelsail.model.patch_position import PatchPosition
from pixelsail.model.prompt_geometry import VP_GEOMETRY, PromptGeometry
from pixelsail.model.pretrained import CONFIG_FILE, WEIGHTS_FILE, PretrainedIO
from pixelsail.model.image_readout import MaskFeatureReadout
from pixelsail.model.question_pool import QuestionPool, pool_sources
from pixelsail.model.set_matching import list_joiner_ids, matched_targets, seg_lists
from pixelsail.model.seg_box import SegBoxHead, seg_box_loss
from pixelsail.model.target_look import LOOK_SOURCES, MASK_WINDOWS, TargetLook
from pixelsail.model.seg_ordinal import SegOrdinalEmbedding, seg_ordinals
from pixelsail.model.upsampler import MaskFeatures
from pixelsail.model.visual_prompts import PromptInputs
from pixelsail.processing import IGNORE_INDEX, ImageInputs, Processor
from pixelsail.tokenizer import add_pixelsail_tokens

VP_TEXT_POOLS = ("", "tags", "answer")


@dataclass
class PixelSailOutput:
    loss: torch.Tensor
    losses: dict[str, torch.Tensor]


def build_llm(config: PixelSailConfig) -> Qwen2ForCausalLM:
    llm_cfg = Qwen2Config(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads, num_key_value_heads=config.num_key_value_heads,
        intermediate_size=config.intermediate_size, rope_theta=config.rope_theta, rms_norm_eps=config.rms_norm_eps,
        max_position_embeddings=config.max_position_embeddings, tie_word_embeddings=config.tie_word_embeddings,
        initializer_range=config.initializer_range,
    )
    return Qwen2ForCausalLM._from_config(llm_cfg, attn_implementation="sdpa")


class PixelSail(PretrainedIO, PromptInputs, Generation, SegQueries, nn.Module):
    """Pixel-SAIL. ``config.upsample`` / ``config.vp_injection`` / ``config.distill.enabled`` switch the paper's three
    improvements; all off is the plain baseline of the ablation. This file builds the model and trains it
    (:meth:`embed_batch`, :meth:`forward`); the visual prompts' paths are in
    :mod:`pixelsail.model.visual_prompts`, answering in :mod:`pixelsail.model.generation`, the [SEG] queries in
    :mod:`pixelsail.model.seg_queries`."""

    def __init__(self, config: PixelSailConfig, tokenizer: PreTrainedTokenizerBase, llm: nn.Module | None = None):
        super().__init__()
        add_pixelsail_tokens(tokenizer, config.num_vp_tokens)
        self.processor = Processor(tokenizer, config)
        config.token_ids = dict(self.processor.ids)
        if llm is None:
            config.vocab_size = max(config.vocab_size, len(tokenizer))
            llm = build_llm(config)
        elif llm.get_input_embeddings().num_embeddings < len(tokenizer):
            raise ValueError(f"the LLM has {llm.get_input_embeddings().num_embeddings} embeddings but the tokenizer "
                             f"has {len(tokenizer)} tokens; resize the embeddings first")
        self.config = config
        self.backbone = Backbone(llm, config.attn_implementation, text_only_heads=config.text_only_heads)
        hidden = self.backbone.hidden_size
        embed_std = float(self.backbone.llm.get_input_embeddings().weight.detach().float().std())
        for name in ("mask_min_area", "no_target_check_min_area"):
            if not 0.0 <= getattr(config, name) < 1.0:
                raise ValueError(f"{name} is a share of the image in [0, 1), got {getattr(config, name)}")
        if config.patch_stem not in PATCH_STEMS:
            raise ValueError(f"patch_stem must be one of {PATCH_STEMS}, got {config.patch_stem!r}")
        stem = ConvPatchEmbed if config.patch_stem == "conv" else PatchEmbed
        self.patch_embed = stem(patch_size=config.patch_size, hidden_size=hidden, output_std=embed_std)
        self.patch_position = PatchPosition(hidden_size=hidden) if config.patch_position else None
        self.prompt_injector = PromptInjector(hidden_size=hidden) if config.vp_injection else None
        # beside injection, the tag's pooled region enters through a zero-initialised projection: the <vp_k> token
        # starts as its plain embedding (copying the tag into the answer must not get harder) and learns to use it
        if config.vp_text_pool not in VP_TEXT_POOLS:
            raise ValueError(f"vp_text_pool must be one of {VP_TEXT_POOLS}, got {config.vp_text_pool!r}")
        self.vp_text_proj = nn.Linear(hidden, hidden, bias=False) if config.vp_injection and config.vp_text_pool else None
        if self.vp_text_proj is not None:
            nn.init.zeros_(self.vp_text_proj.weight)
        if config.vp_geometry not in VP_GEOMETRY:
            raise ValueError(f"vp_geometry must be one of {VP_GEOMETRY}, got {config.vp_geometry!r}")
        self.prompt_geometry = PromptGeometry(hidden_size=hidden) if config.vp_geometry else None
        self.mask_features = MaskFeatures(hidden_size=hidden, patch_size=config.patch_size, mask_dim=config.mask_dim,
                                          upsample=config.upsample, stride=config.upsample_stride,
                                          max_width=config.upsample_max_width, position=config.mask_position)
        self.mask_prompts = (PromptMaps(num_vp_tokens=config.num_vp_tokens, mask_dim=config.mask_dim)
                             if config.mask_prompts else None)
        self.image_skip = (ImageSkip(patch_size=config.patch_size, stride=self.mask_features.stride,
                                     mask_dim=config.mask_dim) if config.mask_image_skip else None)
        self.option_embed = OptionEmbedding(hidden_size=hidden) if config.option_marks else None
        self._option_marker: OptionMarker | None = None   # built on first use (decodes every token id once)
        self.pool_sources = pool_sources(config.seg_query_pool)
        self.question_pool = QuestionPool(hidden_size=hidden) if self.pool_sources else None
        # "embedding+hidden": a second pool over the question's final states, which the mask loss may train (an
        # image-aware route for relations) while the first keeps the words themselves
        self.hidden_pool = QuestionPool(hidden_size=hidden) if len(self.pool_sources) == 2 else None
        self.image_readout = (MaskFeatureReadout(hidden_size=hidden, mask_dim=config.mask_dim)
                              if config.seg_query_image_read else None)
        self.seg_query = SegQuery(hidden_size=hidden * (1 + len(self.pool_sources))
                                  + (config.mask_dim if self.image_readout is not None else 0),
                                  mask_dim=config.mask_dim, standardize=config.seg_query_norm)
        self.seg_bow = nn.Linear(hidden, hidden, bias=False) if config.seg_bow_weight > 0 else None
        if config.seg_box_weight < 0:
            raise ValueError(f"seg_box_weight is a loss weight (>= 0), got {config.seg_box_weight}")
        self.seg_box = SegBoxHead(hidden_size=hidden) if config.seg_box_weight > 0 else None
        if config.seg_query_look not in LOOK_SOURCES:
            raise ValueError(f"seg_query_look must be one of {LOOK_SOURCES}, got {config.seg_query_look!r}")
        if config.seg_query_look == "box" and self.seg_box is None:
            raise ValueError("seg_query_look: box reads where the box head puts the target: set seg_box_weight > 0")
        self.target_look = TargetLook(mask_dim=config.mask_dim) if config.seg_query_look else None
        if config.seg_look_first_weight < 0 or (config.seg_look_first_weight > 0 and self.target_look is None):
            raise ValueError(f"seg_look_first_weight ({config.seg_look_first_weight}) is a loss weight (>= 0) for the "
                             "first mask of seg_query_look, which is off")
        if config.seg_look_rounds < 1 or (config.seg_look_rounds > 1 and config.seg_query_look not in MASK_WINDOWS):
            raise ValueError(f"seg_look_rounds ({config.seg_look_rounds}) counts the rounds of seg_query_look mask or "
                             f"core (>= 1; more than one needs a mask window, got {config.seg_query_look!r})")
        # the tokens that join the [SEG]s of one list ("Sure, [SEG], [SEG] and [SEG]."), whose targets are matched
        self.list_joiners = (list_joiner_ids(self.processor.encode, self.processor.ids["seg"])
                             if config.mask_set_matching or config.seg_list_ordinal else frozenset())
        self.seg_ordinal = SegOrdinalEmbedding(hidden_size=hidden) if config.seg_list_ordinal else None
        self.distill = (DistillAdapters(teachers=config.distill.teachers, mask_dim=config.mask_dim, hidden_size=hidden)
                        if config.distill.enabled else None)
        self.vision_prefill_count = 0
        self.inference_dtype: torch.dtype | None = None  # e.g. torch.bfloat16 to autocast generation

    # ----------------------------------------------------------------------------------------------- helpers
    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.processor.tokenizer

    @property
    def device(self) -> torch.device:
        return self.patch_embed.proj.weight.device

    def gradient_checkpointing_enable(self) -> None:
        llm = self.backbone.llm
        if hasattr(llm, "activation_checkpointing_enable"):  # transformers >= 5.2x
            llm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def _patch_embeds(self, image: ImageInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (embeddings to add to the <vpatch> tokens (N, C), raw patch embeddings (N, C))."""
        raw = self._raw_patch_embeds(image.patches, image.grid)
        return self._inject_prompts(raw[None], [image])[0], raw

    def _raw_patch_embeds(self, patches: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """patches ([G,] N, 3*P*P) -> ([G,] N, C): the patch embedding (+ its absolute position, with the switch)."""
        raw = self.patch_embed(patches.to(self.device, self.patch_embed.proj.weight.dtype), grid)
        if self.patch_position is not None:
            raw = raw + self.patch_position(grid).to(raw.dtype)
        return raw

    def _vision_grid(self, hidden: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """hidden (L, C) of one sequence -> its patch states as a (C, gh, gw) map."""
        return self._patch_maps(hidden[None], [0], grid)[0]

    @staticmethod
    def _patch_maps(hidden: torch.Tensor, rows: list[int], grid: tuple[int, int]) -> torch.Tensor:
        """hidden (B, L, C) -> the patch states of ``rows`` (all with patch grid ``grid``) as (G, C, gh, gw) maps."""
        gh, gw = grid
        # (G, L, C) -> patch states (G, N, C) -> (G, C, N) -> (G, C, gh, gw)
        states = hidden[torch.tensor(rows, device=hidden.device), 1:1 + gh * gw]
        return states.transpose(1, 2).reshape(len(rows), -1, gh, gw)

    def _add_token_marks(self, embeds: torch.Tensor, rows: list[list[int]], start: int = 0) -> torch.Tensor:
        """The vectors that depend on a token's text before it: option letters (``option_marks``) and a ``[SEG]``'s
        place in its list (``seg_list_ordinal``). ``rows``: each sequence's token ids from its start; ``embeds``
        (B, L, C) or (L, C) hold the tokens ``start:start + L`` of them."""
        embeds = self._add_option_marks(embeds, rows, start)
        if self.seg_ordinal is None:
            return embeds
        length = embeds.shape[-2]
        ordinals = torch.tensor([seg_ordinals(r, self.processor.ids["seg"], self.list_joiners)[start:start + length]
                                 for r in rows], device=embeds.device)
        return self.seg_ordinal(embeds, ordinals.reshape(embeds.shape[:-1]))

    @property
    def marks_tokens(self) -> bool:
        """Whether a generated token's embedding depends on the text before it (:meth:`_add_token_marks`)."""
        return self.option_embed is not None or self.seg_ordinal is not None

    # ----------------------------------------------------------------------------------------------- training
    def embed_batch(self, input_ids: torch.Tensor, images: list) -> tuple[torch.Tensor, torch.Tensor, AttentionLayout]:
        """Token embeddings with patches (and prompts) added, 3-axis positions (3, B, L) and the attention layout.

        Batched per patch grid (:mod:`pixelsail.model.batch_inputs`): one patch embedding, one injection and one
        scatter onto the <vpatch> tokens per grid, not per sample.
        """
        dev = self.device
        seq_len = input_ids.shape[1]
        embeds = self.backbone.embed(input_ids)                                             # (B, L, C)
        rows, cols, values = [], [], []          # (batch row, token) of each patch and what it gets added
        pooled = [{} for _ in images]
        for group in grid_groups(images):
            n, members = group.num_patches, [images[i] for i in group.rows]
            raw = self._raw_patch_embeds(torch.stack([im.patches for im in members]), group.grid)   # (G, N, C)
            inject = self._inject_prompts(raw, members)
            rows.append(torch.tensor(group.rows, device=dev).repeat_interleave(n))
            cols.append(torch.arange(1, n + 1, device=dev).repeat(len(group.rows)))
            values.append(inject.reshape(-1, inject.shape[-1]))
            for j, i in enumerate(group.rows):
                pooled[i] = self._text_prompts(raw[j], members[j])
        if values:
            embeds = embeds.index_put((torch.cat(rows), torch.cat(cols)), torch.cat(values).to(embeds.dtype),
                                      accumulate=True)
        embeds = self._add_token_marks(self._add_pooled_prompts(embeds, input_ids, pooled), input_ids.tolist())
        return embeds, batch_positions(images, seq_len, dev), self.layout(input_ids, vision_lengths(images))

    def layout(self, input_ids: torch.Tensor, vision_lens: torch.Tensor) -> AttentionLayout:
        """Who attends to whom in whole sequences (B, L) that start with their vision blocks."""
        if not self.config.vision_reads_question:
            return AttentionLayout(vision_lens)
        sees = first_question_ends(input_ids, vision_lens, self.processor.ids["turn_end"])
        return AttentionLayout(vision_lens, vision_sees=sees.cpu())

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor, images: list,
                masks: list[torch.Tensor], teacher_features: list[dict] | None = None) -> PixelSailOutput:
        dev = self.device
        input_ids, labels = input_ids.to(dev), labels.to(dev)
        embeds, positions, layout = self.embed_batch(input_ids, images)
        hidden = self.backbone(embeds, positions, layout)

        # language modelling: next-token loss on answer tokens only (logits only where needed)
        shift_labels = labels[:, 1:]
        supervised = shift_labels != IGNORE_INDEX
        logits = self.backbone.logits(hidden[:, :-1][supervised])
        lm = F.cross_entropy(logits.float(), shift_labels[supervised]) if supervised.any() else logits.sum() * 0.0

        # masks: one query per [SEG] in the answers, dotted with its image's per-pixel features
        losses: dict[str, torch.Tensor] = {}
        with_image = torch.tensor([im is not None for im in images], device=dev)[:, None]
        # in a text-only sample [SEG] is an ordinary token (the language warm-up): no mask, no query
        seg = (input_ids == self.processor.ids["seg"]) & (labels != IGNORE_INDEX) & with_image
        grouped = self._grouped_mask_features(hidden, images)
        num_masks = sum(int(m.shape[0]) for m in masks)
        touch = self._touch_all_parameters()
        if num_masks:
            counts = seg.sum(dim=1).tolist()
            for i, m in enumerate(masks):
                if counts[i] != m.shape[0]:
                    raise ValueError(f"sample {i}: {counts[i]} [SEG] tokens in the answer but {m.shape[0]} masks")
            seg_b, seg_t = seg.nonzero(as_tuple=True)
            text_start = layout.vision_lens.to(dev)
            per_grid = self._features_per_query(seg_b, grouped, len(masks))
            seg_id = self.processor.ids["seg"]
            lists = seg_lists(input_ids, seg_b, seg_t, seg_id, self.list_joiners) if self.list_joiners else []
            first_weight = self.config.seg_look_first_weight
            # (M, mask_dim), ordered by sample then position
            queries = self.seg_queries(hidden, input_ids, text_start, seg_b, seg_t,
                                       features=[(picked, feats) for _, picked, feats in per_grid],
                                       with_first=first_weight > 0)
            queries, first = queries if first_weight > 0 else (queries, None)
            if self.seg_bow is not None:
                losses["seg_bow"] = self.seg_bow_loss(hidden, input_ids, text_start, seg_b, seg_t)
            losses["mask_bce"], losses["mask_dice"], assigned = self._mask_losses(queries, per_grid, masks, num_masks,
                                                                                  lists)
            if first is not None:   # the look's first mask scored too (deep supervision, as Mask2Former's layers)
                losses["first_mask"] = sum(self._mask_losses(first, per_grid, masks, num_masks, lists)[:2])
            if self.seg_box is not None:
                losses["seg_box"] = seg_box_loss(self.seg_box(hidden[seg_b, seg_t]), masks, assigned)
            lm_weight = self.config.lm_weight_with_masks
        else:
            lm_weight = self.config.lm_weight_without_masks
        losses["lm"] = lm
        total = lm_weight * lm + touch
        if num_masks:
            total = total + self.config.mask_bce_weight * losses["mask_bce"] + self.config.mask_dice_weight * losses["mask_dice"]
        if "seg_bow" in losses:
            total = total + self.config.seg_bow_weight * losses["seg_bow"]
        if "seg_box" in losses:
            total = total + self.config.seg_box_weight * losses["seg_box"]
        if "first_mask" in losses:
            total = total + self.config.seg_look_first_weight * losses["first_mask"]
        if self.distill is not None and teacher_features:
            features = {i: f for group, feats in grouped for i, f in zip(group.rows, feats.unbind(0))}
            distill = self.distill_losses(hidden, images, features, teacher_features)
            losses.update(distill)
            total = total + self.config.distill.weight * sum(distill.values())
        return PixelSailOutput(loss=total, losses={k: torch.as_tensor(v).detach() for k, v in losses.items()})

    def distill_losses(self, hidden: torch.Tensor, images: list, features: dict[int, torch.Tensor],
                       teacher_features: list[dict]) -> dict[str, torch.Tensor]:
        """{"distill_<teacher>": MSE averaged over the batch's images} (an image without teacher maps counts as 0).

        Images sharing a grid and teacher map shapes go through the adapters as one batch (the mean of equal-sized
        per-image MSEs is the MSE of their stack).
        """
        with_image = [i for i, im in enumerate(images) if im is not None]
        groups: dict[tuple, list[int]] = {}
        for i in with_image:
            if teacher_features[i]:
                shapes = tuple(sorted((name, tuple(t.shape)) for name, t in teacher_features[i].items()))
                groups.setdefault((tuple(images[i].grid), shapes), []).append(i)
        losses: dict[str, torch.Tensor] = {}
        for (grid, shapes), rows in groups.items():
            student = {"upsampled": torch.stack([features[i] for i in rows]),
                       "vision_tokens": self._patch_maps(hidden, rows, grid)}
            teacher = {name: torch.stack([teacher_features[i][name] for i in rows]) for name, _ in shapes}
            for name, value in self.distill(student, teacher).items():
                losses[f"distill_{name}"] = losses.get(f"distill_{name}", 0.0) + value * len(rows) / len(with_image)
        return losses

    def _touch_all_parameters(self) -> torch.Tensor | float:
        """Zero that depends on every parameter, so DDP sees a gradient for each even when a batch has no masks,
        prompts or teacher maps. Only under multi-process training: in one process it would cost a fill per
        parameter per step (a fifth of a shapes-tiny step)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return 0.0
        return sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0

    @staticmethod
    def _features_per_query(seg_b: torch.Tensor, grouped: list[tuple[ImageGroup, torch.Tensor]], batch_size: int
                            ) -> list[tuple[ImageGroup, torch.Tensor, torch.Tensor]]:
        """Per patch grid with queries: (its group, the indices into seg_b (M,) of the queries whose images have it,
        each such query's image mask features (M_g, mask_dim, h, w)). seg_b: the batch row of each query (sorted);
        grouped: :meth:`_grouped_mask_features`."""
        dev = seg_b.device
        slot = torch.full((batch_size,), -1, dtype=torch.long, device=dev)  # batch row -> index in its grid group
        out = []
        for group, feats in grouped:
            rows = torch.tensor(group.rows, device=dev)
            slot[rows] = torch.arange(len(group.rows), device=dev)
            picked = torch.isin(seg_b, rows).nonzero(as_tuple=True)[0]
            if len(picked):
                out.append((group, picked, feats.index_select(0, slot[seg_b[picked]])))
        return out

    def _mask_losses(self, queries: torch.Tensor, per_grid: list[tuple[ImageGroup, torch.Tensor, torch.Tensor]],
                     masks: list[torch.Tensor], num_masks: int, lists: list[list[int]] = ()
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Point-sampled BCE and Dice of every query (M, mask_dim) against its target, one call per patch grid
        (per_grid: :meth:`_features_per_query`); within each list of ``lists`` (query indices, ``mask_set_matching``)
        the targets are assigned by :func:`matched_targets` instead of in the data's order. Also returns, per query,
        the index of the target it was scored against (M,) in the order of ``torch.cat(masks)``."""
        dev = queries.device
        bce, dice = queries.new_zeros((), dtype=torch.float32), queries.new_zeros((), dtype=torch.float32)
        assigned = torch.arange(len(queries), device=dev)
        for group, picked, feats in per_grid:
            # (M_g, mask_dim) . (M_g, mask_dim, h, w): each query against its own image's features
            logits = mask_logits(queries[picked], feats)
            targets = torch.cat([masks[i] for i in group.rows]).to(dev)                     # (M_g, H, W)
            if lists:
                local = {q: j for j, q in enumerate(picked.tolist())}
                mine = [[local[q] for q in members] for members in lists if members[0] in local]
                order = matched_targets(logits, targets, mine)
                targets = targets[order]
                assigned[picked] = picked[order.to(dev)]
            b, d = mask_losses(logits, targets, num_points=self.config.mask_num_points,
                               oversample=self.config.mask_oversample_ratio,
                               importance=self.config.mask_importance_ratio, num_masks=num_masks)
            bce, dice = bce + b, dice + d
        return bce, dice, assigned

    def _grouped_mask_features(self, hidden: torch.Tensor, images: list) -> list[tuple[ImageGroup, torch.Tensor]]:
        """Per patch grid: its rows and their upsampled features (G, mask_dim, h, w), one upsampler call each."""
        out = []
        for group in grid_groups(images):
            maps = self._patch_maps(hidden, group.rows, group.grid)
            out.append((group, self._mask_maps(maps, [images[i] for i in group.rows])))
        return out

    def _mask_maps(self, maps: torch.Tensor, images: list[ImageInputs]) -> torch.Tensor:
        """(G, hidden, gh, gw) patch-state maps of G images sharing a grid -> (G, mask_dim, h, w) mask features
        (with ``mask_prompts``, plus each pixel's prompt vectors; with ``mask_image_skip``, plus its pixels')."""
        features = self.mask_features(maps)
        if self.image_skip is not None:
            features = features + self.image_skip(images).to(features.dtype)
        if self.mask_prompts is not None:
            features = features + self.mask_prompts(images, maps.shape[-2:], features.shape[-2:]).to(features.dtype)
        return features

    def _mask_features_batch(self, hidden: torch.Tensor, images: list, idx: list[int]) -> dict[int, torch.Tensor]:
        """{batch row: (mask_dim, h, w)} for the rows ``idx`` (see :meth:`_grouped_mask_features`)."""
        keep = set(idx)
        chosen = [im if i in keep else None for i, im in enumerate(images)]
        return {i: f for group, feats in self._grouped_mask_features(hidden, chosen)
                for i, f in zip(group.rows, feats.unbind(0))}


__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "PixelSail", "PixelSailOutput", "ImagePrefix", "Response", "DistillConfig",
           "build_llm"]
