import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from typer.testing import CliRunner

import pixelsail.commands.use as use
from fake_pixelsail import FakePixelSail, scene
from pixelsail.cli import app
from pixelsail.predictor import Predictor, shipped_model_dir

runner = CliRunner()


@pytest.fixture()
def fake(monkeypatch):
    predictor = Predictor(model=FakePixelSail())
    monkeypatch.setattr(use, "_predictor", lambda model, device, **kw: predictor)
    return predictor


@pytest.fixture()
def image_path(tmp_path):
    p = tmp_path / "scene.png"
    Image.fromarray(scene()).save(p)
    return p


def test_segment_writes_overlay_rle_json_and_mask_pngs(fake, image_path, tmp_path):
    out, js, d = tmp_path / "out.png", tmp_path / "m.json", tmp_path / "masks"
    res = runner.invoke(app, ["segment", str(image_path), "the red square", "-o", str(out), "--masks-json", str(js),
                              "--mask-png-dir", str(d)])
    assert res.exit_code == 0, res.output
    assert "Sure, [SEG]." in res.stdout and "mask 0: 256 px" in res.stdout
    assert np.array(Image.open(out)).shape == (48, 64, 3)
    record = json.loads(js.read_text())
    rle = record["masks"][0]["rle"]
    assert mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).sum() == 256
    png = np.array(Image.open(d / "mask_0.png"))
    assert png.dtype == np.uint8 and set(np.unique(png)) == {0, 255} and (png[8:24, 4:20] == 255).all()


def test_ask_numbers_boxes_then_points_then_masks(fake, image_path, tmp_path):
    mask = np.zeros((48, 64), np.uint8)
    mask[30:42, 30:46] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    args = ["ask", str(image_path), "What colour is <vp_0>?", "--point", "40,35", "--box", "4,8,20,24",
            "--mask", str(tmp_path / "m.png")]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == "<vp_0>: red."  # the box is <vp_0> although the point was given first
    res = runner.invoke(app, args[:3] + ["--mask", str(tmp_path / "m.png")])
    assert res.stdout.strip() == "<vp_0>: blue."


def test_describe_needs_exactly_one_region(fake, image_path):
    res = runner.invoke(app, ["describe", str(image_path), "--point", "10,12"])
    assert res.exit_code == 0 and res.stdout.strip() == "<vp_0>: red."
    res = runner.invoke(app, ["describe", str(image_path)])
    assert res.exit_code == 2 and "error: describe needs exactly one of --box, --point or --mask (got 0)" in res.output


def test_chat_reads_piped_stdin_and_reuses_the_prefix(fake, image_path, tmp_path):
    script = "Please segment the red square.\n:box 30,30,46,42\nWhat colour is <vp_0>?\nAnd <vp_0>?\n:bogus\n" \
             "What is <vp_5>?\n:quit\nnever asked\n"
    res = runner.invoke(app, ["chat", str(image_path), "--save-dir", str(tmp_path / "turns")], input=script)
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.stdout.splitlines() if not ln.startswith("  ")]
    assert lines == ["Sure, [SEG].", "<vp_0>: blue.", "<vp_0>: blue."]
    assert "error: unknown command ':bogus'" in res.output
    assert "error: unknown visual prompt <vp_5>: this model has <vp_0>..<vp_3>" in res.output
    assert sorted(p.name for p in (tmp_path / "turns").iterdir()) == ["turn_0.png", "turn_1.png", "turn_2.png"]
    assert fake.vision_prefill_count == 2   # one prefix without prompts, one with <vp_0>


@pytest.mark.parametrize("args, message", [
    (["segment", "IMG", ""], "error: the referring expression is empty"),
    (["segment", "/no/such.png", "the red square"], "error: image file not found: /no/such.png"),
    (["ask", "IMG", "What is <vp_0>?", "--box", "1,2,3"], "error: --box '1,2,3' must be 4 comma-separated numbers"),
    (["ask", "IMG", "What is <vp_0>?", "--point", "500,5"], "error: visual prompt <vp_0>: point (500.0, 5.0) lies "
                                                            "outside the 64x48 image"),
    (["ask", "IMG", "What is <vp_1>?", "--point", "10,12"], None),
    (["ask", "IMG", "Hi", "--mask", "/no/mask.png"], "error: mask file not found: /no/mask.png"),
])
def test_errors_are_one_line_and_exit_2(fake, image_path, args, message):
    args = [str(image_path) if a == "IMG" else a for a in args]
    res = runner.invoke(app, args)
    if message is None:  # a named prompt with a list of one: numbered onto it, so it works
        assert res.exit_code == 0 and res.stdout.strip() == "<vp_1>: red."
        return
    assert res.exit_code == 2
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert errors == [message]


def test_missing_model_dir_is_a_one_line_error(image_path, tmp_path):
    res = runner.invoke(app, ["segment", str(image_path), "the red square", "--model", str(tmp_path / "none")])
    assert res.exit_code == 2
    assert res.output.strip().startswith(f"error: no pixelsail model in {tmp_path / 'none'}")


def test_demo_writes_a_grid_and_reports_prefix_reuse(fake, tmp_path):
    res = runner.invoke(app, ["demo", "-o", str(tmp_path / "d"), "--n", "2"])
    assert res.exit_code == 0, res.output
    # scenes 0 and 1 each have a visual-text referral (scene 0: the blue diamond's colour, scene 1: a circle's shape)
    assert res.stdout.count("scene 0 ") == 7 and res.stdout.count("scene 1 ") == 7
    assert "'Segment the object with the same colour as <vp_0>.'" in res.stdout
    assert "expected: a mask of the small blue circle" in res.stdout
    # scene 1 has relations: its second mask is one ("the circle right of the red diamond"), scene 0 has none
    assert "'the circle right of the red diamond'" in res.stdout
    assert "expected: a mask of the small purple circle" in res.stdout
    # a multiple choice about the boxed object's shape, its right option at a different letter per scene
    assert "What shape is <vp_0>? (A) square (B) circle (C) diamond (D) triangle." in res.stdout
    assert "expected: (A) square" in res.stdout and "expected: (B) circle" in res.stdout
    # an expression the scene has no object for, which should come back without a mask
    assert res.stdout.count("expected: no mask: the scene has no such object") == 2
    assert res.stdout.count("(prefix reused)") == 6   # per scene: 2nd and 3rd segment, 2nd box question
    assert "mean latency: new image/prompts" in res.stdout
    records = json.loads((tmp_path / "d" / "answers.json").read_text())
    assert len(records) == 14 and records[0]["request"].startswith("the ") and "prefix_reused" in records[0]
    grid = Image.open(tmp_path / "d" / "demo.png")
    assert grid.width > 7 * 192 and grid.height > 2 * 192
    assert fake.vision_prefill_count == 2 * 4   # the image, the box, the point, the box of the referral


def test_serve_on_a_busy_port_is_a_one_line_error(fake):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        res = runner.invoke(app, ["serve", "--port", str(port), "--samples", "1"])
    assert res.exit_code == 2
    assert res.output.strip().startswith(f"error: cannot listen on 127.0.0.1:{port}")


def test_shapes_scene_writes_one_plain_scene_and_names_its_objects(tmp_path):
    from pixelsail.data.shapes import generate_scene

    out = tmp_path / "scene.png"
    res = runner.invoke(app, ["shapes", "scene", "-o", str(out), "--index", "3", "--split", "test"])
    assert res.exit_code == 0, res.output
    expected = generate_scene("test", 3)
    np.testing.assert_array_equal(np.array(Image.open(out)), expected.image)
    lines = res.stdout.splitlines()
    assert lines[0] == f"wrote {out} (split 'test' scene #3, 128x128)"
    boxes = {f"box {','.join(str(int(v)) for v in o.bbox)}" for o in expected.visible_objects}
    assert len(lines) > 1 and all(ln.startswith("  'the ") and ln.split("  ")[-1] in boxes for ln in lines[1:])


@pytest.mark.skipif(not (shipped_model_dir() / "config.json").is_file(), reason="the shipped shapes model is absent")
def test_eval_defaults_to_the_shipped_model(tmp_path):
    res = runner.invoke(app, ["eval", "--task", "shapes", "--limit", "1", "--gallery", "0", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "results.json").read_text())["model"] == str(shipped_model_dir())
