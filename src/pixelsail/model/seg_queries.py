"""How each ``[SEG]`` becomes a mask query: the paper's MLP of the ``[SEG]`` state, and the read-outs the switches add
(the question's words, the image, the target's look), plus the ``seg_bow`` auxiliary loss on the same state.

A mixin of :class:`~pixelsail.model.pixelsail.PixelSail`, which builds the modules it uses (``seg_query``,
``question_pool``, ``hidden_pool``, ``image_readout``, ``target_look``, ``seg_box``, ``seg_bow``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pixelsail.model.mask_head import mask_logits
from pixelsail.model.question_pool import question_key_mask
from pixelsail.model.target_look import MASK_WINDOWS, box_window


class SegQueries:
    """The [SEG] queries and the seg_bow loss of :class:`~pixelsail.model.pixelsail.PixelSail`."""

    def seg_queries(self, hidden: torch.Tensor, input_ids: torch.Tensor, text_start: torch.Tensor,
                    seg_b: torch.Tensor, seg_t: torch.Tensor,
                    features: torch.Tensor | list[tuple[torch.Tensor, torch.Tensor]] | None = None,
                    with_first: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Mask queries (M, mask_dim) of the [SEG] tokens at (seg_b, seg_t) of hidden (B, L, C) / input_ids (B, L).

        The paper's query is an MLP of the [SEG] state; with ``seg_query_pool`` the MLP also sees an attention
        read-out of the question that [SEG] answers (text_start (B,): where each sequence's text begins), and with
        ``seg_query_image_read`` one of the mask features of its image: ``features`` (M, mask_dim, h, w), one map per
        query, or [(query indices, their maps)] when the batch's images differ in size
        (:meth:`PixelSail._features_per_query`); with ``seg_query_look`` the features where its target is thought to
        be are added to the query (``with_first`` also returns the query before that, whose mask the look read).
        With ``seg_query_stop_grad`` the mask loss does not reach the [SEG] states themselves.
        """
        states = hidden[seg_b, seg_t]
        if self.config.seg_query_stop_grad:
            states = states.detach()
        inputs, asker = [states], states
        if self.question_pool is not None:
            seg_id = self.processor.ids["seg"] if self.config.seg_query_reads_answer else None
            keys = question_key_mask(input_ids, self.processor.ids["turn_end"], text_start, seg_b, seg_t, seg_id)
            pools = (self.question_pool, self.hidden_pool)
            reads = [pool(states, hidden[seg_b] if source == "hidden" else self.backbone.embed(input_ids[seg_b]), keys)
                     for pool, source in zip(pools, self.pool_sources)]
            inputs += reads
            asker = states + sum(reads)
        if (self.image_readout is not None or self.target_look is not None) and features is None:
            raise ValueError("seg_query_image_read / seg_query_look: the queries need their images' mask features")
        if isinstance(features, torch.Tensor):
            features = [(torch.arange(len(seg_b), device=seg_b.device), features)]
        if self.image_readout is not None:
            seen = asker.new_zeros(len(seg_b), self.config.mask_dim)
            for rows, maps in features:
                seen[rows] = self.image_readout(asker[rows], maps)
            inputs.append(seen)
        queries = first = self.seg_query(torch.cat(inputs, dim=-1))
        if self.target_look is not None:
            boxes = self.seg_box(hidden[seg_b, seg_t]) if self.config.seg_query_look == "box" else None
            windowed = MASK_WINDOWS.get(self.config.seg_query_look)
            for _ in range(self.config.seg_look_rounds):   # each round reads under the mask of the last round's query
                looks = torch.zeros_like(queries)
                for rows, maps in features:
                    window = (box_window(boxes[rows], maps.shape[-2:]) if boxes is not None
                              else windowed(mask_logits(queries[rows], maps)))
                    looks[rows] = self.target_look(window, maps).to(queries.dtype)
                queries = first + looks
        return (queries, first) if with_first else queries

    def seg_bow_loss(self, hidden: torch.Tensor, input_ids: torch.Tensor, text_start: torch.Tensor,
                     seg_b: torch.Tensor, seg_t: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of a linear read-out of each [SEG] state (through the LM head) against the words of its
        question, averaged over those words: a dense signal that asks the [SEG] state to carry the expression."""
        keys = question_key_mask(input_ids, self.processor.ids["turn_end"], text_start, seg_b, seg_t)
        words = input_ids[seg_b]                                                  # (M, L)
        ids = self.processor.ids
        special = torch.tensor([ids[n] for n in ("vision_start", "vpatch", "vision_end", "seg", "turn_end", "pad")],
                               device=words.device)
        keys = keys & ~torch.isin(words, special)
        logp = F.log_softmax(self.backbone.logits(self.seg_bow(hidden[seg_b, seg_t])).float(), dim=-1)  # (M, V)
        picked = logp.gather(1, words)                                            # (M, L)
        return (-(picked * keys).sum(1) / keys.sum(1).clamp(min=1)).mean()


__all__ = ["SegQueries"]
