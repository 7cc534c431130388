"""Greedy answers to many (image prefix, question) pairs in one batch: the same tokens as ``PixelSail.respond``.

Every sequence keeps its own 1-D positions, while the KV cache is one rectangle: prefixes shorter than the longest
(smaller images) and prompts shorter than the longest are padded, and the padding slots are masked out as keys
(``AttentionLayout.key_valid``). One image asked many questions shares its prefix cache as a batch view
(``KVCache.expand``) instead of a copy. Sequences that finish early keep decoding padding until the batch is done.
"""
from __future__ import annotations

from typing import Sequence

import torch

from pixelsail.model.attention import AttentionLayout, KVCache
from pixelsail.model.batch_inputs import text_positions
from pixelsail.model.generation import Response


def _batch_cache(prefixes: Sequence) -> tuple[KVCache, torch.Tensor]:
    """One cache (B, Hkv, Vmax, D) per layer from the prefixes' batch-1 caches, and its (B, Vmax) validity."""
    lengths = [len(p.cache) for p in prefixes]
    vmax = max(lengths)
    dev = prefixes[0].cache.keys[0].device
    valid = torch.arange(vmax, device=dev)[None] < torch.tensor(lengths, device=dev)[:, None]
    if all(p is prefixes[0] for p in prefixes):
        return prefixes[0].cache.expand(len(prefixes)), valid
    out = KVCache()

    def stack(tensors: list[torch.Tensor]) -> torch.Tensor:
        # each (1, H, v_i, D) -> zero-padded to (1, H, Vmax, D) -> (B, H, Vmax, D)
        return torch.cat([torch.nn.functional.pad(t, (0, 0, 0, vmax - t.shape[2])) for t in tensors])

    for layer in range(len(prefixes[0].cache.keys)):
        out.keys.append(stack([p.cache.keys[layer] for p in prefixes]))
        out.values.append(stack([p.cache.values[layer] for p in prefixes]))
    return out, valid


@torch.no_grad()
def respond_batch(model, prefixes: Sequence, questions: Sequence[str],
                  histories: Sequence[Sequence[tuple[str, str]]] | None = None, max_new_tokens: int = 64) -> list:
    """``[model.respond(p, q, h, max_new_tokens) for p, q, h in zip(...)]`` computed as one batch per step."""
    if len(prefixes) != len(questions):
        raise ValueError(f"{len(prefixes)} prefixes for {len(questions)} questions")
    if not questions:
        return []
    histories = histories if histories is not None else [()] * len(questions)
    if model.config.vision_reads_question:   # every question needs its own image pass: no shared prefix to batch
        return [model.respond(p, q, list(h), max_new_tokens) for p, q, h in zip(prefixes, questions, histories)]
    proc, backbone, dev = model.processor, model.backbone, model.device
    seg_id, end_id, pad_id = proc.ids["seg"], proc.ids["turn_end"], proc.ids["pad"]
    prompts = [proc.prompt_ids(q, list(h)) for q, h in zip(questions, histories)]
    choices = [model.option_constraint(q) for q in questions]
    b, longest = len(prompts), max(len(p) for p in prompts)
    lengths = torch.tensor([len(p) for p in prompts], device=dev)
    starts = torch.tensor([p.next_position for p in prefixes], device=dev)
    vision_lens = torch.tensor([p.length for p in prefixes])
    answers: list[list[int]] = [[] for _ in range(b)]
    with model._autocast():
        cache, valid = _batch_cache(prefixes)
        # the prompts, right-padded: (B, T) ids, (3, B, T) positions, pads invalid as keys
        ids = torch.full((b, longest), pad_id, dtype=torch.long, device=dev)
        for i, p in enumerate(prompts):
            ids[i, :len(p)] = torch.tensor(p, device=dev)
        embeds = torch.stack([model._add_pooled_prompts(backbone.embed(ids[i]), ids[i], prefixes[i].pooled)
                              for i in range(b)])
        embeds = model._add_token_marks(embeds, ids.tolist())
        positions = torch.stack([text_positions(int(s), longest, dev) for s in starts], dim=1)
        valid = torch.cat([valid, torch.arange(longest, device=dev)[None] < lengths[:, None]], dim=1)
        hidden = backbone(embeds, positions, AttentionLayout(vision_lens, len(cache), valid), cache)
        text_hidden = [[hidden[i, :len(p)]] for i, p in enumerate(prompts)]  # per sequence, (T_i, C) chunks
        last = hidden[torch.arange(b, device=dev), lengths - 1]  # (B, C) each prompt's last real token
        done = [False] * b
        fed = lengths.clone()  # text tokens of each sequence so far
        for step in range(max_new_tokens + 1):
            logits = backbone.logits(last)   # (B, V)
            nxt = logits.argmax(-1).tolist()
            for i, choice in enumerate(choices):   # rows answering a multiple choice from its options
                if choice is not None and not done[i]:
                    nxt[i] = choice.pick(logits[i], answers[i])
            for i in range(b):
                if done[i]:
                    continue
                if nxt[i] == end_id or step == max_new_tokens:
                    done[i] = True
                else:
                    answers[i].append(nxt[i])
            if all(done):
                break
            tokens = torch.tensor([[t] for t in nxt], device=dev)  # (B, 1)
            embeds = torch.stack([model._add_pooled_prompts(backbone.embed(tokens[i]), tokens[i], prefixes[i].pooled,
                                                            prompts[i].count(end_id)) for i in range(b)])
            if model.marks_tokens:   # each new token's marks depend on its whole sequence so far
                embeds = torch.stack([model._add_token_marks(embeds[i], [prompts[i] + answers[i]],
                                                              len(prompts[i]) + len(answers[i]) - 1) for i in range(b)])
            positions = (starts + fed)[None, :, None].expand(3, b, 1)
            valid = torch.cat([valid, torch.ones(b, 1, dtype=torch.bool, device=dev)], dim=1)
            last = backbone(embeds, positions, AttentionLayout(vision_lens, len(cache), valid), cache)[:, 0]
            fed += 1
            for i in range(b):
                if not done[i]:
                    text_hidden[i].append(last[i:i + 1])
        out = []
        for i in range(b):
            seq = prompts[i] + answers[i]
            seg_at = [t for t in range(len(prompts[i]), len(seq)) if seq[t] == seg_id]
            masks, scores = model._masks_from(torch.cat(text_hidden[i]), seq, seg_at, prefixes[i])
            text = proc.tokenizer.decode(answers[i], skip_special_tokens=False)
            resp = Response(text=text, masks=masks, mask_scores=scores, token_ids=answers[i],
                            restricted=choices[i] is not None)
            out.append(model._check_no_target(resp, prefixes[i], questions[i], list(histories[i]), max_new_tokens))
    return out


__all__ = ["respond_batch"]
