import pickle

import numpy as np
import pytest
import torch
from model_utils import box_mask, random_image, res_sample, tiny_config, tiny_model, tiny_tokenizer
from transformers import Qwen2Config, Qwen2ForCausalLM

from pixelsail.data.sample import Sample
from pixelsail.model import PixelSail
from pixelsail.model.backbone import ATTENTION_IMPLEMENTATIONS
from pixelsail.model.generation import Response
from pixelsail.tokens import NO_TARGET_ANSWER

torch.set_grad_enabled(True)


def _hidden(model: PixelSail, sample: Sample, edit: tuple[int, int] | None = None) -> torch.Tensor:
    """Final hidden states of one sample; ``edit=(position, token_id)`` replaces one input token first."""
    batch = model.processor.collate([model.processor(sample)])
    ids = batch["input_ids"]
    if edit is not None:
        ids[0, edit[0]] = edit[1]
    embeds, positions, layout = model.embed_batch(ids, batch["images"])
    with torch.no_grad():
        return model.backbone(embeds, positions, layout)[0]


@pytest.mark.parametrize("attn", ATTENTION_IMPLEMENTATIONS)
def test_attention_layout(attn):
    model = tiny_model(attn_implementation=attn).eval()
    image = random_image(48, 64)
    base = Sample(image=image, turns=[("Please segment the red circle.", "Sure, it is the small square.")], task="vqa")
    h0 = _hidden(model, base)
    n_vision = 2 + (48 // 16) * (64 // 16)
    length = h0.shape[0]

    # a text token changed: no vision token moves, no earlier text token moves, every later one does
    j = n_vision + (length - n_vision) // 2
    h1 = _hidden(model, base, edit=(j, model.processor.ids["seg"]))
    assert torch.allclose(h0[:j], h1[:j], atol=1e-6)
    assert bool(((h0[j:] - h1[j:]).abs().amax(dim=1) > 1e-5).all())

    # one patch (the last) changed: every vision token moves, including the ones before it
    image2 = image.copy()
    image2[-16:, -16:] = 255 - image2[-16:, -16:]
    h2 = _hidden(model, Sample(image=image2, turns=base.turns, task="vqa"))
    diff = (h0[:n_vision] - h2[:n_vision]).abs().amax(dim=1)
    assert bool((diff > 1e-5).all()), "the vision block must be bidirectional"


def test_attention_implementations_agree():
    image = random_image(48, 64)
    sample = res_sample(image, box_mask(48, 64, 5, 30, 10, 40))
    text_only = Sample(image=image, turns=[("What colour is this?", "red")], task="vqa", meta={"text_only": True})
    outs = []
    for attn in ATTENTION_IMPLEMENTATIONS:
        model = tiny_model(attn_implementation=attn).eval()
        batch = model.processor.collate([model.processor(sample), model.processor(text_only)])
        embeds, positions, layout = model.embed_batch(batch["input_ids"], batch["images"])
        with torch.no_grad():
            outs.append(model.backbone(embeds, positions, layout))
    for o in outs[1:]:
        assert torch.allclose(outs[0], o, atol=1e-5)


def test_injection_changes_exactly_the_covered_patches():
    model = tiny_model()
    image = random_image(64, 64)
    prompt = box_mask(64, 64, 0, 17, 0, 5)  # rows 0..16 -> patch rows 0 and 1, column 0
    plain = model.processor.image_inputs(image)
    prompted = model.processor.image_inputs(image, {4: prompt})
    e0, _ = model._patch_embeds(plain)
    e1, _ = model._patch_embeds(prompted)
    changed = (e0 - e1).abs().amax(dim=1) > 0
    expected = torch.zeros(16, dtype=torch.bool)
    expected[[0, 4]] = True
    assert torch.equal(changed, expected)


def test_smaller_prompt_wins_where_prompts_overlap():
    model = tiny_model()
    image = random_image(64, 64)
    big = box_mask(64, 64, 0, 64, 0, 64)
    small = box_mask(64, 64, 0, 8, 0, 8)
    inputs = model.processor.image_inputs(image, {2: small, 7: big})
    assert inputs.prompt_ids.tolist() == [7, 2]
    e, raw = model._patch_embeds(inputs)
    vp = model.backbone.embed(torch.tensor([model.processor.ids["vp_2"], model.processor.ids["vp_7"]]))
    inj = model.prompt_injector.proj(vp)
    assert torch.allclose(e[0], raw[0] + inj[0], atol=1e-6)
    assert torch.allclose(e[5], raw[5] + inj[1], atol=1e-6)


def test_prompt_errors_are_clear():
    model = tiny_model()
    image = random_image(64, 64)
    with pytest.raises(ValueError, match=r"unknown visual prompt <vp_16>"):
        model.processor.image_inputs(image, {16: box_mask(64, 64, 0, 8, 0, 8)})
    with pytest.raises(ValueError, match=r"prompt mask for <vp_0> has shape \(32, 32\)"):
        model.processor.image_inputs(image, {0: np.ones((32, 32), bool)})
    with pytest.raises(ValueError, match=r"unknown visual prompt <vp_99>"):
        model.processor(Sample(image=image, turns=[("What is <vp_99>?", "red")], task="vp_qa"))
    with pytest.raises(ValueError, match=r"2 \[SEG\] tokens in the answers but 1 masks"):
        model.processor(Sample(image=image, turns=[("Segment.", "[SEG] [SEG]")], masks=[np.ones((64, 64), bool)]))


@pytest.mark.parametrize("size", [(64, 64), (48, 112), (100, 37), (200, 150)])
@pytest.mark.parametrize("upsample", [True, False])
def test_mask_feature_stride(size, upsample):
    model = tiny_model(upsample=upsample).eval()
    prefix = model.prefill_image(random_image(*size))
    gh, gw = prefix.image.grid
    stride = 4 if upsample else 16
    assert prefix.features.shape == (1, 32, gh * 16 // stride, gw * 16 // stride)
    resp = model.respond(prefix, "Please segment the red circle.", max_new_tokens=2, answer_prefix="[SEG]")
    assert len(resp.masks) == resp.text.count("[SEG]") >= 1
    assert all(m.shape == size and m.dtype == bool for m in resp.masks)


def test_from_llm_keeps_text_logits(tmp_path):
    tok = tiny_tokenizer()
    base_vocab = len(tok) + 8
    torch.manual_seed(0)
    llm = Qwen2ForCausalLM(Qwen2Config(vocab_size=base_vocab, hidden_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, intermediate_size=128))
    llm.save_pretrained(tmp_path)
    from transformers import PreTrainedTokenizerFast

    plain = PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer, pad_token="<|endoftext|>")
    plain.save_pretrained(tmp_path)
    model = PixelSail.from_llm(tmp_path, tiny_config())
    ids = torch.tensor([tok("Please segment the red circle.", add_special_tokens=False).input_ids])
    with torch.no_grad():
        expected = llm(ids).logits
    got = model.text_logits(ids)[..., :base_vocab]
    assert torch.allclose(expected, got, atol=1e-5)


def test_from_llm_grows_embeddings_for_new_tokens(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1, "b": 2, "<|endoftext|>": 3}, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<|endoftext|>").save_pretrained(tmp_path)
    Qwen2ForCausalLM(Qwen2Config(vocab_size=4, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=1, intermediate_size=64)).save_pretrained(tmp_path)
    model = PixelSail.from_llm(tmp_path, tiny_config(hidden_size=32))
    assert model.backbone.llm.get_input_embeddings().num_embeddings == len(model.tokenizer) >= 4 + 6 + 16


def test_cached_generation_matches_uncached_and_reuses_prefix():
    model = tiny_model().eval()
    image = random_image(64, 80)
    prompts = {3: box_mask(64, 80, 10, 40, 10, 50)}
    prefix = model.prefill_image(image, prompts)
    assert model.vision_prefill_count == 1
    for q, ap in [("What colour is <vp_3>?", ""), ("Please segment the red circle.", "Sure, [SEG].")]:
        a = model.respond(prefix, q, max_new_tokens=12, answer_prefix=ap)
        b = model.respond(prefix, q, max_new_tokens=12, answer_prefix=ap, use_cache=False)
        assert a.token_ids == b.token_ids
        assert len(a.masks) == len(b.masks)
        for ma, mb in zip(a.masks, b.masks):
            assert (ma == mb).mean() > 0.999
    # a follow-up with history still runs on the cached prefix
    model.respond(prefix, "And this?", history=[("What colour is <vp_3>?", "<vp_3>: red.")], max_new_tokens=4)
    assert model.vision_prefill_count == 1
    assert len(prefix.cache) == prefix.length


def test_save_load_roundtrip_without_pickle(tmp_path, monkeypatch):
    model = tiny_model(vp_injection=False).eval()
    model.save_pretrained(tmp_path)
    assert not any(p.suffix in {".bin", ".pt", ".pkl"} for p in tmp_path.iterdir())

    def no_pickle(*a, **k):
        raise AssertionError("loading must not unpickle")

    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(torch, "load", no_pickle)
    loaded = PixelSail.from_pretrained(tmp_path)
    assert loaded.config == model.config
    image = random_image(64, 64)
    prompts = {1: box_mask(64, 64, 0, 30, 0, 30)}
    for m in (model, loaded):
        m.vision_prefill_count = 0
    ra = model.respond(model.prefill_image(image, prompts), "What colour is <vp_1>?", max_new_tokens=6,
                       answer_prefix="[SEG]")
    rb = loaded.respond(loaded.prefill_image(image, prompts), "What colour is <vp_1>?", max_new_tokens=6,
                        answer_prefix="[SEG]")
    assert ra.token_ids == rb.token_ids
    assert np.array_equal(ra.masks[0], rb.masks[0])


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        PixelSail.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="gone: no such model directory"):   # e.g. a pruned checkpoint
        PixelSail.from_pretrained(tmp_path / "gone")


def test_distillation_losses_flow():
    teachers = {"pixel": {"channels": 8, "source": "upsampled"}, "image": {"channels": 6, "source": "vision_tokens"}}
    cfg = tiny_config()
    cfg.distill.enabled = True
    cfg.distill.teachers = teachers
    torch.manual_seed(0)
    model = PixelSail(cfg, tiny_tokenizer())
    image = random_image(64, 64)
    sample = res_sample(image, box_mask(64, 64, 5, 30, 10, 40))
    sample.meta["teacher_features"] = {"pixel": np.random.rand(8, 16, 16).astype(np.float32),
                                       "image": np.random.rand(6, 4, 4).astype(np.float32)}
    out = model(**model.processor.collate([model.processor(sample)]))
    assert {"distill_pixel", "distill_image", "mask_bce", "mask_dice", "lm"} <= set(out.losses)
    out.loss.backward()
    assert model.distill.adapters["pixel"].weight.grad.abs().sum() > 0
    assert model.distill.adapters["image"].weight.grad.abs().sum() > 0


def test_overfits_one_batch_of_shapes():
    """Mask and LM losses fall by >= 90 % on one fixed batch (LM weight 1.0 so both fall in the same short run)."""
    from pixelsail.data.shapes import ShapesDataset

    ds = ShapesDataset(split="train", tasks={"res": 1.0}, image_size=64, size=8, seed=0)
    torch.manual_seed(0)
    model = PixelSail(tiny_config(mask_num_points=256, lm_weight_with_masks=1.0), tiny_tokenizer())
    batch = model.processor.collate([model.processor(ds[i]) for i in range(4)])
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    history = []
    for _ in range(60):
        out = model(**batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        history.append({k: float(v) for k, v in out.losses.items()})
    first, last = history[0], history[-1]
    assert last["lm"] < 0.1 * first["lm"], (first, last)
    assert last["mask_bce"] + last["mask_dice"] < 0.1 * (first["mask_bce"] + first["mask_dice"]), (first, last)


def test_half_precision_checkpoint_loads_back_into_fp32(tmp_path):
    model = tiny_model().eval()
    model.save_pretrained(tmp_path, dtype=torch.float16)
    loaded = PixelSail.from_pretrained(tmp_path)
    assert loaded.patch_embed.proj.weight.dtype == torch.float32
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a.half().float(), b), name
    assert (tmp_path / "model.safetensors").stat().st_size < 0.6 * sum(
        p.numel() * 4 for p in model.parameters())


def test_depthwise_conv_paths_agree_with_a_grouped_conv(monkeypatch):
    from torch import nn

    from pixelsail.model import upsampler
    from pixelsail.model.upsampler import DepthwiseConv3x3

    dw = DepthwiseConv3x3(8)
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    with torch.no_grad():
        conv.weight.copy_(dw.weight.permute(2, 0, 1)[:, None])
        conv.bias.copy_(dw.bias)
    x = torch.randn(2, 5, 7, 8)
    expected = conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    assert torch.allclose(dw(x), expected, atol=1e-5)  # fp32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = dw(x)  # bf16 where the CPU has native bf16
    assert torch.allclose(fast.float(), expected, atol=0.05, rtol=0.02)
    monkeypatch.setattr(upsampler, "fast_bf16", lambda device: False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emulated = dw(x)  # a CPU without native bf16 computes it in fp32
    assert emulated.dtype == torch.float32 and torch.allclose(emulated, expected, atol=1e-5)


def test_seg_query_standardizes_with_batch_statistics_in_training_and_running_ones_otherwise():
    from pixelsail.model.mask_head import SegQuery

    torch.manual_seed(0)
    head = SegQuery(hidden_size=8, mask_dim=4, standardize=True)
    shared = torch.randn(8) * 50  # one large vector common to every [SEG] state, as in a freshly trained model
    states = shared + 0.01 * torch.randn(6, 8)
    head.train()
    out = head(states)
    # the shared part is gone: the queries spread as if the states had unit scale
    plain = SegQuery(hidden_size=8, mask_dim=4, standardize=False)
    plain.load_state_dict({k: v for k, v in head.state_dict().items() if k.startswith("mlp")})
    assert out.std(0).mean() > 10 * plain(states).std(0).mean()
    assert head(states[:1]).shape == (1, 4)  # one query: running statistics, no error
    head.eval()
    alone = head(states[:1])
    together = head(states)[:1]
    assert torch.allclose(alone, together, atol=1e-6)  # at inference a query does not depend on its batch


def _qwen2_with_biases(seed: int = 0) -> Qwen2ForCausalLM:
    """A GQA Qwen2 (4 query heads, 2 key/value heads) whose q/k/v biases are non-zero (transformers inits them 0)."""
    torch.manual_seed(seed)
    llm = Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                       num_key_value_heads=2, intermediate_size=128)).eval()
    with torch.no_grad():
        for layer in llm.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
            layer.input_layernorm.weight.normal_(1, 0.2)
    return llm


@pytest.mark.parametrize("attn", ATTENTION_IMPLEMENTATIONS)
def test_decoder_layer_matches_the_installed_transformers_layer(attn):
    from pixelsail.model.attention import AttentionLayout, bind_attention
    from pixelsail.model.backbone import Backbone
    from pixelsail.model.decoder import decoder_layer

    llm = _qwen2_with_biases()
    backbone = Backbone(llm, attn)
    b, seq_len = 2, 9
    hidden = torch.randn(b, seq_len, 64)
    positions = torch.arange(seq_len).expand(3, b, seq_len)  # text: 1-D RoPE on every axis
    cos, sin = backbone.rotary(positions, hidden.dtype)
    layer = llm.model.layers[1]
    attend = bind_attention(attn, AttentionLayout(torch.zeros(b, dtype=torch.long)), seq_len, hidden.dtype,
                            hidden.device)
    with torch.no_grad():
        ours = decoder_layer(layer, hidden, cos, sin, attend, backbone.spec, layer_idx=1)
        theirs = layer(hidden, attention_mask=None, position_embeddings=(cos, sin))
    theirs = theirs[0] if isinstance(theirs, tuple) else theirs
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert (ours - hidden).abs().max() > 1e-2  # the layer did something


@pytest.mark.parametrize("attn", ATTENTION_IMPLEMENTATIONS)
def test_backbone_text_logits_match_transformers(attn):
    from pixelsail.model.attention import AttentionLayout
    from pixelsail.model.backbone import Backbone

    llm = _qwen2_with_biases(seed=1)
    backbone = Backbone(llm, attn).eval()
    ids = torch.randint(0, 64, (2, 11), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(11).expand(3, 2, 11)
    with torch.no_grad():
        expected = llm(input_ids=ids).logits
        got = backbone.logits(backbone(backbone.embed(ids), positions, AttentionLayout(torch.zeros(2, dtype=torch.long))))
    assert torch.allclose(expected, got, atol=1e-5)


def test_gradient_checkpointing_recomputes_each_layer_with_equal_gradients(monkeypatch):
    import pixelsail.model.backbone as backbone_module

    calls = []
    real = backbone_module.decoder_layer
    monkeypatch.setattr(backbone_module, "decoder_layer", lambda *a, **k: calls.append(1) or real(*a, **k))
    image = random_image(48, 64)
    batch_of = lambda m: m.processor.collate([m.processor(res_sample(image, box_mask(48, 64, 5, 30, 10, 40)))])
    grads = []
    for checkpointing in (False, True):
        model = tiny_model().train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        calls.clear()
        model(**batch_of(model)).loss.backward()
        assert len(calls) == model.config.num_hidden_layers * (2 if checkpointing else 1)
        grads.append(model.backbone.llm.model.layers[0].self_attn.q_proj.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_conv_patch_stem_sees_the_image_as_it_is_and_round_trips(tmp_path):
    model = tiny_model(patch_stem="conv").eval()
    image = random_image(48, 64)
    inputs = model.processor.image_inputs(image)
    stem = model.patch_embed
    # the stem rebuilds the image from its patches: the same as running its layers on the normalised image itself
    x = (image.astype(np.float32) / 255.0 - np.array(model.config.image_mean)) / np.array(model.config.image_std)
    direct = stem.proj(stem.stages(torch.from_numpy(x.astype(np.float32)).permute(2, 0, 1)[None])[0].flatten(1).T)
    with torch.no_grad():
        got = stem(inputs.patches, inputs.grid)
    assert got.shape == (3 * 4, model.config.hidden_size)
    assert torch.allclose(got, direct, atol=1e-5)
    # a change inside the first patch moves its token and its neighbours' (the stem's receptive field); the far
    # tokens move only a little (through GroupNorm's image-wide statistics)
    image2 = image.copy()
    image2[:16, :16] = 255 - image2[:16, :16]
    with torch.no_grad():
        moved = (stem(model.processor.image_inputs(image2).patches, inputs.grid) - got).norm(dim=1)
    near, far = moved[[0, 1, 4, 5]], moved[[2, 3, 6, 7, 8, 9, 10, 11]]
    assert float(near.min()) > 3 * float(far.max())
    model.save_pretrained(tmp_path)
    loaded = PixelSail.from_pretrained(tmp_path).eval()
    assert loaded.config.patch_stem == "conv"
    with torch.no_grad():
        assert torch.allclose(loaded.patch_embed(inputs.patches, inputs.grid), got, atol=1e-6)
    with pytest.raises(ValueError, match="patch_stem"):
        tiny_model(patch_stem="cnn")


@pytest.mark.parametrize("mode", ["tags", "answer"])
def test_vp_text_pool_adds_the_region_to_the_tag_beside_injection(mode):
    image = random_image(64, 64)
    prompt = {3: box_mask(64, 64, 0, 30, 0, 30)}
    sample = Sample(image=image, turns=[("What colour is <vp_3>?", "<vp_3>: red.")], prompts=prompt, task="vp_qa")
    plain, both = tiny_model().eval(), tiny_model(vp_text_pool=mode).eval()   # same seed, same weights
    assert not both.vp_text_proj.weight.any()           # zero at the start: the tag is its plain embedding
    with torch.no_grad():
        both.vp_text_proj.weight.copy_(torch.eye(both.config.hidden_size))
    rows = []
    for m in (plain, both):
        batch = m.processor.collate([m.processor(sample)])
        embeds, _, _ = m.embed_batch(batch["input_ids"], batch["images"])
        rows.append((batch["input_ids"][0], embeds[0]))
    ids, (e_plain, e_both) = rows[0][0], (rows[0][1], rows[1][1])
    tag = ids == plain.processor.ids["vp_3"]
    n = 2 + 16
    if mode == "answer":                                              # the question's tag stays plain
        question_tag = int(tag.nonzero()[0])
        assert torch.equal(e_plain[question_tag], e_both[question_tag])
        tag[question_tag] = False
    assert torch.equal(e_plain[:n], e_both[:n])                       # the patches are injected the same way
    assert torch.equal(e_plain[~tag], e_both[~tag])                   # other tokens untouched
    inputs = both.processor.image_inputs(image, prompt)
    _, raw = both._patch_embeds(inputs)
    pooled = raw[inputs.prompt_cover[0]].mean(0)
    assert torch.allclose(e_both[tag] - e_plain[tag], pooled.expand(int(tag.sum()), -1), atol=1e-6)
    prefix = both.prefill_image(image, prompt)                        # the cached path adds it too
    a = both.respond(prefix, "What colour is <vp_3>?", max_new_tokens=4, answer_prefix="<vp_3>:")
    b = both.respond(prefix, "What colour is <vp_3>?", max_new_tokens=4, answer_prefix="<vp_3>:", use_cache=False)
    assert a.token_ids == b.token_ids
    with pytest.raises(ValueError, match="vp_text_pool"):
        tiny_model(vp_text_pool="everywhere")


def test_masks_smaller_than_the_area_floor_come_back_empty_and_larger_ones_unchanged():
    model = tiny_model().eval()
    image = random_image(64, 80)
    prefix = model.prefill_image(image)

    def answer(floor: float):
        model.config.mask_min_area = floor
        return model.respond(prefix, "Please segment the red circle.", max_new_tokens=0, answer_prefix="Sure, [SEG]")

    (plain,) = answer(0.0).masks
    area = int(plain.sum())
    assert 0 < area < 64 * 80     # an untrained model's mask: some pixels, so the floor has something to decide
    at_floor = answer(area / (64 * 80))
    assert np.array_equal(at_floor.masks[0], plain) and at_floor.mask_scores[0] > 0
    above = answer((area + 1) / (64 * 80))
    assert not above.masks[0].any() and above.mask_scores == [0.0]
    with pytest.raises(ValueError, match="mask_min_area is a share of the image"):
        tiny_model(mask_min_area=1.5)


def test_a_look_does_not_grow_a_first_mask_under_the_area_floor_into_a_mask():
    """With seg_query_look the floor also applies to the first mask, the one the look read: a query whose first mask
    is stray pixels answers an empty mask, however much its look grows them (absent targets got masks otherwise)."""
    model = tiny_model(seg_query_look="core").eval()
    image = random_image(64, 80)
    prefix = model.prefill_image(image)

    def answer(floor: float):
        model.config.mask_min_area = floor
        return model.respond(prefix, "Please segment the red circle.", max_new_tokens=0, answer_prefix="Sure, [SEG]")

    (first,) = answer(0.0).masks                      # the look's projection starts at zero: the first mask itself
    with torch.no_grad():
        model.target_look.proj.weight.copy_(5.0 * torch.eye(model.config.mask_dim))
    (looked,) = answer(0.0).masks
    assert 0 < first.sum() < looked.sum()              # the look grows this first mask
    kept = answer(int(first.sum()) / (64 * 80))        # first mask at the floor: the looked mask stands
    assert np.array_equal(kept.masks[0], looked)
    dropped = answer((int(first.sum()) + 1) / (64 * 80))   # first mask under it, the looked one above: empty
    assert not dropped.masks[0].any() and dropped.mask_scores == [0.0]


def test_no_target_check_lets_the_masks_overrule_a_no_target_answer(monkeypatch):
    """With no_target_check a free "No target." is asked again begun as "Sure, [SEG]": a mask over the area floor
    makes that answer stand (flagged), masks all under the floor, or under no_target_check_min_area, leave "No
    target."; off, or under an answer prefix, nothing is asked again."""
    model = tiny_model(no_target_check=True).eval()
    prefix = model.prefill_image(random_image(64, 80))
    real = model._answer
    asked: list[str] = []

    def denies_first(prefix, question, history, max_new_tokens, answer_prefix, use_cache):
        asked.append(answer_prefix)
        if not answer_prefix:
            return Response(text=NO_TARGET_ANSWER)
        return real(prefix, question, history, max_new_tokens, answer_prefix, use_cache)

    monkeypatch.setattr(model, "_answer", denies_first)
    question = "Please segment the red circle."
    found = model.respond(prefix, question, max_new_tokens=0)
    assert asked == ["", "Sure, [SEG]"] and found.rechecked
    assert found.text == "Sure, [SEG]" and len(found.masks) == 1 and found.masks[0].any()
    area = int(found.masks[0].sum())
    model.config.no_target_check_min_area = (area + 1) / (64 * 80)    # the re-asked mask is too small to overrule
    small = model.respond(prefix, question, max_new_tokens=0)
    assert small.text == NO_TARGET_ANSWER and not small.masks and not small.rechecked
    model.config.no_target_check_min_area = area / (64 * 80)          # exactly at the check's least area: it stands
    assert model.respond(prefix, question, max_new_tokens=0).rechecked
    model.config.no_target_check_min_area = 0.0
    model.config.mask_min_area = (area + 1) / (64 * 80)   # the mask now falls under the floor
    kept = model.respond(prefix, question, max_new_tokens=0)
    assert kept.text == NO_TARGET_ANSWER and not kept.masks and not kept.rechecked
    model.config.mask_min_area, model.config.no_target_check = 0.0, False
    asked.clear()
    assert model.respond(prefix, question, max_new_tokens=0).text == NO_TARGET_ANSWER and asked == [""]
    model.config.no_target_check = True
    model.respond(prefix, question, max_new_tokens=0, answer_prefix="It is")
    assert asked == ["", "It is"]
    with pytest.raises(ValueError, match="no_target_check_min_area is a share of the image"):
        tiny_model(no_target_check_min_area=-0.1)
