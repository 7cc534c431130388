"""Vision experts: the shapes expert learns, transformers teachers load from their own formats, the feature cache
round-trips, resumes and agrees with the online teacher."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pixelsail.data.shapes import ShapesDataset
from pixelsail.experts import TeacherError, load_teacher
from pixelsail.experts.cache import (
    CacheError, CachedTeacherProvider, FeatureCache, OnlineTeacherProvider, build_cache, unique_images,
)
from pixelsail.experts.shapes_expert import (
    ShapesExpert, ShapesExpertConfig, ShapesExpertTeacher, scene_labels, train_shapes_expert,
)

TINY = dict(widths=(8, 16, 16, 32), pixel_channels=16, image_channels=32, image_size=64)


@pytest.fixture
def one_thread():
    """Two threads on a shared, busy 2-core machine spin-wait badly on these small convolutions."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def expert_dir(tmp_path_factory) -> Path:
    """An untrained tiny shapes expert saved to disk (a deterministic teacher for the cache tests)."""
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("expert")
    ShapesExpert(ShapesExpertConfig.for_shapes_world(**TINY)).save(out)
    return out


def _images(n: int, size: int = 64) -> list[tuple[str, np.ndarray]]:
    ds = ShapesDataset("val", size=n, image_size=size, tasks=["res"])
    return [(ds[i].image_id, ds[i].image) for i in range(n)]


# ------------------------------------------------------------------------------------------------ shapes expert


def test_scene_labels_by_hand():
    cfg = ShapesExpertConfig(colors=["red", "blue"], shapes=["circle", "square"], sizes=["small", "large"])
    a = np.zeros((5, 6), bool)
    a[1:4, 0:3] = True                      # red small square, paint order 0
    b = np.zeros((5, 6), bool)
    b[1:3, 3:5] = True                      # blue large circle, touching a on the right
    hidden = np.zeros((5, 6), bool)         # fully hidden objects carry no labels
    objs = [SimpleNamespace(index=0, color="red", shape="square", size="small", mask=a),
            SimpleNamespace(index=1, color="blue", shape="circle", size="large", mask=b),
            SimpleNamespace(index=2, color="blue", shape="square", size="small", mask=hidden)]
    labels = scene_labels(SimpleNamespace(image=np.zeros((5, 6, 3), np.uint8), objects=objs), cfg)
    assert labels.shape == (4, 5, 6)
    assert labels[0, 2, 1] == 1 and labels[1, 2, 1] == 2 and labels[2, 2, 1] == 1      # red, square, small
    assert labels[0, 1, 4] == 2 and labels[1, 1, 4] == 1 and labels[2, 1, 4] == 2      # blue, circle, large
    assert labels[:3, 0].sum() == 0 and labels[:3, 4, 5].sum() == 0                    # background
    # boundary: object pixels with an in-image 4-neighbour of another instance or the background
    expected = np.array([[0, 0, 0, 0, 0, 0],
                         [1, 1, 1, 1, 1, 0],
                         [0, 0, 1, 1, 1, 0],
                         [1, 1, 1, 0, 0, 0],
                         [0, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(labels[3], expected)


def test_shapes_expert_beats_trivial_baseline(one_thread):
    cfg = ShapesExpertConfig.for_shapes_world(pixel_channels=16, image_channels=32, image_size=64)
    model, summary = train_shapes_expert(steps=80, batch_size=8, lr=1e-2, config=cfg, eval_scenes=32)
    val = summary["val"]
    # the majority class (background) is right on ~80% of pixels; on object pixels the commonest colour on ~23%
    # (measured after these 80 steps: 0.87 of object pixels get their colour right)
    assert val["color_acc"] > val["color_baseline_acc"] + 0.05
    assert val["color_object_acc"] > val["color_object_baseline_acc"] + 0.4
    feats = model.features(torch.zeros(2, 3, 64, 96))
    assert feats["pixel"].shape == (2, 16, 16, 24) and feats["image"].shape == (2, 32, 4, 6)


def test_expert_save_load_and_teacher_shapes(expert_dir, tmp_path):
    teacher = load_teacher(str(expert_dir))
    assert isinstance(teacher, ShapesExpertTeacher) and teacher.names == ("pixel", "image")
    wide = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    square = np.random.default_rng(1).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    out = teacher.encode_batch([wide, square])
    # 48x64 keeps its size (long side is the expert's 64), padded to 64x64: maps cover rows 0..48 of 64
    assert out[0]["pixel"].shape == (16, 12, 16) and out[0]["image"].shape == (32, 3, 4)
    # 128x128 is resized to 64x64
    assert out[1]["pixel"].shape == (16, 16, 16) and out[1]["image"].shape == (32, 4, 4)
    assert out[0]["pixel"].dtype == np.float32
    np.testing.assert_allclose(teacher(wide)["pixel"], out[0]["pixel"], atol=1e-5)
    with pytest.raises(TeacherError, match=r"image 1: expected an \(H, W, 3\) uint8 array, got \(8, 8\)"):
        teacher.encode_batch([wide, np.zeros((8, 8), np.uint8)])
    full = ShapesExpert.load(expert_dir)
    full.save(tmp_path / "half", fp16=True)
    half = ShapesExpert.load(tmp_path / "half")
    assert (tmp_path / "half" / "model.safetensors").stat().st_size < 0.6 * (expert_dir / "model.safetensors").stat().st_size
    for name, p in half.state_dict().items():
        assert p.dtype == torch.float32
        torch.testing.assert_close(p, full.state_dict()[name].half().float(), rtol=0, atol=0)
    (tmp_path / "config.json").write_text(json.dumps({"kind": "pixelsail-shapes-expert"}))
    with pytest.raises(TeacherError, match="model.safetensors"):
        load_teacher(str(tmp_path))


# ------------------------------------------------------------------------------------------------ transformers


def _tiny_decoder_cfgs(size: int):
    return dict(prompt_encoder_config=dict(hidden_size=16, image_size=size, patch_size=16),
                mask_decoder_config=dict(hidden_size=16, mlp_dim=32, num_attention_heads=2, iou_head_hidden_dim=16))


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory) -> dict[str, Path]:
    from transformers import (
        Mask2FormerConfig, Mask2FormerForUniversalSegmentation, Sam2Config, Sam2Model, SamConfig, SamModel,
        SwinConfig,
    )

    torch.manual_seed(0)
    dirs = {k: tmp_path_factory.mktemp(k) for k in ("m2f", "sam", "sam2")}
    swin = SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                      window_size=4, out_features=["stage1", "stage2", "stage3", "stage4"])
    Mask2FormerForUniversalSegmentation(Mask2FormerConfig(
        backbone_config=swin, feature_size=32, mask_feature_size=24, hidden_dim=32, encoder_feedforward_dim=64,
        decoder_layers=2, encoder_layers=1, num_queries=8, num_attention_heads=2, dim_feedforward=64,
        num_labels=5)).save_pretrained(dirs["m2f"])
    SamModel(SamConfig(vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                          image_size=64, patch_size=16, output_channels=16, mlp_dim=64,
                                          global_attn_indexes=[1], window_size=2),
                       **_tiny_decoder_cfgs(64))).save_pretrained(dirs["sam"])
    hiera = dict(model_type="sam2_hiera_det_model", hidden_size=16, num_attention_heads=1, image_size=[64, 64],
                 blocks_per_stage=[1, 1, 2, 1], embed_dim_per_stage=[16, 32, 64, 128],
                 num_attention_heads_per_stage=[1, 1, 2, 2], window_size_per_stage=[4, 4, 4, 2],
                 global_attention_blocks=[3], window_positional_embedding_background_size=[4, 4])
    Sam2Model(Sam2Config(vision_config=dict(backbone_config=hiera, backbone_channel_list=[128, 64, 32, 16],
                                            backbone_feature_sizes=[[16, 16], [8, 8], [4, 4]], fpn_hidden_size=16),
                         **_tiny_decoder_cfgs(64))).save_pretrained(dirs["sam2"])
    (dirs["m2f"] / "preprocessor_config.json").write_text(json.dumps(
        {"size": {"shortest_edge": 48, "longest_edge": 64}, "image_mean": [127.5] * 3, "image_std": [63.75] * 3}))
    return dirs


def test_hf_teachers_load_from_saved_dirs(hf_dirs, one_thread):
    img = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    square = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)

    m2f = load_teacher(str(hf_dirs["m2f"]))
    # input size and normalisation come from the checkpoint's preprocessor_config.json (0-255 units rescaled)
    assert m2f.names == ("pixel",) and m2f.image_size == 64
    assert m2f.mean == (0.5, 0.5, 0.5) and m2f.std == (0.25, 0.25, 0.25)
    out = m2f.encode_batch([img, square])
    # 48x80 -> 38x64 (long side 64), padded to 64x64; stride-4 map 16x16 of which ceil(38/4)=10 rows are image
    assert out[0]["pixel"].shape == (24, 10, 16) and out[1]["pixel"].shape == (24, 16, 16)
    np.testing.assert_allclose(m2f(img)["pixel"], out[0]["pixel"], atol=1e-5)   # batching does not matter

    sam = load_teacher(str(hf_dirs["sam"]))
    out = sam.encode_batch([img])
    # SAM pads 38x64 to its fixed 64x64 input; stride-16 embedding 4x4 of which ceil(38/16)=3 rows are image
    assert sam.names == ("image",) and out[0]["image"].shape == (16, 3, 4)

    sam2 = load_teacher(str(hf_dirs["sam2"]))
    # SAM2 stretches the image to its square input: the whole 4x4 stride-16 embedding covers it
    assert sam2.names == ("image",) and sam2(img)["image"].shape == (16, 4, 4)

    both = load_teacher(f"{hf_dirs['m2f']}+{hf_dirs['sam2']}")
    assert both.names == ("pixel", "image")
    renamed = load_teacher(f"extra={hf_dirs['sam']}")
    assert renamed.names == ("extra",) and renamed(img)["extra"].shape == (16, 3, 4)
    with pytest.raises(TeacherError, match="only takes 64x64"):
        load_teacher(str(hf_dirs["sam"]), image_size=128)
    with pytest.raises(TeacherError, match="both produce 'image'"):
        load_teacher(f"{hf_dirs['sam']}+{hf_dirs['sam2']}")


def test_hf_teacher_errors_name_the_problem(tmp_path, hf_dirs):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(TeacherError, match="'bert' is not a supported teacher"):
        load_teacher(str(tmp_path))
    # SAM weights under a SAM2 config: the loader must refuse rather than distill from random layers
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((hf_dirs["sam2"] / "config.json").read_text())
    (bad / "model.safetensors").write_bytes((hf_dirs["sam"] / "model.safetensors").read_bytes())
    with pytest.raises(TeacherError, match="cannot load it as Sam2Model"):
        load_teacher(str(bad))
    # a checkpoint with a weight missing would leave a random layer in the teacher
    from safetensors.torch import load_file, save_file

    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((hf_dirs["sam"] / "config.json").read_text())
    weights = load_file(str(hf_dirs["sam"] / "model.safetensors"))
    dropped = next(k for k in weights if k.startswith("vision_encoder.neck"))
    save_file({k: v for k, v in weights.items() if k != dropped}, str(partial / "model.safetensors"))
    with pytest.raises(TeacherError, match="lacks 1 weight"):
        load_teacher(str(partial))
    with pytest.raises(TeacherError, match="neither"):
        load_teacher(str(tmp_path / "nowhere"))


def test_user_module_teacher(tmp_path):
    file = tmp_path / "my_teacher.py"
    file.write_text(textwrap.dedent("""
        import numpy as np

        class MeanColour:
            names = ("pixel",)
            batch_size = 2

            def encode_batch(self, images):
                return [{"pixel": img.astype(np.float32).mean(axis=(0, 1))[:, None, None]} for img in images]

        def make():
            return MeanColour()
        """))
    teacher = load_teacher(f"{file}:make")
    img = np.full((4, 4, 3), 10, np.uint8)
    img[0, 0] = (26, 10, 10)
    assert teacher.encode_batch([img])[0]["pixel"][:, 0, 0].tolist() == [11.0, 10.0, 10.0]
    with pytest.raises(TeacherError, match="no callable 'missing'"):
        load_teacher(f"{file}:missing")


# ------------------------------------------------------------------------------------------------ cache


class CountingTeacher:
    """Wraps a teacher, counts the images it encodes, and can fail after a number of them (an interrupted run)."""

    def __init__(self, inner, fail_after: int | None = None):
        self.inner, self.fail_after, self.seen = inner, fail_after, 0
        self.names, self.batch_size = inner.names, inner.batch_size

    def describe(self):
        return self.inner.describe()

    def encode_batch(self, images):
        if self.fail_after is not None and self.seen + len(images) > self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.seen += len(images)
        return self.inner.encode_batch(images)


def test_cache_round_trip_exact_and_fp16(expert_dir, tmp_path, one_thread):
    teacher = load_teacher(str(expert_dir), batch_size=1)
    images = _images(5)
    summary = build_cache(teacher, images, tmp_path / "c32", shard_size=2, progress=False, data="five")
    assert summary["images"] == 5 and summary["shards"] == 3 and summary["computed"] == 5
    cache = FeatureCache(tmp_path / "c32")
    assert cache.image_ids() == [i for i, _ in images]
    assert cache.distill_teachers() == {"pixel": {"channels": 16, "source": "upsampled"},
                                        "image": {"channels": 32, "source": "vision_tokens"}}
    for image_id, img in images:
        expected = teacher(img)
        got = cache[image_id]
        for name in ("pixel", "image"):
            assert got[name].dtype == np.float32
            np.testing.assert_array_equal(got[name], expected[name])
    build_cache(teacher, images, tmp_path / "c16", dtype="float16", shard_size=4, progress=False)
    half = FeatureCache(tmp_path / "c16")
    for image_id, img in images:
        np.testing.assert_array_equal(half[image_id]["pixel"], teacher(img)["pixel"].astype(np.float16))
    with pytest.raises(KeyError, match="not in the feature cache"):
        cache["no-such-image"]


def test_cache_resumes_without_recomputing_finished_shards(expert_dir, tmp_path, one_thread):
    base = load_teacher(str(expert_dir), batch_size=1)
    images = _images(7)
    out = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        build_cache(CountingTeacher(base, fail_after=5), images, out, shard_size=2, progress=False, data="d")
    # shards 0 and 1 (images 0-3) were finished; image 4 was encoded but its shard never written
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-00000.safetensors", "shard-00001.safetensors"]
    with pytest.raises(CacheError, match="incomplete"):
        FeatureCache(out)
    (out / ".shard-00002.safetensors.tmp").write_bytes(b"half a shard")   # debris of a killed write
    resumed = CountingTeacher(base)
    summary = build_cache(resumed, images, out, shard_size=2, progress=False, data="d")
    assert resumed.seen == 3 and summary["skipped"] == 4 and summary["shards_written"] == 2
    fresh = tmp_path / "fresh"
    build_cache(base, images, fresh, shard_size=2, progress=False, data="d")
    a, b = FeatureCache(out), FeatureCache(fresh)
    assert a.image_ids() == b.image_ids()
    for image_id in b.image_ids():
        np.testing.assert_array_equal(a[image_id]["pixel"], b[image_id]["pixel"])
    # a rerun of a finished cache computes nothing; other settings are refused
    again = CountingTeacher(base)
    build_cache(again, images, out, shard_size=2, progress=False, data="d")
    assert again.seen == 0
    with pytest.raises(CacheError, match="dtype"):
        build_cache(base, images, out, shard_size=2, dtype="float16", progress=False, data="d")
    with pytest.raises(CacheError, match="data changed"):
        build_cache(base, images[1:], out, shard_size=2, progress=False, data="d")


def test_cached_provider_matches_online_provider(expert_dir, tmp_path, one_thread):
    teacher = load_teacher(str(expert_dir))                     # batches of 8 in the cache, 1 online
    ds = ShapesDataset("val", size=6, image_size=64)
    build_cache(teacher, unique_images([ds]), tmp_path / "c", progress=False)
    cached, online = CachedTeacherProvider(tmp_path / "c"), OnlineTeacherProvider(teacher)
    for i in range(len(ds)):
        a, b = cached(ds[i]), online(ds[i])
        assert a.turns == ds[i].turns and "teacher_features" not in ds[i].meta
        fa, fb = a.meta["teacher_features"], b.meta["teacher_features"]
        assert sorted(fa) == sorted(fb) == ["image", "pixel"]
        for name in fa:
            assert fa[name].dtype == np.float32 and fa[name].shape == fb[name].shape
            np.testing.assert_allclose(fa[name], fb[name], rtol=0, atol=1e-5)


def test_distill_cache_command_and_distilled_dataset(expert_dir, tmp_path, one_thread):
    from typer.testing import CliRunner

    from pixelsail.cli import app
    from pixelsail.data.registry import build_dataset

    out = tmp_path / "cache"
    args = ["distill-cache", "--teacher", str(expert_dir), "--data", "shapes", "--arg", "split=val",
            "--arg", "size=4", "--arg", "image_size=64", "--out", str(out), "--dtype", "float16"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len(FeatureCache(out)) == 4
    ds = build_dataset("distilled", dataset={"name": "shapes", "args": {"split": "val", "size": 4,
                                                                        "image_size": 64}}, cache=str(out))
    feats = ds[3].meta["teacher_features"]
    assert feats["pixel"].shape == (16, 16, 16) and feats["pixel"].dtype == np.float32
    bad = CliRunner().invoke(app, ["distill-cache", "--teacher", str(tmp_path / "none"), "--data", "shapes",
                                   "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "neither" in bad.output


def test_cached_features_reach_the_model_distillation_losses(expert_dir, tmp_path, one_thread):
    from pixelsail.config import DistillConfig, PixelSailConfig
    from pixelsail.data.shapes import vocabulary_sentences
    from pixelsail.experts.cache import TeacherFeatureDataset
    from pixelsail.model import PixelSail
    from pixelsail.tokenizer import build_tiny_tokenizer

    ds = ShapesDataset("val", size=2, image_size=64, tasks=["res"])
    build_cache(load_teacher(str(expert_dir)), unique_images([ds]), tmp_path / "c", progress=False)
    cache = FeatureCache(tmp_path / "c")
    cfg = PixelSailConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                          intermediate_size=128, mask_dim=32,
                          distill=DistillConfig(enabled=True, teachers=cache.distill_teachers()))
    model = PixelSail(cfg, build_tiny_tokenizer(vocabulary_sentences(), vocab_size=cfg.vocab_size,
                                                num_vp_tokens=cfg.num_vp_tokens))
    data = TeacherFeatureDataset(ds, CachedTeacherProvider(cache))
    out = model(**model.processor.collate([model.processor(data[i]) for i in range(len(data))]))
    assert {"distill_pixel", "distill_image"} <= set(out.losses)
    assert all(float(out.losses[k]) > 0 for k in ("distill_pixel", "distill_image"))


def test_shipped_shapes_expert(one_thread):
    from pixelsail.experts import SHIPPED_SHAPES_EXPERT
    from pixelsail.experts.shapes_expert import evaluate_expert

    training = json.loads((SHIPPED_SHAPES_EXPERT / "training.json").read_text())
    assert training["command"].startswith("pixelsail expert train-shapes") and training["seed"] == 0
    teacher = load_teacher("shapes")
    out = teacher(ShapesDataset("val", size=1)[0].image)
    assert out["pixel"].shape == (32, 32, 32) and out["image"].shape == (64, 8, 8)
    val = evaluate_expert(teacher.model, split="val", n_scenes=8)
    assert val["color_object_acc"] > 0.9 and val["shape_object_acc"] > 0.7
