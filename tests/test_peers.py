"""The real-size peers of the latency benchmark (LISA- and Sa2VA-shaped), built tiny here; the real-size run stays
out of the suite (``python -m benchmarks.peers_bench``)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks import flops, peers_bench, run
from benchmarks.peer_encoders import HieraImageEncoder, window_partition, window_unpartition
from benchmarks.peers import LisaPeer, PeerSizes, Sa2VAPeer
from model_utils import random_image, tiny_model
from pixelsail.tokens import SEG

QUESTION = "Please segment the red circle."


def test_windows_round_trip_with_padding():
    x = torch.randn(1, 10, 7, 5)
    windows, padded = window_partition(x, 4)
    assert windows.shape == (3 * 2, 16, 5) and padded == (12, 8)
    torch.testing.assert_close(window_unpartition(windows, 4, padded, (10, 7)), x)


def test_hiera_gives_the_stride_16_embedding_and_the_stride_4_and_8_features():
    spec = PeerSizes.tiny().hiera
    embed, s0, s1 = HieraImageEncoder(spec)(torch.randn(1, 3, 64, 64))
    assert embed.shape == (1, 4 * 4, spec.neck_dim)                      # 64 px / 16
    assert s0.shape == (1, 16, 16, spec.neck_dim // 8) and s1.shape == (1, 8, 8, spec.neck_dim // 4)


@pytest.mark.parametrize("cls", [LisaPeer, Sa2VAPeer])
def test_peers_answer_with_one_full_size_mask_per_answer_seg_and_keep_the_image_cache(cls):
    model = tiny_model()
    torch.manual_seed(0)
    peer = cls(model.config, model.processor, PeerSizes.tiny()).eval()
    image = random_image(40, 70)
    state, masks = peer.segment(image, QUESTION, f"Sure, {SEG} and {SEG}.")
    assert [m.shape for m in masks] == [(40, 70)] * 2 and all(m.dtype == np.bool_ for m in masks)
    assert state.llm_tokens == 16 + 2 and len(state.cache) == state.llm_tokens   # 16 image tokens + start/end
    # a follow-up: the history's [SEG] is not the answer's; the cache is back at the image afterwards
    follow = peer.respond(state, "Please segment the blue square.", f"Sure, {SEG}.",
                          history=[(QUESTION, f"Sure, {SEG} and {SEG}.")])
    assert len(follow) == 1 and len(state.cache) == state.llm_tokens
    assert peer.component_parameters()["llm"] == flops.parameter_count(model.backbone.llm)


def test_real_sizes_match_the_published_encoders():
    cfg = run.model_config("0.5b")
    processor = tiny_model().processor
    with torch.device("meta"):
        lisa = LisaPeer(cfg, processor, PeerSizes.real()).component_parameters()
        sa2va = Sa2VAPeer(cfg, processor, PeerSizes.real()).component_parameters()
    # CLIP ViT-L/14 ~304M + SAM ViT-H ~637M; InternViT-300M ~304M + its projector + SAM2 Hiera-L ~213M
    assert 0.93e9 < lisa["vision"] < 0.95e9 and 0.51e9 < sa2va["vision"] < 0.53e9
    assert lisa["llm"] == sa2va["llm"] and 0.49e9 < lisa["llm"] < 0.50e9      # Qwen2.5-0.5B shaped
    assert 4e6 < lisa["mask_decoder"] < 6e6                                    # SAM's decoder + the prompt MLP


def test_tiny_benchmark_reports_per_repeat_ratios_for_both_peers():
    result = peers_bench.main(["--size", "tiny", "--repeats", "2"])
    assert [r["peer"] for r in result["rows"]] == ["LISA", "Sa2VA-1B"]
    for row in result["rows"]:
        t = row["times"]
        assert set(t) == {"pixelsail", "pixelsail_follow_up", "peer", "peer_follow_up"}
        assert len(row["speedup"].values) == len(row["follow_up_speedup"].values) == 2
        for k in range(2):
            assert row["speedup"].values[k] == pytest.approx(t["peer"].values[k] / t["pixelsail"].values[k])
            assert row["follow_up_speedup"].values[k] == pytest.approx(
                t["peer_follow_up"].values[k] / t["pixelsail_follow_up"].values[k])
        assert f"| {row['peer']} |" in result["table"]
    assert "**peer / Pixel-SAIL**" in result["table"] and "--size tiny --image 64x48" in result["table"]
    assert result["vision_tokens"] == 12                                        # 64x48 px / 16


def test_bad_image_size_is_one_clear_error(capsys):
    with pytest.raises(SystemExit):
        peers_bench.main(["--size", "tiny", "--image", "64by48"])
    assert "WIDTHxHEIGHT" in capsys.readouterr().err


def test_fp32_flag_is_recorded_in_the_command_and_the_machine_line():
    result = peers_bench.main(["--size", "tiny", "--repeats", "1", "--peers", "lisa", "--fp32"])
    assert [r["peer"] for r in result["rows"]] == ["LISA"]
    assert "--fp32`" in result["table"] and "fp32 (--fp32)" in result["meta"]["machine"]
