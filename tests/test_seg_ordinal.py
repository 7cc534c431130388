"""seg_list_ordinal: a [SEG]'s place in its list, decided from the text before it; zero-initialised, so the switch
starts as the paper's model; the same vectors in training, cached, uncached and batched generation."""
from __future__ import annotations

import torch
from model_utils import random_image, tiny_model

from pixelsail.data.sample import Sample
from pixelsail.model.batched import respond_batch
from pixelsail.model.seg_ordinal import seg_ordinals

QUESTION = "Please segment all red objects."
LIST_ANSWER = "Sure, [SEG], [SEG] and [SEG]."
GCG_ANSWER = "A red circle [SEG], a blue star [SEG] and a green square [SEG]."


def ordinals_of_segs(model, text: str) -> list[int]:
    ids = model.processor.encode(text)
    seg = model.processor.ids["seg"]
    return [o for i, o in zip(ids, seg_ordinals(ids, seg, model.list_joiners)) if i == seg]


def test_a_lists_segs_are_counted_and_a_phrase_between_them_starts_a_new_list():
    model = tiny_model(seg_list_ordinal=True)
    assert ordinals_of_segs(model, LIST_ANSWER) == [0, 1, 2]
    assert ordinals_of_segs(model, "Sure, [SEG].") == [0]
    assert ordinals_of_segs(model, GCG_ANSWER) == [0, 0, 0]       # each mask after its own phrase
    assert ordinals_of_segs(model, "Sure, [SEG] and [SEG]. Also [SEG] and [SEG].") == [0, 1, 0, 1]
    ids = model.processor.encode(LIST_ANSWER)
    seg = model.processor.ids["seg"]
    full = seg_ordinals(ids, seg, model.list_joiners)
    assert all(seg_ordinals(ids[:n], seg, model.list_joiners) == full[:n] for n in range(len(ids) + 1))
    assert sum(o >= 0 for o in full) == 3                          # only [SEG]s are marked


def test_switched_on_the_model_starts_as_the_papers():
    off = tiny_model(seed=3).eval()
    on = tiny_model(seed=3, seg_list_ordinal=True).eval()
    missing, unexpected = on.load_state_dict(off.state_dict(), strict=False)
    assert missing == ["seg_ordinal.embed.weight"] and unexpected == []
    assert torch.count_nonzero(on.seg_ordinal.embed.weight) == 0
    prefix_off, prefix_on = off.prefill_image(random_image(64, 64)), on.prefill_image(random_image(64, 64))
    a = off.respond(prefix_off, QUESTION, max_new_tokens=6, answer_prefix="Sure, [SEG], [SEG] and")
    b = on.respond(prefix_on, QUESTION, max_new_tokens=6, answer_prefix="Sure, [SEG], [SEG] and")
    assert a.token_ids == b.token_ids
    assert all((x == y).all() for x, y in zip(a.masks, b.masks))


def scripted_logits(model, answer: str):
    """Replace the LM head by one that writes ``answer`` then ends the turn, recording the states it is given."""
    script = model.processor.encode(answer) + [model.processor.ids["turn_end"]]
    vocab = model.backbone.logits(torch.zeros(1, model.config.hidden_size)).shape[-1]
    seen: list[torch.Tensor] = []

    def logits(h: torch.Tensor) -> torch.Tensor:
        seen.append(h.detach().clone())
        out = torch.zeros(*h.shape[:-1], vocab)
        out[..., script[min(len(seen) - 1, len(script) - 1)]] = 1.0
        return out
    return logits, seen


def test_training_cached_uncached_and_batched_paths_add_the_same_vectors():
    model = tiny_model(seg_list_ordinal=True).eval()
    with torch.no_grad():
        model.seg_ordinal.embed.weight.normal_(0, 1.0)     # loud vectors: any path that misses them differs
    image = random_image(64, 64)
    proc = model.processor
    # training: each [SEG]'s embedding is the plain one plus its ordinal's vector, every other token unchanged
    batch = proc.collate([proc(Sample(image=image, turns=[(QUESTION, LIST_ANSWER)], masks=[image[..., 0] > 0] * 3,
                                      task="res"))])
    with torch.no_grad():
        embeds, _, _ = model.embed_batch(batch["input_ids"], batch["images"])
        plain = model.backbone.embed(batch["input_ids"])
    ids = batch["input_ids"][0]
    text = ids.tolist().index(proc.ids["vision_end"]) + 1
    where = (ids == proc.ids["seg"]).nonzero()[:, 0]
    weight = model.seg_ordinal.embed.weight
    assert torch.allclose(embeds[0, where] - plain[0, where], weight[:3], atol=1e-5)
    others = torch.ones(len(ids), dtype=torch.bool)
    others[where], others[:text] = False, False
    assert torch.allclose(embeds[0, others], plain[0, others], atol=1e-6)
    # generation: the scripted answer's states and masks are the same with and without the cache and in a batch
    prefix, other = model.prefill_image(image), model.prefill_image(random_image(64, 96, seed=1))
    results = {}
    for name in ("cached", "uncached", "batched"):
        model.backbone.logits, seen = scripted_logits(model, LIST_ANSWER)
        if name == "batched":
            response = respond_batch(model, [prefix, other], [QUESTION, QUESTION], max_new_tokens=16)[0]
            states = torch.cat([h[:1].reshape(1, -1) for h in seen])
        else:
            response = model.respond(prefix, QUESTION, max_new_tokens=16, use_cache=name == "cached")
            states = torch.cat([h.reshape(1, -1) for h in seen])
        assert len(response.masks) == 3
        results[name] = (states, torch.stack([torch.as_tensor(m) for m in response.masks]))
    for name in ("uncached", "batched"):
        assert torch.allclose(results["cached"][0], results[name][0], atol=1e-4)
        assert torch.equal(results["cached"][1], results[name][1])
    del model.backbone.logits
    model.seg_ordinal = None                                 # the vectors do reach those states
    model.backbone.logits, seen = scripted_logits(model, LIST_ANSWER)
    model.respond(prefix, QUESTION, max_new_tokens=16)
    assert not torch.allclose(results["cached"][0], torch.cat([h.reshape(1, -1) for h in seen]), atol=1e-2)
