import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from fake_pixelsail import FakePixelSail, scene
from pixelsail.predictor import DESCRIBE_QUESTION, InputError, Predictor


@pytest.fixture()
def predictor():
    return Predictor(model=FakePixelSail())


def _red_square():
    m = np.zeros((48, 64), bool)
    m[8:24, 4:20] = True
    return m


def test_segment_returns_the_models_mask_at_image_size(predictor, tmp_path):
    path = tmp_path / "scene.png"
    Image.fromarray(scene()).save(path)
    r = predictor.segment(path, "the red square")
    assert r.question == "Please segment the red square."
    assert r.text == "Sure, [SEG]."
    assert len(r.masks) == 1 and r.masks[0].dtype == bool
    np.testing.assert_array_equal(r.masks[0], _red_square())
    assert not r.no_target


def test_segment_without_target(predictor):
    r = predictor.segment(scene(), "the green circle.")
    assert r.question == "Please segment the green circle."
    assert r.masks == [] and r.no_target


def test_prompts_are_numbered_in_order_or_onto_named_tokens(predictor):
    img = scene()
    red_box, blue_point = (4, 8, 20, 24), (35, 35)
    p = predictor.number_prompts(img, "Compare them.", [red_box, blue_point])
    assert sorted(p) == [0, 1] and p[0][8:24, 4:20].all() and p[0].sum() == 16 * 16 and p[1][35, 35]
    p = predictor.number_prompts(img, "Is <vp_3> left of <vp_1>?", [red_box, blue_point])
    assert sorted(p) == [1, 3] and p[3].sum() == 256 and p[1][35, 35]
    # one named token, two prompts: the extra prompt gets the smallest free k
    p = predictor.number_prompts(img, "What is <vp_2>?", [red_box, blue_point])
    assert sorted(p) == [0, 2] and p[2].sum() == 256
    # a mapping keeps its keys
    p = predictor.number_prompts(img, "What colour is <vp_1>?", {1: blue_point})
    assert list(p) == [1]


def test_ask_about_prompts(predictor):
    img = scene()
    assert predictor.ask(img, "What colour is <vp_3>?", prompts=[(4, 8, 20, 24)]).text == "<vp_3>: red."
    assert predictor.ask(img, "What colour is <vp_0>?", prompts=[(36, 34)]).text == "<vp_0>: blue."
    mask = np.zeros((48, 64), np.uint8)
    mask[30:42, 30:46] = 1
    r = predictor.ask(img, "What colour is <vp_1>?", prompts={1: mask})
    assert r.text == "<vp_1>: blue." and list(r.prompts) == [1]


def test_describe_asks_about_vp0(predictor):
    r = predictor.describe(scene(), (10, 10))
    assert r.question == DESCRIBE_QUESTION == "Please describe <vp_0>."
    assert r.text == "<vp_0>: red."


def test_prefix_is_computed_once_per_image_and_prompts(predictor):
    img = scene()
    predictor.segment(img, "the red square")
    r = predictor.segment(img.copy(), "the blue square")
    assert predictor.vision_prefill_count == 1 and r.prefix_reused
    predictor.ask(img, "What colour is <vp_0>?", prompts=[(10, 10)])
    assert predictor.vision_prefill_count == 2
    predictor.ask(img, "What colour is <vp_0>?", prompts=[(10, 10)])
    assert predictor.vision_prefill_count == 2
    other = img.copy()
    other[0, 0] = 0
    predictor.segment(other, "the red square")
    assert predictor.vision_prefill_count == 3


def test_prefix_cache_is_bounded():
    p = Predictor(model=FakePixelSail(), prefix_cache_size=2)
    imgs = [np.full((16, 16, 3), v, np.uint8) for v in (1, 2, 3)]
    for im in imgs:
        p.segment(im, "the red thing")
    assert len(p._prefixes) == 2
    p.segment(imgs[0], "the red thing")  # evicted: computed again
    assert p.vision_prefill_count == 4


def test_chat_keeps_history_and_reuses_the_prefix(predictor):
    chat = predictor.chat(scene())
    r1 = chat.send("Please segment the red square.")
    r2 = chat.send("What colour is <vp_0>?", prompts=[(36, 34)])
    r3 = chat.send("And <vp_0> again?")
    assert r1.text == "Sure, [SEG]." and r2.text == "<vp_0>: blue." and r3.text == "<vp_0>: blue."
    assert chat.history == [("Please segment the red square.", "Sure, [SEG]."),
                            ("What colour is <vp_0>?", "<vp_0>: blue."), ("And <vp_0> again?", "<vp_0>: blue.")]
    # the model saw the earlier turns as history
    assert predictor.model.questions[2] == ("And <vp_0> again?", chat.history[:2])
    # one prefix without prompts, one with <vp_0>; the third turn reused the second
    assert predictor.vision_prefill_count == 2 and r3.prefix_reused
    with pytest.raises(InputError, match=r"names <vp_1> but no visual prompt"):
        chat.send("What about <vp_1>?")
    assert len(chat.history) == 3


def test_result_serialises_masks_as_rle_and_draws_an_overlay(predictor):
    r = predictor.segment(scene(), "the red square")
    d = r.to_dict()
    (m,) = d["masks"]
    assert m["area"] == 256 and m["box"] == [4, 8, 20, 24] and m["score"] == pytest.approx(0.9)
    decoded = mask_utils.decode({"size": m["rle"]["size"], "counts": m["rle"]["counts"].encode()})
    np.testing.assert_array_equal(decoded.astype(bool), _red_square())
    ov = r.overlay()
    assert ov.shape == (48, 64, 3) and ov.dtype == np.uint8
    assert (ov[12, 10] != scene()[12, 10]).any()     # inside the mask: tinted
    np.testing.assert_array_equal(ov[40, 5], scene()[40, 5])  # far from it: untouched


def test_missing_model_dir_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="no pixelsail model in .*config.json not found"):
        Predictor(tmp_path / "nothing-here")


def test_real_tiny_model_round_trip(tmp_path):
    """A random tiny PixelSail saved and loaded by directory: masks match [SEG]s, the prefix is reused intact."""
    from pixelsail.config import PixelSailConfig
    from pixelsail.model import PixelSail
    from pixelsail.tokenizer import build_tiny_tokenizer

    cfg = PixelSailConfig(vocab_size=400, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                          num_key_value_heads=1, intermediate_size=64, mask_dim=16, max_image_size=64,
                          num_vp_tokens=4)
    tok = build_tiny_tokenizer(["Please segment the red square. What colour is it? Sure."] * 4, vocab_size=400,
                               num_vp_tokens=4)
    PixelSail(cfg, tok).save_pretrained(tmp_path / "m")
    p = Predictor(tmp_path / "m", max_new_tokens=6)
    img = scene()
    r1 = p.segment(img, "the red square")
    r2 = p.segment(img, "the red square")
    assert isinstance(r1.text, str) and r1.text == r2.text
    assert len(r1.masks) == r1.text.count("[SEG]") and all(m.shape == (48, 64) for m in r1.masks)
    assert p.vision_prefill_count == 1 and r2.prefix_reused and not r1.prefix_reused
    chat = p.chat(img)
    chat.send("What colour is <vp_0>?", prompts=[(4, 8, 20, 24)])
    chat.send("And now?")
    assert p.vision_prefill_count == 2 and len(chat.history) == 2


def test_concurrent_requests_get_their_own_answers():
    from concurrent.futures import ThreadPoolExecutor

    p = Predictor(model=FakePixelSail(prefill_seconds=0.01), prefix_cache_size=2)
    red, blue = scene(), scene()[:, ::-1].copy()   # mirrored: the red square moves to cols 44..59
    jobs = [(red, "the red square", 4), (blue, "the red square", 44)] * 6
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda j: p.segment(j[0], j[1]), jobs))
    for (_, _, x0), r in zip(jobs, results):
        assert r.to_dict()["masks"][0]["box"] == [x0, 8, x0 + 16, 24]
