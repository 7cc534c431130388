"""Benchmarks: the FLOP counter against a hand count and torch's counter, the quick run end to end, the fused
prefix attention on the hot path, and the peer pipeline's output."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import flops, perf_report, run
from benchmarks.peer_pipeline import PeerPipeline
from model_utils import random_image, tiny_config, tiny_model
from pixelsail.model.backbone import AttentionLayout
from pixelsail.tokens import SEG


def test_prefill_flops_match_a_hand_count():
    # hidden 64, 2 layers, 4 heads (head_dim 16), 2 kv heads (kv width 32), MLP 128, patch 16 -> stride 4 (2 steps),
    # upsampler width 64 (no pre-projection), mask_dim 32; a 2 x 3 patch grid -> 8 vision tokens
    cfg = tiny_config()
    got = flops.prefill(cfg, (2, 3))
    assert got["patch_embed"] == 2 * 6 * 768 * 64
    per_token = 2 * (64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128)  # q, k, v, o, gate, up, down = 73,728
    assert got["decoder_linear"] == per_token * 8 * 2
    assert got["attention"] == 4 * (8 * 8) * 16 * 4 * 2  # 64 pairs, QK and AV, 4 heads, 2 layers
    # step 1 on 6 pixels: up 6x64x256, depth-wise on 24 px, point-wise 24x64x64; step 2: 24 -> 96 px; MLP on 96 px
    up = 2 * 6 * 64 * 256 + 2 * 24 * 64 * 64 + 2 * 24 * 64 * 256 + 2 * 96 * 64 * 64
    assert got["upsampler"] == up + 2 * 96 * (64 * 64 + 64 * 32)
    assert got["upsampler_depthwise"] == 2 * 9 * 24 * 64 + 2 * 9 * 96 * 64
    assert flops.prefix_pairs(vision=3, text=2, past=0) == 9 + 2 * 3 + 3  # text rows see 4 and 5 keys


@pytest.mark.parametrize("attn", ["prefix_sdpa", "sdpa"])
def test_flop_counter_agrees_with_torch_for_the_matmuls(attn, monkeypatch):
    from pixelsail.model import attention

    # the fused kernel (short CPU training sequences would otherwise take the explicit matmuls, which compute
    # every query-key pair, masked or not)
    monkeypatch.setattr(attention, "EXPLICIT_CPU_TRAINING_KEYS", 0)
    model = tiny_model(attn_implementation=attn).train()
    batch, shape = run.make_batch(model, batch=2, side=48, num_masks=2)
    with FlopCounterMode(display=False) as fwd_counter:
        out = model(**batch)
    with FlopCounterMode(display=False) as bwd_counter:
        out.loss.backward()
    forward = flops.matmul_part(flops.forward(model.config, shape))
    step = flops.matmul_part(flops.train_step(model.config, shape))
    # CPU fused attention is invisible to FlopCounterMode, so only the matmul part is compared; the depth-wise 3x3
    # (a grouped convolution, not a matmul, and FlopCounterMode's conv backward formula ignores groups) is left out
    def matmul_flops(counter: FlopCounterMode) -> int:
        return sum(n for op, n in counter.get_flop_counts()["Global"].items() if "convolution" not in str(op))

    assert matmul_flops(fwd_counter) == pytest.approx(forward, rel=0.02)
    assert matmul_flops(fwd_counter) + matmul_flops(bwd_counter) == pytest.approx(step, rel=0.02)


def test_prefix_sdpa_builds_no_square_mask_on_a_uniform_batch(monkeypatch):
    model = tiny_model(attn_implementation="prefix_sdpa").train()
    batch, _ = run.make_batch(model, batch=2, side=48)
    calls = []
    original = AttentionLayout.allowed

    def recording(self, q_len, kv_len, device):
        calls.append((q_len, kv_len))
        return original(self, q_len, kv_len, device)

    monkeypatch.setattr(AttentionLayout, "allowed", recording)
    model(**batch).loss.backward()
    prefix = model.eval().prefill_image(random_image(48, 48))
    model.respond(prefix, "Please segment the red circle.", answer_prefix=f"Sure, {SEG}.", max_new_tokens=2)
    assert calls == []
    model.backbone.set_attention("sdpa")  # the explicit-mask path does build it: the patch is live
    model.train()(**batch)
    assert calls == [(batch["input_ids"].shape[1],) * 2]


def test_peer_pipeline_returns_one_full_size_mask_per_seg():
    model = tiny_model()
    torch.manual_seed(0)
    peer = PeerPipeline(tiny_config(), model.processor).eval()
    image = random_image(40, 70)
    masks = peer.segment(image, "Please segment the red circle.", f"Sure, {SEG} and {SEG}.")
    assert [m.shape for m in masks] == [(40, 70)] * 2
    assert all(m.dtype == np.bool_ for m in masks)
    params = peer.component_parameters()
    assert params["llm"] == flops.parameter_count(model.backbone.llm)


def test_quick_benchmark_writes_the_table_and_plot(tmp_path):
    out = tmp_path / "PERFORMANCE.md"
    results = run.main(["--quick", "--repeats", "1", "--out", str(out)])
    text = out.read_text()
    for heading in ("ratio to matmul", "peer / pixelsail", "follow-up / first", "sdpa / prefix", "[SEG]"):
        assert heading in text
    assert (tmp_path / "performance_scaling.png").stat().st_size > 10_000
    limit = results["limit"][0]
    assert limit["train"].flops == flops.total(flops.train_step(run.model_config("quick"), limit["train_shape"]))
    assert all(v > 0 for v in limit["train"].ref_ratio.values)
    assert [r["patches"] for r in results["scaling"]["prefill"]] == [4, 16]


def test_a_rerun_keeps_the_hand_written_findings(tmp_path):
    out = tmp_path / "PERFORMANCE.md"
    assert perf_report.kept_findings(out) == ""
    out.write_text("# table\n\n## Findings\n\nthe upsampler dominates\n")
    assert perf_report.kept_findings(out) == "\n## Findings\n\nthe upsampler dominates\n"


def oracle_config(tmp_path, *, batch_size: int):
    """A recipe for a 2-layer, 64-wide model on 64 px scenes: the oracle benchmark in seconds."""
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "model: {hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2,\n"
        "        intermediate_size: 128, mask_dim: 32, upsample_max_width: 64, mask_num_points: 256}\n"
        "data: {datasets: [{name: shapes, args: {image_size: 64}}]}\n"
        f"train: {{batch_size: {batch_size}, lr: 1.0e-3}}\n")
    return config


def test_oracle_query_ceiling_trains_evaluates_and_writes_its_table(tmp_path):
    from benchmarks import oracle_query

    config = oracle_config(tmp_path, batch_size=4)
    out = tmp_path / "oracle.md"
    oracle_query.main(["--config", str(config), "--steps", "2", "--eval-every", "1", "--eval-samples", "5",
                       "--out", str(out)])
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines() if line.startswith("| ") and
            line.split("|")[1].strip().isdigit()]
    assert [int(r[0]) for r in rows] == [1, 2]
    assert [int(r[1]) for r in rows] == [4, 8]                 # samples seen = steps x batch
    for r in rows:
        ciou = float(r[3])
        assert 0.0 <= ciou <= 100.0
        assert abs(float(r[6]) - ciou / 75.0) < 0.01


def test_oracle_query_variants_drop_the_upsampler_and_add_the_experts_loss(tmp_path):
    from benchmarks import oracle_query
    from pixelsail.ablation import TEACHER, distill_teachers
    from pixelsail.config import DistillConfig
    from pixelsail.experts.cache import OnlineTeacherProvider

    config = oracle_config(tmp_path, batch_size=2)
    out = tmp_path / "oracle.md"
    oracle_query.main(["--config", str(config), "--steps", "1", "--eval-samples", "2", "--no-upsample", "--distill",
                       "--seed", "3", "--out", str(out)])
    assert "stride-P features (no upsampling), distillation from the shapes expert (weight 0.5), seed 3" in \
        out.read_text()

    model = tiny_model(distill=DistillConfig(enabled=True, teachers=distill_teachers()))
    teacher = OnlineTeacherProvider(TEACHER)
    samples = [teacher(oracle_query.training_sample(i, 64)[0]) for i in range(2)]
    batch = model.processor.collate([model.processor(s) for s in samples])
    features, hidden, _ = oracle_query.dense_features(model, batch)
    loss = sum(model.distill_losses(hidden, batch["images"], features, batch["teacher_features"]).values())
    assert torch.isfinite(loss) and float(loss.detach()) > 0
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.distill.parameters())
    assert model.mask_features.steps[0].up.weight.grad.abs().sum() > 0   # it reaches the student's features
