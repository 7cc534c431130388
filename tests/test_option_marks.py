"""option_marks: which multiple-choice option a token is in, decided from the text before it; zero-initialised, so
the switch starts as the paper's model; the same marks in training, cached, uncached and batched generation."""
from __future__ import annotations

import torch
from model_utils import random_image, tiny_model

from pixelsail.data.sample import Sample
from pixelsail.model.batched import respond_batch
from pixelsail.model.option_marks import OptionMarker

QUESTION = "What colour is <vp_1>? (A) blue (B) red (C) green. Answer with the option's letter."


def marked(model, text: str) -> list[tuple[str, int]]:
    tok = model.processor.tokenizer
    ids = tok.encode(text, add_special_tokens=False)
    marker = OptionMarker(tok, model._vp_token_ids("cpu").tolist())
    return [(tok.decode([i]), m) for i, m in zip(ids, marker(ids))]


def mark_at(marks: list[tuple[str, int]], word: str, nth: int = 0) -> int:
    """The mark of the token holding the first character of the ``nth`` occurrence of ``word`` in the text."""
    text, starts = "", []
    for piece, _ in marks:
        starts.append(len(text))
        text += piece
    at = -1
    for _ in range(nth + 1):
        at = text.index(word, at + 1)
    return marks[max(j for j, s in enumerate(starts) if s <= at)][1]


def test_tokens_inside_an_option_carry_its_letter_and_nothing_else_is_marked():
    model = tiny_model(option_marks=True)
    marks = marked(model, QUESTION)
    words = {w: mark_at(marks, w) for w in ("What", "blue", "red", "green", "Answer")}
    assert words == {"What": -1, "blue": 0, "red": 1, "green": 2, "Answer": -1}
    # the <vp_k> tags are an option's content ("Which is larger? (A) <vp_1> (B) <vp_2>."), not its end
    tags = [m for piece, m in marked(model, "Which is larger? (A) <vp_1> (B) <vp_2>. Answer.") if piece.startswith("<vp")]
    assert tags == [0, 1]
    # in an answer, only what follows its letter is marked: the letter is decided before anything marks it
    answer = marked(model, "It is red (B).")
    assert mark_at(answer, "red") == -1 and answer[-1] == (".", 1)


def test_a_token_is_marked_from_the_text_before_it_and_a_special_token_resets():
    model = tiny_model(option_marks=True)
    tok = model.processor.tokenizer
    marker = OptionMarker(tok, model._vp_token_ids("cpu").tolist())
    ids = tok.encode(QUESTION + " It is red (B).", add_special_tokens=False)
    full = marker(ids)
    assert all(marker(ids[:n]) == full[:n] for n in range(len(ids) + 1))   # generation one token at a time agrees
    vision = [model.processor.ids["vision_start"], model.processor.ids["vpatch"], model.processor.ids["vision_end"]]
    unfinished = tok.encode("(A) blue (B", add_special_tokens=False)
    assert marker(unfinished + vision + ids)[len(unfinished) + len(vision):] == full


def test_switched_on_the_model_starts_as_the_papers():
    off = tiny_model(seed=3).eval()
    on = tiny_model(seed=3, option_marks=True).eval()
    missing, unexpected = on.load_state_dict(off.state_dict(), strict=False)
    assert missing == ["option_embed.embed.weight"] and unexpected == []
    assert torch.count_nonzero(on.option_embed.embed.weight) == 0
    image = random_image(64, 64)
    a = off.respond(off.prefill_image(image), QUESTION, max_new_tokens=8)
    b = on.respond(on.prefill_image(image), QUESTION, max_new_tokens=8)
    assert a.token_ids == b.token_ids


def test_training_cached_uncached_and_batched_paths_mark_the_same_tokens():
    model = tiny_model(option_marks=True).eval()
    with torch.no_grad():
        model.option_embed.embed.weight.normal_(0, 1.0)     # loud marks: any path that misses them answers otherwise
    image = random_image(64, 64)
    # training: the embeddings of the question's option tokens are the plain ones plus their letter's vector
    proc = model.processor
    feats = proc(Sample(image=image, turns=[(QUESTION, "It is red (B).")], masks=[], task="vp_mcq"))
    batch = proc.collate([feats])
    with torch.no_grad():
        embeds, _, _ = model.embed_batch(batch["input_ids"], batch["images"])
        plain = model.backbone.embed(batch["input_ids"])
    ids = batch["input_ids"][0].tolist()
    text = ids.index(proc.ids["vision_end"]) + 1                            # the text after the vision block
    marks = OptionMarker(proc.tokenizer, model._vp_token_ids("cpu").tolist())(ids[text:])
    assert sorted(set(marks)) == [-1, 0, 1, 2]
    weight = model.option_embed.embed.weight
    added = torch.stack([weight[m] if m >= 0 else torch.zeros_like(weight[0]) for m in marks])
    assert torch.allclose(embeds[0, text:] - plain[0, text:], added, atol=1e-5)
    # generation: with and without the cache, and in a batch beside another question, the same states reach the
    # LM head (compared as states: a random tiny model's greedy tokens do not depend on the question at all)
    seen: list[torch.Tensor] = []
    logits = model.backbone.logits
    model.backbone.logits = lambda h: seen.append(h.detach().clone()) or logits(h)
    prefix = model.prefill_image(image)
    other = model.prefill_image(random_image(64, 96, seed=1))
    runs = {}
    for name, call in [("cached", lambda: model.respond(prefix, QUESTION, max_new_tokens=3)),
                       ("uncached", lambda: model.respond(prefix, QUESTION, max_new_tokens=3, use_cache=False)),
                       ("batched", lambda: respond_batch(model, [prefix, other], [QUESTION, "Which? (A) blue (B) red."],
                                                         max_new_tokens=3))]:
        seen.clear()
        call()
        runs[name] = torch.cat([h[:1].reshape(1, -1) for h in seen])          # sequence 0's state at each step
    assert torch.allclose(runs["cached"], runs["uncached"], atol=1e-4)
    assert torch.allclose(runs["cached"], runs["batched"], atol=1e-4)
    model.option_embed = None                                                  # the marks do reach those states
    seen.clear()
    model.respond(prefix, QUESTION, max_new_tokens=3)
    assert not torch.allclose(runs["cached"], torch.cat([h[:1].reshape(1, -1) for h in seen]), atol=1e-2)
