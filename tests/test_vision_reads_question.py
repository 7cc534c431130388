"""vision_reads_question: the vision block's tokens also attend to the first question, never to an answer; off is
the paper's layout; training, cached, uncached and batched generation read the same question-dependent features."""
from __future__ import annotations

import torch
from model_utils import box_mask, random_image, tiny_model

from pixelsail.data.sample import Sample
from pixelsail.model.attention import AttentionLayout
from pixelsail.model.batch_inputs import first_question_ends
from pixelsail.model.batched import respond_batch
from pixelsail.model.pixelsail import PixelSail

END = 9


def test_the_first_question_ends_after_its_turn_end_past_the_vision_block():
    ids = torch.tensor([[END, 1, 1, 5, END, 6, END, 0],    # an end-of-turn id inside the "vision block" is no question end
                        [5, 6, END, 7, 8, END, 0, 0],      # text only: nothing to see
                        [1, 1, 5, 6, 7, 8, 8, 8]])         # no turn ends: the whole row
    lens = torch.tensor([3, 0, 2])
    assert first_question_ends(ids, lens, END).tolist() == [5, 0, 8]


def test_vision_queries_see_the_question_and_text_stays_causal():
    layout = AttentionLayout(torch.tensor([3]), vision_sees=torch.tensor([5]))
    allowed = layout.allowed(8, 8, torch.device("cpu"))[0, 0]
    paper = AttentionLayout(torch.tensor([3])).allowed(8, 8, torch.device("cpu"))[0, 0]
    assert allowed[:3, :5].all() and not allowed[:3, 5:].any()     # the block reads keys 0..4, no answer key
    assert torch.equal(allowed[3:], paper[3:])                      # text rows: as in the paper
    assert not paper[:3, 3:].any()


def sample(image, question: str, answer: str = "Sure, [SEG].") -> Sample:
    h, w = image.shape[:2]
    masks = [box_mask(h, w, 0, 16, 0, 16)] * answer.count("[SEG]")
    return Sample(image=image, turns=[(question, answer)], masks=masks, task="res")


def vision_states(model, samples: list[Sample]) -> torch.Tensor:
    proc = model.processor
    batch = proc.collate([proc(s) for s in samples])
    with torch.no_grad():
        embeds, positions, layout = model.embed_batch(batch["input_ids"], batch["images"])
        hidden = model.backbone(embeds, positions, layout)
    return hidden[:, :int(layout.vision_lens[0])]


def test_the_patches_depend_on_the_question_not_on_the_answer():
    image = random_image(48, 64)
    on = tiny_model(vision_reads_question=True).eval()
    off = tiny_model().eval()
    pair = [sample(image, "Please segment the red star."), sample(image, "Please segment the blue square.")]
    assert torch.equal(*vision_states(off, pair).unbind(0))
    assert not torch.allclose(*vision_states(on, pair).unbind(0), atol=1e-4)
    answers = [sample(image, "Please segment the red star."), sample(image, "Please segment the red star.",
                                                                      "Sure, [SEG] and [SEG].")]
    states = vision_states(on, answers)
    assert torch.allclose(states[0], states[1], atol=1e-5)
    assert off.state_dict().keys() == on.state_dict().keys()        # a layout switch: no new weights


def test_attention_implementations_agree_with_the_switch():
    image = random_image(48, 64)
    model = tiny_model(vision_reads_question=True).eval()
    samples = [sample(image, "Please segment the red star."), sample(random_image(64, 64, seed=1), "What is it?")]
    states = {}
    for name in ("prefix_sdpa", "sdpa", "eager"):
        model.backbone.set_attention(name)
        proc = model.processor
        batch = proc.collate([proc(s) for s in samples])
        with torch.no_grad():
            embeds, positions, layout = model.embed_batch(batch["input_ids"], batch["images"])
            states[name] = model.backbone(embeds, positions, layout)
    assert torch.allclose(states["prefix_sdpa"], states["eager"], atol=1e-4)
    assert torch.allclose(states["sdpa"], states["eager"], atol=1e-4)


def test_generation_reads_the_question_as_training_does(tmp_path):
    model = tiny_model(vision_reads_question=True).eval()
    image = random_image(48, 64)
    question = "Please segment the red star."
    proc = model.processor
    batch = proc.collate([proc(sample(image, question))])
    with torch.no_grad():
        embeds, positions, layout = model.embed_batch(batch["input_ids"], batch["images"])
        hidden = model.backbone(embeds, positions, layout)
        trained = model._mask_features_batch(hidden, batch["images"], [0])[0]
        prefix = model.prefill_image(image)
        asked, _ = model._read_question(prefix, proc.prompt_ids(question))
    assert torch.allclose(asked.features[0], trained, atol=1e-4)
    assert not torch.allclose(prefix.features[0], trained, atol=1e-4)    # the question-free pass differs
    cached = model.respond(prefix, question, max_new_tokens=5, answer_prefix="Sure, [SEG]")
    uncached = model.respond(prefix, question, max_new_tokens=5, answer_prefix="Sure, [SEG]", use_cache=False)
    other = model.respond(prefix, "Please segment the blue square.", max_new_tokens=5, answer_prefix="Sure, [SEG]")
    assert cached.token_ids == uncached.token_ids
    assert len(prefix.cache) == prefix.length                           # the shared image cache is left as it was
    batched = respond_batch(model, [prefix, prefix], [question, "Please segment the blue square."], max_new_tokens=5)
    assert [r.text for r in batched] == [model.respond(prefix, q, max_new_tokens=5).text
                                         for q in (question, "Please segment the blue square.")]
    assert cached.masks and other.masks
    model.save_pretrained(tmp_path)
    loaded = PixelSail.from_pretrained(tmp_path).eval()
    assert loaded.config.vision_reads_question
    again = loaded.respond(loaded.prefill_image(image), question, max_new_tokens=5, answer_prefix="Sure, [SEG]")
    assert again.token_ids == cached.token_ids
